package sds

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/svidd/svidd/pkg/workload"
)

// pusher lets a stream be served by one goroutine: the handler's, which reads requests and
// answers them. View updates do not need a second goroutine parked on the subscription for
// the stream's whole life; the subscription calls kick, which starts a short-lived goroutine
// to send the update (or tells one that is running to look again). With 10,000 idle streams
// the parked receiver was a goroutine stack per stream and a fifth of the CPU of a burst
// (stack growth), issue 6.
//
// mu guards the stream's whole state (the struct embedding pusher) and its sends: gRPC allows
// one sender at a time, and requests and updates both send.
type pusher struct {
	mu   sync.Mutex
	done bool   // the handler has returned: nothing may be sent any more
	seq  uint64 // the subscription's sequence number of the View the state reflects

	running atomic.Bool // a push goroutine is running
	dirty   atomic.Bool // a View was published since the running push goroutine last looked
}

// kick makes sure push runs after this call: it starts a push goroutine unless one is
// running, which then runs push once more. It never blocks (the subscription calls it while
// publishing to every stream of a group).
func (p *pusher) kick(push func()) {
	p.dirty.Store(true)
	if p.running.CompareAndSwap(false, true) {
		go p.run(push)
	}
}

func (p *pusher) run(push func()) {
	for {
		p.dirty.Store(false)
		push()
		p.running.Store(false)
		// A kick that came after dirty was cleared either saw running and left the work to
		// us, or started a goroutine of its own (then our CompareAndSwap fails).
		if !p.dirty.Load() || !p.running.CompareAndSwap(false, true) {
			return
		}
	}
}

// serve runs a stream on the handler's goroutine: it reads requests and hands each to
// onRequest (under mu) until the stream ends. Once onRequest has subscribed the stream (sub
// returns its subscription), every published View newer than the state's is handed to onView
// (under mu) by a push goroutine.
func serve[Req any](ctx context.Context, recv func() (*Req, error), p *pusher,
	onRequest func(context.Context, *Req) error, onView func(*workload.View) error,
	sub func() (*workload.Subscription, *streamLog),
) error {
	var subscribed *workload.Subscription
	defer func() {
		p.mu.Lock()
		p.done = true
		p.mu.Unlock()
		if subscribed != nil {
			subscribed.Close()
			if _, log := sub(); log != nil {
				if l := log.at(slog.LevelDebug); l != nil {
					l.Debug("sds stream closed")
				}
			}
		}
	}()
	for {
		req, err := recv()
		if err != nil {
			return recvErr(ctx, err)
		}
		p.mu.Lock()
		err = onRequest(ctx, req)
		s, log := sub()
		seen := p.seq
		p.mu.Unlock()
		if subscribed == nil && s != nil {
			subscribed = s
			s.OnPublish(func() { p.kick(func() { p.push(s, onView, log) }) }, seen)
		}
		if err != nil {
			return err
		}
	}
}

// push hands the subscription's newest View to onView if the stream has not seen it.
func (p *pusher) push(s *workload.Subscription, onView func(*workload.View) error, log *streamLog) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	v, seq := s.LatestSeq()
	if seq == p.seq {
		return
	}
	p.seq = seq
	if err := onView(v); err != nil {
		// A failed send means the stream is gone: the handler's Recv fails as well and ends
		// it. A response that could not be built was logged; the next View is tried afresh.
		if l := log.at(slog.LevelDebug); l != nil {
			l.Debug("pushing secrets failed", "error", err)
		}
	}
}
