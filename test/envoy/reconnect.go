package envoy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
)

// Envoy's defaults for xDS gRPC stream retries: "If not set, xDS gRPC streams default to a base
// interval of 500ms and a maximum interval of 30s".
const (
	DefaultBaseBackoff = 500 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
)

// ReconnectConfig configures a Reconnecting stream.
type ReconnectConfig struct {
	SocketPath string
	Node       *corev3.Node
	Names      []string
	// BaseBackoff and MaxBackoff bound the jittered exponential backoff between attempts;
	// zero means Envoy's defaults (500ms, 30s). Tests may shorten MaxBackoff.
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	Options     []Option
}

// Reconnecting is a StreamSecrets subscription that survives agent restarts as Envoy's does:
// when the stream breaks it redials the socket with jittered exponential backoff and opens a new
// stream whose first request carries node, the names, and the last accepted version_info and
// last nonce of the broken stream. Secrets already received stay with the caller.
// Use it from one goroutine.
type Reconnecting struct {
	cfg ReconnectConfig

	mu       sync.Mutex // guards the fields below
	conn     *grpc.ClientConn
	cur      *SotW
	names    []string
	version  string
	nonce    string
	attempt  int // failed attempts since the last response
	streams  int // streams opened
	closed   bool
	lastErrs []error
}

// NewReconnecting validates cfg. It does not connect: the first Recv does, retrying with
// backoff while the agent is not up yet.
func NewReconnecting(cfg ReconnectConfig) (*Reconnecting, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("reconnecting SDS client: socket path is required")
	}
	if cfg.BaseBackoff == 0 {
		cfg.BaseBackoff = DefaultBaseBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.BaseBackoff < 0 || cfg.MaxBackoff < cfg.BaseBackoff {
		return nil, fmt.Errorf("reconnecting SDS client: backoff base %s must be positive and at most max %s", cfg.BaseBackoff, cfg.MaxBackoff)
	}
	return &Reconnecting{cfg: cfg, names: slices.Clone(cfg.Names)}, nil
}

// Backoff returns the wait before retry attempt n (0-based): uniformly random in
// [0, min(base·2ⁿ, max)), the full jitter Envoy's JitteredExponentialBackOffStrategy uses.
func Backoff(base, maxd time.Duration, n int) time.Duration {
	ceil := maxd
	if n < 32 && base<<n > 0 && base<<n < maxd {
		ceil = base << n
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil)
}

// Recv returns the next response, reconnecting as often as needed while ctx lasts. An invalid
// response (ErrInvalid) is returned, not reconnected over: Envoy NACKs and keeps the stream.
func (r *Reconnecting) Recv(ctx context.Context) (*Response, error) {
	for {
		s, err := r.stream(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := s.Recv(ctx)
		if err == nil {
			r.mu.Lock()
			r.attempt = 0
			r.mu.Unlock()
			return resp, nil
		}
		if errors.Is(err, ErrInvalid) || ctx.Err() != nil {
			return nil, err
		}
		r.drop(s, err)
	}
}

// RecvWithin is Recv with a deadline d; it returns (nil, nil) if nothing arrived in time.
func (r *Reconnecting) RecvWithin(ctx context.Context, d time.Duration) (*Response, error) {
	return within(ctx, d, r.Recv)
}

// stream returns the live stream, opening one (after a backoff if this is a retry).
func (r *Reconnecting) stream(ctx context.Context) (*SotW, error) {
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, ErrStreamClosed
		}
		if r.cur != nil {
			s := r.cur
			r.mu.Unlock()
			return s, nil
		}
		attempt, names, version, nonce := r.attempt, slices.Clone(r.names), r.version, r.nonce
		r.mu.Unlock()

		if attempt > 0 {
			t := time.NewTimer(Backoff(r.cfg.BaseBackoff, r.cfg.MaxBackoff, attempt-1))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
		conn, err := Dial(ctx, r.cfg.SocketPath)
		if err != nil {
			return nil, err
		}
		// The stream outlives this Recv's ctx (RecvWithin's deadline must not break it); Close
		// and drop end it.
		s, err := newSotW(context.WithoutCancel(ctx), conn, r.cfg.Node, names, version, nonce, r.cfg.Options...)
		r.mu.Lock()
		if err != nil {
			conn.Close()
			r.attempt++
			r.lastErrs = append(r.lastErrs, err)
			r.mu.Unlock()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		r.conn, r.cur = conn, s
		r.streams++
		r.mu.Unlock()
		return s, nil
	}
}

// drop forgets a broken stream, keeping what the next stream's first request must carry.
func (r *Reconnecting) drop(s *SotW, cause error) {
	s.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.version, r.nonce, r.names = s.Version(), s.Nonce(), s.Names()
	if r.conn != nil {
		r.conn.Close()
	}
	r.conn, r.cur = nil, nil
	r.attempt++
	r.lastErrs = append(r.lastErrs, cause)
}

// SetNames changes the names, on the live stream if there is one and on every later stream.
func (r *Reconnecting) SetNames(names []string) error {
	r.mu.Lock()
	r.names = slices.Clone(names)
	s := r.cur
	r.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.SetNames(names)
}

// Streams returns how many streams have been opened: 1 before any reconnect.
func (r *Reconnecting) Streams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.streams
}

// Errors returns the errors that broke streams or failed attempts, oldest first.
func (r *Reconnecting) Errors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lastErrs)
}

// Version and Nonce return what the next reconnect would carry (or the live stream's).
func (r *Reconnecting) Version() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		return r.cur.Version()
	}
	return r.version
}

// Nonce: see Version.
func (r *Reconnecting) Nonce() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil {
		return r.cur.Nonce()
	}
	return r.nonce
}

// Close ends the live stream and connection. Idempotent.
func (r *Reconnecting) Close() {
	r.mu.Lock()
	s, conn := r.cur, r.conn
	r.cur, r.conn, r.closed = nil, nil, true
	r.mu.Unlock()
	if s != nil {
		s.Close()
	}
	if conn != nil {
		conn.Close()
	}
}
