package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
)

// attest returns the caller's selectors: attested once per connection (usually already at
// accept, see preattest), and again only if attestation must now include the binary's digest.
// An attestation made at accept is confirmed by the first call that uses it: the caller must
// still be alive and run the same binary, else it is attested afresh, as if nothing had been
// done at accept (a caller that exited or exec'd between connect and its first request is
// handled exactly as before).
func (a *Agent) attest(ctx context.Context, p *peercred.Peer, digest bool) ([]entry.Selector, error) {
	for {
		c := connAttestations(p).current(digest)
		ran := c.run(func() (*attestor.Attestation, error) { return a.record(ctx, p, digest) })
		if !ran {
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if c.err != nil {
			connAttestations(p).drop(digest, c) // errors are not kept: the next call tries again
			if !ran && ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
				continue // the call that made it went away; ours has not
			}
			return nil, fmt.Errorf("attesting pid %d: %w", p.PID, c.err)
		}
		if c.confirm(a.att, p) {
			return c.at.Selectors, nil
		}
		connAttestations(p).drop(digest, c)
	}
}

// record runs one attestation and counts it.
func (a *Agent) record(ctx context.Context, p *peercred.Peer, digest bool) (*attestor.Attestation, error) {
	start := time.Now()
	at, err := a.att.Record(ctx, p, attestor.Options{Digest: digest})
	a.metrics.AttestationDone(time.Since(start), err)
	return at, err
}

// preattest starts the attestation of a connection just accepted, in the background, so that
// it is done (on the CPU Envoy leaves idle between connecting and asking) by the time the first
// request needs it. Only a peer with a pidfd qualifies: attest confirms the result with it.
func (a *Agent) preattest(ctx context.Context, p *peercred.Peer) {
	hasPIDFD := false
	_ = p.WithPIDFD(func(fd int) error { hasPIDFD = fd >= 0; return nil })
	if !hasPIDFD {
		return
	}
	c := connAttestations(p).current(a.cache.usesDigest())
	if c.started.Load() {
		return
	}
	go c.run(func() (*attestor.Attestation, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		at, err := a.record(ctx, p, c.digest)
		c.early = err == nil
		return at, err
	})
}

// connAttest is one attestation of a connection's caller: made once, by preattest or by the
// first RPC, and awaited by every other RPC of the connection.
type connAttest struct {
	digest  bool
	started atomic.Bool
	done    chan struct{} // closed when at and err are set
	at      *attestor.Attestation
	err     error

	mu    sync.Mutex
	early bool // made at accept, not yet confirmed by an RPC (set before done closes)
	stale bool // confirmation failed: attest again
}

// run makes the attestation with f unless it is already being made; it reports whether it ran f.
func (c *connAttest) run(f func() (*attestor.Attestation, error)) bool {
	if !c.started.CompareAndSwap(false, true) {
		return false
	}
	c.at, c.err = f()
	close(c.done)
	return true
}

// confirm reports whether the attestation may be used: always for one made by an RPC (as
// before: once per connection); for one made at accept, once the caller is found unchanged.
func (c *connAttest) confirm(att *attestor.Attestor, p *peercred.Peer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stale {
		return false
	}
	if c.early {
		if !att.Unchanged(p, c.at) {
			c.stale = true
			return false
		}
		c.early = false
	}
	return true
}

// connAttestState holds a connection's attestations, one per digest option, in its Peer.
type connAttestState struct {
	mu sync.Mutex
	by [2]*connAttest // [0] without the binary's digest, [1] with it
}

type attestKey struct{}

func connAttestations(p *peercred.Peer) *connAttestState {
	v, _ := p.Memo(attestKey{}, func() (any, error) { return &connAttestState{}, nil })
	return v.(*connAttestState)
}

// digestSlot is the index in connAttestState.by of the attestation with or without digest.
func digestSlot(digest bool) int {
	if digest {
		return 1
	}
	return 0
}

// current returns the attestation to use or make for digest.
func (s *connAttestState) current(digest bool) *connAttest {
	i := digestSlot(digest)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.by[i] == nil {
		s.by[i] = &connAttest{digest: digest, done: make(chan struct{})}
	}
	return s.by[i]
}

// drop forgets c, if it is still the current one, so that the next call attests afresh.
func (s *connAttestState) drop(digest bool, c *connAttest) {
	i := digestSlot(digest)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.by[i] == c {
		s.by[i] = nil
	}
}

// preattestListener starts the attestation of every connection it accepts.
type preattestListener struct {
	net.Listener
	ctx context.Context
	a   *Agent
}

func (l preattestListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if pc, ok := c.(interface{ Peer() *peercred.Peer }); ok {
			l.a.preattest(l.ctx, pc.Peer())
		}
	}
	return c, err
}
