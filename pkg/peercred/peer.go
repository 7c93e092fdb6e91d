// Package peercred carries the kernel's view of who is on the other end of a Unix socket
// (SO_PEERCRED, and a pidfd for the peer process where the kernel gives one) from accept to
// the gRPC handlers, as credentials.AuthInfo.
package peercred

import (
	"sync"
)

// Peer is the process that connected, as the kernel reported it at connect time. One Peer per
// connection; every stream on the connection sees the same *Peer.
type Peer struct {
	PID int32
	UID uint32
	GID uint32

	mu     sync.Mutex
	pidfd  int // -1 when the kernel gave none or the connection closed
	memo   map[any]any
	closed bool
}

// NewPeer returns a Peer; pidfd is -1 when there is none. The Peer owns pidfd.
func NewPeer(pid int32, uid, gid uint32, pidfd int) *Peer {
	return &Peer{PID: pid, UID: uid, GID: gid, pidfd: pidfd}
}

// WithPIDFD calls f with the peer's pidfd (or -1) while holding it open: the fd cannot be
// closed, and its number reused, while f runs.
func (p *Peer) WithPIDFD(f func(pidfd int) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return f(p.pidfd)
}

// Memo returns the value cached for key on this connection, computing it with compute on the
// first call. Errors are not cached. It lets the agent attest a connection once for all its
// streams. compute runs without the Peer's lock held.
func (p *Peer) Memo(key any, compute func() (any, error)) (any, error) {
	p.mu.Lock()
	if v, ok := p.memo[key]; ok {
		p.mu.Unlock()
		return v, nil
	}
	p.mu.Unlock()
	v, err := compute()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.memo[key]; ok {
		return old, nil
	}
	if p.memo == nil {
		p.memo = make(map[any]any, 1)
	}
	p.memo[key] = v
	return v, nil
}

// Forget drops the cached value for key (e.g. when the agent needs a fuller attestation).
func (p *Peer) Forget(key any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.memo, key)
}

// Close releases the pidfd. It is idempotent; the listener's connection calls it on close.
func (p *Peer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.pidfd >= 0 {
		fd := p.pidfd
		p.pidfd = -1
		return closeFD(fd)
	}
	return nil
}
