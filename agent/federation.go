package agent

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// Federation: the agent's part is wiring. pkg/federation fetches, checks and keeps foreign
// bundles and serves ours; the cache gives each caller group its own trust domain's bundle
// plus the federated ones its entries federate with (and those configured for every
// workload), so a bundle arriving, rotating or leaving reaches exactly the streams that hold
// it, and a delta stream gets removed_resources when a federation ends.

// newFederation creates the federation manager; its Snapshots go through the updater, in
// order with every other change. With store "etcd" the fleet's hosts fetch each foreign
// bundle once and share it (fleet.SharedBundles).
func (a *Agent) newFederation() error {
	var share federation.Sharing
	if a.etcd != nil {
		s, err := fleet.NewSharedBundles(fleet.SharedBundlesConfig{
			Client: a.etcd, Prefix: a.cfg.Store.Etcd.Prefix, Node: a.cfg.NodeName,
			Reachable: a.registryReachable,
			OnBundle: func(td spiffeid.TrustDomain, doc []byte, src store.BundleSource) {
				if err := a.fed.Shared(context.Background(), td, doc, src); err != nil {
					a.log.Warn("federation: the fleet's shared bundle was not taken", "trust_domain", td.Name(), "error", err)
				}
			},
			OnRemoved: func(td spiffeid.TrustDomain) {
				if err := a.fed.SharedRemoved(context.Background(), td); err != nil {
					a.log.Warn("federation: the fleet's deleted bundle was not dropped", "trust_domain", td.Name(), "error", err)
				}
			},
			Logger: a.log.With("component", "federation"),
		})
		if err != nil {
			return err
		}
		a.sharedBundles, share = s, s
	}
	m, err := federation.NewManager(federation.ManagerConfig{
		Share:       share,
		TrustDomain: a.cfg.TrustDomain,
		Store:       a.store,
		OwnBundle:   a.ownBundle,
		OnChange: func(s federation.Snapshot) {
			a.enqueue(func() { a.cache.setFederation(s) })
		},
		OnRefresh:  a.metrics.FederationRefresh,
		MinRefresh: a.cfg.Federation.MinRefreshInterval,
		Logger:     a.log,
	})
	if err != nil {
		return err
	}
	a.fed = m
	return nil
}

// relationships turns the config's federates_with blocks into the manager's form.
func relationships(c conf.Config) []federation.Relationship {
	out := make([]federation.Relationship, 0, len(c.Federation.FederatesWith))
	for _, f := range c.Federation.FederatesWith {
		out = append(out, federation.Relationship{
			TrustDomain:    f.TrustDomain,
			URL:            f.BundleEndpointURL,
			Profile:        f.Profile,
			EndpointID:     f.EndpointSPIFFEID,
			BundleFile:     f.BundleFile,
			ToAllWorkloads: f.ToAllWorkloads,
		})
	}
	return out
}

// listenBundleEndpoint opens the bundle endpoint's TCP listener when one is configured.
func listenBundleEndpoint(cfg conf.Config) (net.Listener, error) {
	ep := cfg.Federation.Endpoint
	if ep == nil {
		return nil, nil
	}
	ln, err := net.Listen("tcp", ep.Address)
	if err != nil {
		return nil, fmt.Errorf("bundle endpoint listener: %w", err)
	}
	return ln, nil
}

// startFederation loads the stored federated bundles, applies the configured relationships
// and starts the fetchers and, when ln is set, the bundle endpoint.
func (a *Agent) startFederation(ctx context.Context, ln net.Listener, run func(string, func() error)) error {
	if err := a.fed.Load(ctx); err != nil {
		return err
	}
	if err := a.fed.Configure(ctx, relationships(a.cfg.Config)); err != nil {
		return err
	}
	// The bundles loaded reach the cache through the updater; wait for it, so the first
	// streams already get them.
	loaded := make(chan struct{})
	a.enqueue(func() { close(loaded) })
	select {
	case <-loaded:
	case <-ctx.Done():
		return ctx.Err()
	}
	run("federation", func() error { return a.fed.Run(ctx) })
	if a.sharedBundles != nil {
		run("federation sharing", func() error { return a.sharedBundles.Run(ctx) })
	}
	if ln == nil {
		return nil
	}
	ep := a.cfg.Federation.Endpoint
	e, err := federation.NewEndpoint(federation.EndpointConfig{
		TrustDomain: a.cfg.TrustDomain,
		Profile:     ep.Profile,
		RefreshHint: a.cfg.BundleEndpointRefreshHint(),
		Bundle:      a.ownBundle,
		Minter:      a.ca,
		CertFile:    ep.CertFile,
		KeyFile:     ep.KeyFile,
		Logger:      a.log,
	})
	if err != nil {
		return err
	}
	run("bundle endpoint", func() error { return e.Serve(ctx, ln) })
	return nil
}

// setFederation replaces the federated bundles and republishes every group whose View
// changes.
func (c *cache) setFederation(s federation.Snapshot) { c.republish(func() { c.fed = s }) }

// bundlesForLocked is g's bundles: the own trust domain's first, then, by name, each
// federated trust domain that one of g's entries federates with or that goes to every
// workload, if its bundle has arrived (an entry may name a trust domain before its bundle
// exists; it is added when it comes). Bundles are never merged: one per trust domain.
// c.mu must be held.
func (c *cache) bundlesForLocked(g *group) []*workload.Bundle {
	if len(c.fed.Bundles) == 0 {
		return c.bundles
	}
	var tds []spiffeid.TrustDomain
	for _, td := range c.fed.ToAll {
		if c.fed.Bundles[td] != nil {
			tds = append(tds, td)
		}
	}
	for _, e := range g.entries {
		for _, td := range e.FederatesWith {
			if c.fed.Bundles[td] != nil && !slices.Contains(tds, td) {
				tds = append(tds, td)
			}
		}
	}
	if len(tds) == 0 {
		return c.bundles
	}
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	out := make([]*workload.Bundle, 0, len(c.bundles)+len(tds))
	out = append(out, c.bundles...)
	for _, td := range tds {
		out = append(out, c.fed.Bundles[td])
	}
	return out
}
