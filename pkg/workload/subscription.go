package workload

import "sync"

// Subscription delivers Views to one stream, latest value wins: the publisher never blocks,
// and a slow stream skips intermediate Views rather than holding everyone else up.
type Subscription struct {
	ch      chan *View
	mu      sync.Mutex
	latest  *View
	closed  bool
	onClose func()
}

// NewSubscription returns a subscription whose channel already holds initial. onClose (may be
// nil) runs once, on the first Close.
func NewSubscription(initial *View, onClose func()) *Subscription {
	s := &Subscription{ch: make(chan *View, 1), latest: initial, onClose: onClose}
	s.ch <- initial
	return s
}

// Updates receives each new View. A value received is the newest at the time it was sent.
func (s *Subscription) Updates() <-chan *View { return s.ch }

// Latest returns the most recently published View.
func (s *Subscription) Latest() *View {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest
}

// Publish replaces any undelivered View with v. It never blocks. Publishing after Close is a
// no-op.
func (s *Subscription) Publish(v *View) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.latest = v
	select {
	case <-s.ch: // drop the stale value: the reader only wants the newest
	default:
	}
	s.ch <- v
}

// Close unsubscribes. It is idempotent and safe to call concurrently with Publish.
func (s *Subscription) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	f := s.onClose
	s.mu.Unlock()
	if f != nil {
		f()
	}
}
