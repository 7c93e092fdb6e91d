// Package workloadtest stands in for the agent in tests of the protocol front-ends (SDS, the
// Workload API): a workload.Watcher whose Views the test publishes by hand.
package workloadtest

import (
	"context"
	"sync"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
)

// Watcher gives every Watch a subscription to the current View; Publish pushes a new View to
// every open subscription. It is safe for concurrent use.
type Watcher struct {
	mu      sync.Mutex
	view    *workload.View
	err     error
	subs    map[*workload.Subscription]struct{}
	watches int
	needs   []workload.Need
}

var _ workload.Watcher = (*Watcher)(nil)

// NewWatcher returns a Watcher whose current View is v.
func NewWatcher(v *workload.View) *Watcher {
	return &Watcher{view: v, subs: map[*workload.Subscription]struct{}{}}
}

// Watch implements workload.Watcher. It counts the call and records need, then fails with the error set by
// SetErr, if any.
func (w *Watcher) Watch(_ context.Context, _ *peercred.Peer, need workload.Need) (*workload.Subscription, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.watches++
	w.needs = append(w.needs, need)
	if w.err != nil {
		return nil, w.err
	}
	var sub *workload.Subscription
	sub = workload.NewSubscription(w.view, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.subs, sub)
	})
	w.subs[sub] = struct{}{}
	return sub, nil
}

// SetErr makes every later Watch fail with err (nil: succeed again).
func (w *Watcher) SetErr(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
}

// Publish makes v the current View and pushes it to every open subscription.
func (w *Watcher) Publish(v *workload.View) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.view = v
	for sub := range w.subs {
		sub.Publish(v)
	}
}

// Current returns the current View.
func (w *Watcher) Current() *workload.View {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.view
}

// Open is how many subscriptions are open (not yet closed).
func (w *Watcher) Open() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.subs)
}

// Watches is how many times Watch was called.
func (w *Watcher) Watches() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.watches
}

// Needs returns the Need of every Watch call so far, in order.
func (w *Watcher) Needs() []workload.Need {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]workload.Need(nil), w.needs...)
}
