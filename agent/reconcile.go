package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

// Reload applies a new configuration without dropping streams: the entry blocks are
// reconciled and the log level changed. Settings that only take effect at start (sockets,
// data dir, trust domain, CA, listeners) are reported and left as they are.
func (a *Agent) Reload(ctx context.Context, cfg conf.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	old := a.cfg.Config
	for _, d := range []struct {
		name     string
		old, new any
	}{
		{"agent.trust_domain", old.TrustDomain, cfg.TrustDomain},
		{"agent.socket_path", old.SocketPath, cfg.SocketPath},
		{"agent.admin_socket_path", old.AdminSocketPath, cfg.AdminSocketPath},
		{"agent.data_dir", old.DataDir, cfg.DataDir},
		{"agent.log_format", old.LogFormat, cfg.LogFormat},
		// The host's node selectors are part of every open stream's selector set and decide
		// what the registry copy holds: a restart re-attests and re-mirrors (README).
		{"agent.node_name", old.NodeName, cfg.NodeName},
		{"agent.node_groups", old.NodeGroups, cfg.NodeGroups},
		{"ca", old.CA, cfg.CA},
		{"sds", old.SDS, cfg.SDS},
		{"telemetry", old.Telemetry, cfg.Telemetry},
		{"health", old.Health, cfg.Health},
		{"limits", old.Limits, cfg.Limits},
		{"federation.bundle_endpoint", endpointOf(old), endpointOf(cfg)},
		{"federation.min_refresh_interval", old.Federation.MinRefreshInterval, cfg.Federation.MinRefreshInterval},
		{"store", old.Store, cfg.Store},
	} {
		if fmt.Sprint(d.old) != fmt.Sprint(d.new) {
			a.log.Warn("config change needs a restart to take effect; ignored until then", "setting", d.name)
		}
	}
	if a.cfg.Level != nil && cfg.LogLevel != old.LogLevel {
		a.cfg.Level.Set(cfg.LogLevel)
		a.cfg.LogLevel = cfg.LogLevel
		a.log.Info("log level changed", "level", cfg.LogLevel.String())
	}
	// federates_with blocks apply at once: a dropped one removes its bundle from every
	// stream. A bad bundle_file changes nothing.
	if err := a.fed.Configure(ctx, relationships(cfg)); err != nil {
		return err
	}
	a.cfg.Federation.FederatesWith = cfg.Federation.FederatesWith
	a.cfg.Entries = cfg.Entries
	a.warnConfigEntries(cfg.Entries)
	if err := a.reconcile(ctx); err != nil {
		return err
	}
	a.log.Info("configuration reloaded", "entries_in_config", len(cfg.Entries))
	return nil
}

// reconcile makes the store's config-declared entries (those with a Name) equal to the
// config's entry blocks: created, updated or deleted, idempotently. With a registry they are
// the host's own, in its copy only: other hosts' entries are never touched.
func (a *Agent) reconcile(ctx context.Context) error {
	existing, err := a.store.ListEntries(ctx, store.Filter{})
	if err != nil {
		return fmt.Errorf("reconciling config entries: %w", err)
	}
	_, err = a.reconcileWith(ctx, existing)
	return err
}

// reconcileWith is reconcile given the store's entries; it reports whether it wrote anything.
func (a *Agent) reconcileWith(ctx context.Context, existing []entry.Entry) (changed bool, err error) {
	w := a.ownEntries()
	byName := make(map[string]entry.Entry)
	for _, e := range existing {
		if e.Name != "" {
			byName[e.Name] = e
		}
	}
	for _, want := range a.cfg.Entries {
		have, ok := byName[want.Name]
		delete(byName, want.Name)
		switch {
		case !ok:
			if _, err := w.CreateEntry(ctx, want); err != nil {
				return changed, fmt.Errorf("registering config entry %q: %w", want.Name, err)
			}
			changed = true
			a.log.Info("config entry registered", "name", want.Name, "spiffe_id", want.SPIFFEID.String())
		case !sameSpec(have, want):
			want.ID = have.ID
			if _, err := w.UpdateEntry(ctx, want); err != nil {
				return changed, fmt.Errorf("updating config entry %q: %w", want.Name, err)
			}
			changed = true
			a.log.Info("config entry updated", "name", want.Name, "spiffe_id", want.SPIFFEID.String())
		}
	}
	for name, e := range byName {
		if _, err := w.DeleteEntry(ctx, e.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return changed, fmt.Errorf("removing config entry %q: %w", name, err)
		}
		changed = true
		a.log.Info("config entry removed (no longer in the config)", "name", name, "spiffe_id", e.SPIFFEID.String())
	}
	return changed, nil
}

func sameSpec(a, b entry.Entry) bool {
	return a.SPIFFEID == b.SPIFFEID &&
		entry.SelectorKey(entry.Normalize(a.Selectors)) == entry.SelectorKey(entry.Normalize(b.Selectors)) &&
		a.X509SVIDTTL == b.X509SVIDTTL &&
		fmt.Sprint(a.DNSNames) == fmt.Sprint(b.DNSNames) &&
		slices.Equal(entry.NormalizeTrustDomains(a.FederatesWith), entry.NormalizeTrustDomains(b.FederatesWith))
}

// endpointOf is the bundle endpoint's settings as a value (zero: none), for comparing.
func endpointOf(c conf.Config) conf.BundleEndpointConfig {
	if c.Federation.Endpoint == nil {
		return conf.BundleEndpointConfig{}
	}
	return *c.Federation.Endpoint
}
