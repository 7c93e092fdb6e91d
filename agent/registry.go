package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/mirror"
)

// errFleetConfigEntries refuses entry blocks beside store "etcd": reconciling them as a single
// host does (delete every named entry not in this file) would delete the other hosts' entries
// in a shared registry. Host-scoped config entries are issue 14's next step.
var errFleetConfigEntries = errors.New(`entry blocks are not supported with store "etcd" yet (they would replace every host's config entries); register fleet entries with svidctl`)

// openStore returns the store the agent serves from: the data dir's SQLite, or, with
// store "etcd", a mirror of the fleet registry kept in that SQLite file (a.registry, run by
// Serve), so the host keeps serving while etcd is unreachable.
func (a *Agent) openStore(local *store.SQLite) (store.Store, error) {
	if a.cfg.Store.Kind != conf.StoreEtcd {
		return local, nil
	}
	if err := fleetEntries(a.cfg.Entries); err != nil {
		return nil, err
	}
	ec := a.cfg.Store.Etcd
	var tc *tls.Config
	switch {
	case ec.CAFile != "" || ec.CertFile != "":
		var err error
		if tc, err = etcdstore.TLSFromFiles(ec.CAFile, ec.CertFile, ec.KeyFile); err != nil {
			return nil, err
		}
	case strings.HasPrefix(ec.Endpoints[0], "https://"):
		tc = &tls.Config{MinVersion: tls.VersionTLS12} // the system roots
	}
	log := a.log.With("component", "registry")
	// One connection per host, shared by everything that talks to the registry.
	cli, err := etcdstore.NewClient(etcdstore.Config{Endpoints: ec.Endpoints, TLS: tc})
	if err != nil {
		return nil, err
	}
	a.etcd = cli
	m, err := mirror.New(mirror.Config{
		Local: local,
		Open: func(ctx context.Context) (store.Store, error) {
			return etcdstore.Open(ctx, etcdstore.Config{Client: cli, Prefix: ec.Prefix, Logger: log})
		},
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.registry = m
	return m, nil
}

// registryStatus is the registry's state for svidctl status; nil without a registry.
func (a *Agent) registryStatus() *admin.Registry {
	if a.registry == nil {
		return nil
	}
	ok, since := a.registry.Status()
	return &admin.Registry{Kind: conf.StoreEtcd, Reachable: ok, Since: since.UTC()}
}

func (a *Agent) registryMetrics() {
	if a.registry != nil {
		a.metrics.SetRegistry(a.registry.Status())
	}
}

func fleetEntries(entries []entry.Entry) error {
	if len(entries) > 0 {
		return errFleetConfigEntries
	}
	return nil
}
