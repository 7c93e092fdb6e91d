package workload

import "sync"

// Subscription delivers Views to one stream, latest value wins: the publisher never blocks,
// and a slow stream skips intermediate Views rather than holding everyone else up.
//
// A stream reads Views either from the Updates channel (a goroutine parked on it) or, after
// OnPublish, by being called back. The callback lets a front-end serve a stream with a single
// goroutine — the one blocked in the stream's Recv — and start a short-lived one only when a
// View arrives: with ten thousand idle streams, a second parked goroutine per stream was a
// third of the agent's memory per stream (issue 6).
type Subscription struct {
	ch      chan *View
	mu      sync.Mutex
	latest  *View
	seq     uint64
	closed  bool
	onClose func()
	notify  func()
}

// NewSubscription returns a subscription whose channel already holds initial. onClose (may be
// nil) runs once, on the first Close.
func NewSubscription(initial *View, onClose func()) *Subscription {
	s := &Subscription{ch: make(chan *View, 1), latest: initial, onClose: onClose}
	s.ch <- initial
	return s
}

// Updates receives each new View. A value received is the newest at the time it was sent.
// It receives nothing once OnPublish has been called.
func (s *Subscription) Updates() <-chan *View { return s.ch }

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

// OnPublish switches the subscription from its channel to a callback: f runs after every
// later Publish, on the publisher's goroutine, so it must return at once (typically it
// wakes or starts the stream's sender). seen is the sequence number of the View the reader
// holds (from LatestSeq); if a newer one was published before the switch, f is also called
// once now, so nothing is missed.
func (s *Subscription) OnPublish(f func(), seen uint64) {
	s.mu.Lock()
	s.notify = f
	select {
	case <-s.ch: // the channel is no longer read; don't keep a View alive in it
	default:
	}
	missed := s.seq != seen && !s.closed
	s.mu.Unlock()
	if missed {
		f()
	}
}

// Publish replaces any undelivered View with v. It never blocks. Publishing after Close is a
// no-op.
func (s *Subscription) Publish(v *View) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.latest = v
	s.seq++
	if f := s.notify; f != nil {
		s.mu.Unlock()
		f()
		return
	}
	select {
	case <-s.ch: // drop the stale value: the reader only wants the newest
	default:
	}
	s.ch <- v
	s.mu.Unlock()
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
