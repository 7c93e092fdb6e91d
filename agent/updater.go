package agent

import (
	"context"
	"time"

	"github.com/svidd/svidd/pkg/workload"
)

// enqueue hands work to the updater goroutine. It never blocks (store callbacks and timers
// call it).
func (a *Agent) enqueue(f func()) {
	t0 := time.Now()
	a.qmu.Lock()
	// Push latency: from the change being observed to every affected stream's View published.
	a.queue = append(a.queue, func() { f(); a.metrics.PushLatency(time.Since(t0)) })
	a.qmu.Unlock()
	select {
	case a.qready <- struct{}{}:
	default:
	}
}

// updater applies changes one at a time, in order, so two changes never interleave their
// view rebuilds.
func (a *Agent) updater(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.qready:
		}
		a.qmu.Lock()
		work := a.queue
		a.queue = nil
		a.qmu.Unlock()
		for _, f := range work {
			f()
		}
	}
}

func (a *Agent) scheduleRotation(entryID string, at time.Time) {
	time.AfterFunc(time.Until(at), func() { a.enqueue(func() { a.cache.rotate(entryID) }) })
}

// watchBundle republishes the own trust domain's bundle whenever it changes: the CA rotated,
// or (store "etcd") another host's JWT keys came or went.
func (a *Agent) watchBundle(ctx context.Context) {
	last := a.ownBundle()
	for {
		// Take the channel before reading the bundle, so no change is missed.
		caChanged := a.ca.BundleChanged()
		if b := a.assembleBundle(); b != last {
			last = b
			a.metrics.BundleChanged()
			a.log.Info("trust bundle changed", "trust_domain", b.TrustDomain.Name(), "sequence", b.Sequence,
				"authorities", len(b.X509Authorities), "jwt_authorities", len(b.JWTAuthorities))
			a.enqueue(func() { a.cache.setBundles([]*workload.Bundle{b}) })
		}
		select {
		case <-ctx.Done():
			return
		case <-caChanged:
			if a.fleet != nil {
				a.fleet.pub.Trigger() // the CA prepared, activated or dropped a key
			}
		case <-a.fleetChanged():
		}
	}
}
