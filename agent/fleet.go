package agent

import (
	"context"
	"sync/atomic"

	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// The fleet's JWT keys (store "etcd"): this host publishes its CA's JWT public keys in the
// registry (fleet.Publisher), follows every host's (fleet.Keys, kept in the data dir's SQLite
// so a restart with etcd unreachable still trusts them), and serves its trust domain's bundle
// with all of them (fleet.Bundler), so a JWT-SVID minted on any host validates on every host.
// Without etcd, a.fleet is nil and the bundle is the CA's.

// fleetKeys is the agent's part of the fleet's JWT keys.
type fleetKeys struct {
	keys    *fleet.Keys
	pub     *fleet.Publisher
	bundler *fleet.Bundler
	// changed wakes watchBundle when the other hosts' keys changed (1-buffered).
	changed chan struct{}
	// served is the own trust domain's bundle as served: the CA's plus the fleet's keys.
	served atomic.Pointer[workload.Bundle]
}

// newFleet sets a.fleet up when the agent follows a registry: it loads the keys the host's
// copy holds and assembles the first bundle, so the first callers already get the fleet's
// keys, whether or not etcd is reachable.
func (a *Agent) newFleet(local *store.SQLite) error {
	if a.etcd == nil {
		return nil
	}
	log := a.log.With("component", "fleet")
	f := &fleetKeys{changed: make(chan struct{}, 1)}
	prefix := a.cfg.Store.Etcd.Prefix
	var err error
	f.pub, err = fleet.NewPublisher(fleet.PublisherConfig{
		Client: a.etcd, Prefix: prefix, Node: a.cfg.NodeName, Keys: a.caJWTKeys, Logger: log,
		// Until this host holds its node name, another host with the same name may
		// publish under it: neither deletes the other's keys (runNodeRecord triggers).
		Hold: func() bool {
			p := a.nodeRecord.Load()
			return p == nil || !p.Holds()
		},
	})
	if err != nil {
		return err
	}
	f.keys, err = fleet.NewKeys(fleet.KeysConfig{
		Client: a.etcd, Prefix: prefix, Node: a.cfg.NodeName, Local: local,
		OnChange: func() {
			select {
			case f.changed <- struct{}{}:
			default:
			}
		},
		OnOwnChange: f.pub.Trigger,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	st, err := f.keys.Load(context.Background())
	if err != nil {
		return err
	}
	f.bundler = fleet.NewBundler(local, st.Sequence, st.Fingerprint)
	a.fleet = f
	a.assembleBundle()
	return nil
}

// caJWTKeys is the CA's JWT keys in the fleet's form.
func (a *Agent) caJWTKeys() []fleet.Key {
	ks := a.ca.JWTKeys()
	out := make([]fleet.Key, 0, len(ks))
	for _, k := range ks {
		out = append(out, fleet.Key{Node: a.cfg.NodeName, KID: k.KID, Public: k.Public, NotAfter: k.NotAfter})
	}
	return out
}

// ownBundle is the own trust domain's bundle as served: on SDS, the Workload API, the admin
// API and the federation bundle endpoint.
func (a *Agent) ownBundle() *workload.Bundle {
	if a.fleet == nil {
		return a.ca.Bundle()
	}
	return a.fleet.served.Load()
}

// assembleBundle recomputes the served bundle from the CA's and the fleet's keys and returns
// it. Without a fleet it is the CA's.
func (a *Agent) assembleBundle() *workload.Bundle {
	f := a.fleet
	if f == nil {
		return a.ca.Bundle()
	}
	others, rev := f.keys.Snapshot()
	b, _, err := f.bundler.Bundle(context.Background(), a.ca.Bundle(), others, rev)
	switch {
	case b == nil:
		// Never serve a lower sequence: keep what is served, the CA's only at start.
		a.log.Error("assembling the fleet's bundle", "error", err)
		if b = f.served.Load(); b == nil {
			b = a.ca.Bundle()
		}
	case err != nil:
		a.log.Error("recording the bundle's sequence in the data dir", "error", err)
	}
	f.served.Store(b)
	return b
}

// fleetChanged is the channel that says the fleet's keys changed; nil (never ready) without
// a fleet.
func (a *Agent) fleetChanged() <-chan struct{} {
	if a.fleet == nil {
		return nil
	}
	return a.fleet.changed
}

// startFleet runs the key follower and the publisher.
func (a *Agent) startFleet(ctx context.Context, run func(string, func() error)) {
	if a.fleet == nil {
		return
	}
	run("fleet keys", func() error { return a.fleet.keys.Run(ctx) })
	run("fleet key publisher", func() error { return a.fleet.pub.Run(ctx) })
}
