package workload

import "sync"

// Subscription delivers Views to one stream, latest value wins: the publisher never blocks,
// and a slow stream skips intermediate Views rather than holding everyone else up.
//
// There is one way to receive Views: LatestSeq for the newest one and its sequence number,
// and OnPublish for a call after each later Publish. A front-end serving a stream with a
// single goroutine (SDS) starts a short-lived sender from the callback; one that parks a
// goroutine per stream anyway (the Workload API, waiting on its context too) has the
// callback signal a channel of its own. A channel inside every subscription was tried before
// (issue 6): with ten thousand idle SDS streams, a second parked goroutine per stream was a
// third of the agent's memory per stream, and the channel only served the other front-end.
type Subscription struct {
	mu      sync.Mutex
	latest  *View
	seq     uint64
	closed  bool
	onClose func()
	notify  func()
}

// NewSubscription returns a subscription whose Latest is initial (sequence number 0).
// onClose (may be nil) runs once, on the first Close.
func NewSubscription(initial *View, onClose func()) *Subscription {
	return &Subscription{latest: initial, onClose: onClose}
}

// Latest returns the most recently published View.
func (s *Subscription) Latest() *View {
	v, _ := s.LatestSeq()
	return v
}

// LatestSeq returns the most recently published View and its sequence number, which grows by
// one with every Publish: a reader that remembers it can tell whether it has seen the newest.
func (s *Subscription) LatestSeq() (*View, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest, s.seq
}

// OnPublish sets the callback: f runs after every later Publish, on the publisher's
// goroutine, so it must return at once (typically it wakes or starts the stream's sender,
// which then reads LatestSeq). seen is the sequence number of the View the reader holds
// (from LatestSeq); if a newer one was published before the call, f is also called once
// now, so nothing is missed. Calling OnPublish again replaces the callback.
func (s *Subscription) OnPublish(f func(), seen uint64) {
	s.mu.Lock()
	s.notify = f
	missed := s.seq != seen && !s.closed
	s.mu.Unlock()
	if missed {
		f()
	}
}

// Publish makes v the latest View and calls the OnPublish callback, if any. It never
// blocks. Publishing after Close is a no-op.
func (s *Subscription) Publish(v *View) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.latest = v
	s.seq++
	f := s.notify
	s.mu.Unlock()
	if f != nil {
		f()
	}
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
