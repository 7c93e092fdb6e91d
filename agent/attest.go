package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
)

// attestCaller returns the caller's selectors: without the binary's digest, and with it only
// when an entry with a unix:sha256 selector could match the caller on its other selectors.
// Hashing is the costly part of attestation (a binary of up to 512 MiB read in full, charged
// to the caller's uid): a caller no such entry could match never pays for it, nor makes svidd
// pay, whatever binary it runs.
func (a *Agent) attestCaller(ctx context.Context, p *peercred.Peer) ([]entry.Selector, error) {
	sel, err := a.attest(ctx, p, false)
	if err != nil || !a.cache.needsDigest(sel) {
		return sel, err
	}
	return a.attest(ctx, p, true)
}

// attest returns the caller's selectors, with the binary's digest or without: attested once per
// connection (usually already at accept, see preattest). An attestation made at accept is
// confirmed by the first call that uses it: the caller must still be alive and run the same
// binary, else it is attested afresh.
//
// A connection's identity is what connected. Its first attestation binds it to the process
// and the binary file it ran then (start time, device, inode); every later attestation of the
// connection (afresh after a failed confirmation, with the digest, for a re-attested stream)
// must find the same, or the connection is refused for good (errBinaryChanged): a program
// that connects and then execs a binary an entry names never gets that binary's identities.
func (a *Agent) attest(ctx context.Context, p *peercred.Peer, digest bool) ([]entry.Selector, error) {
	st := connAttestations(p)
	for {
		if err := st.refusal(); err != nil {
			return nil, err
		}
		c := st.current(digest)
		ran := c.run(func() (*attestor.Attestation, error) { return a.record(ctx, p, digest, st.binding()) })
		if !ran {
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if c.err != nil {
			st.drop(digest, c) // errors are not kept: the next call tries again
			if errors.Is(c.err, attestor.ErrBinaryChanged) {
				return nil, st.refuse(a.log, p, c.err)
			}
			if !ran && ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
				continue // the call that made it went away; ours has not
			}
			return nil, fmt.Errorf("attesting pid %d: %w", p.PID, c.err)
		}
		if !c.confirm(a.att, p) {
			st.drop(digest, c)
			continue
		}
		if err := st.bind(c.at); err != nil {
			return nil, st.refuse(a.log, p, err)
		}
		return c.at.Selectors, nil
	}
}

// record runs one attestation and counts it. The caller's selectors are the attestor's plus
// the host's node selectors (a.node): added here, where an attestation becomes the caller's
// selector set, so SDS, the Workload API, the digest decision, svidctl callers and the "no
// identity" log all see them. Only svidd's config makes them: the attestor derives no
// selector of type node, whatever the caller does.
func (a *Agent) record(ctx context.Context, p *peercred.Peer, digest bool, bound *attestor.Attestation) (*attestor.Attestation, error) {
	start := time.Now()
	at, err := a.att.Record(ctx, p, attestor.Options{Digest: digest, Bound: bound})
	a.metrics.AttestationDone(time.Since(start), err)
	if err == nil {
		at.Selectors = entry.WithNode(at.Selectors, a.node)
	}
	return at, err
}

// errBinaryChanged is what every RPC of a connection whose process exec'd another binary gets:
// not entitled (front-ends answer PermissionDenied).
var errBinaryChanged = fmt.Errorf("%w: the connection's process runs another binary than when it connected", workload.ErrNotEntitled)

// preattest starts the attestation of a connection just accepted, in the background, so that
// it is done (on the CPU Envoy leaves idle between connecting and asking) by the time the first
// request needs it, and so that the connection is bound to the binary its process runs as
// close to connect as svidd can see it. The digest follows when the caller needs one (see
// attestCaller). Only a peer with a pidfd qualifies: attest confirms the result with it.
func (a *Agent) preattest(ctx context.Context, p *peercred.Peer) {
	hasPIDFD := false
	_ = p.WithPIDFD(func(fd int) error { hasPIDFD = fd >= 0; return nil })
	if !hasPIDFD {
		return
	}
	st := connAttestations(p)
	c := st.current(false)
	if c.started.Load() {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ran := c.run(func() (*attestor.Attestation, error) {
			at, err := a.record(ctx, p, false, nil)
			if err == nil {
				c.early = true
				_ = st.bind(at) // the first binding; nothing to disagree with yet
			}
			return at, err
		})
		if !ran || c.err != nil || !a.cache.needsDigest(c.at.Selectors) {
			return
		}
		d := st.current(true)
		d.run(func() (*attestor.Attestation, error) {
			at, err := a.record(ctx, p, true, c.at)
			d.early = err == nil
			return at, err
		})
	}()
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

// connAttestState holds a connection's attestations, one per digest option, in its Peer, and
// what binds the connection to its caller's binary.
type connAttestState struct {
	mu sync.Mutex
	by [2]*connAttest // [0] without the binary's digest, [1] with it
	// bound is the connection's first successful attestation: every later one must agree
	// with it (Attestation.SameBinary).
	bound *attestor.Attestation
	// refused is set, for good, once the connection's process was found running another
	// binary; the reason is logged once, when it is set.
	refused bool
}

// binding returns the attestation later ones must agree with (nil before the first).
func (s *connAttestState) binding() *attestor.Attestation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bound
}

// bind records at as the connection's binding if it is the first, else checks it agrees.
func (s *connAttestState) bind(at *attestor.Attestation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.bound == nil:
		s.bound = at
	case !s.bound.SameBinary(at):
		return attestor.ErrBinaryChanged
	}
	return nil
}

// refusal returns errBinaryChanged once the connection is refused.
func (s *connAttestState) refusal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refused {
		return errBinaryChanged
	}
	return nil
}

// refuse refuses the connection for good, logging why the first time.
func (s *connAttestState) refuse(log *slog.Logger, p *peercred.Peer, why error) error {
	s.mu.Lock()
	first := !s.refused
	s.refused = true
	s.mu.Unlock()
	if first {
		log.Warn("refusing a connection: its process runs another binary than when it connected; it gets no identity",
			"pid", p.PID, "uid", p.UID, "error", why)
	}
	return errBinaryChanged
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
