package agent

import (
	"context"
	"crypto/tls"
	"strings"
	"time"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/mirror"
)

// openStore returns the store the agent serves from: the data dir's SQLite, or, with
// store "etcd", a mirror of the fleet registry kept in that SQLite file (a.registry, run by
// Serve), so the host keeps serving while etcd is unreachable. The copy holds the registry's
// entries that can match on this host (its node name and groups) and the host's own: the
// config file's entry blocks, which never go to etcd (reconcile writes them with
// a.registry.Own()).
func (a *Agent) openStore(local *store.SQLite) (store.Store, error) {
	if a.cfg.Store.Kind != conf.StoreEtcd {
		return local, nil
	}
	ec := a.cfg.Store.Etcd
	tc, err := etcdTLS(ec)
	if err != nil {
		return nil, err
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
		NodeName:   a.cfg.NodeName,
		NodeGroups: a.cfg.NodeGroups,
		Logger:     log,
	})
	if err != nil {
		return nil, err
	}
	a.registry = m
	return m, nil
}

// etcdTLS is the client TLS of store "etcd": its files, or the system roots for https://
// endpoints without them; nil for http://.
func etcdTLS(ec conf.EtcdConfig) (*tls.Config, error) {
	switch {
	case ec.CAFile != "" || ec.CertFile != "":
		return etcdstore.TLSFromFiles(ec.CAFile, ec.CertFile, ec.KeyFile)
	case strings.HasPrefix(ec.Endpoints[0], "https://"):
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil // the system roots
	}
	return nil, nil
}

// registryStatus is the registry's state for svidctl status; nil without a registry.
func (a *Agent) registryStatus() *admin.Registry {
	if a.registry == nil {
		return nil
	}
	ok, since := a.registry.Status()
	r := &admin.Registry{Kind: conf.StoreEtcd, Reachable: ok, Since: since.UTC()}
	if p := a.nodeRecord.Load(); p != nil {
		r.NodeNameConflict = p.Conflict()
	}
	return r
}

func (a *Agent) registryMetrics() {
	if a.registry != nil {
		a.metrics.SetRegistry(a.registry.Status())
	}
}

// adminStore is the store the admin API works on: the agent's, but with a registry, entries
// are listed and found fleet-wide (mirror.Fleet) so that svidctl on any host shows, updates
// and deletes any entry, including those for other hosts that this host does not copy.
func (a *Agent) adminStore() store.Store {
	if a.registry == nil {
		return a.store
	}
	return a.registry.Fleet()
}

// entryWriter writes the config file's entries (reconcile).
type entryWriter interface {
	CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error)
	UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error)
	DeleteEntry(ctx context.Context, id string) (entry.Entry, error)
}

// ownEntries is where the config file's entries are written: the store, or with a registry
// the host's copy only (they belong to this host, never to the fleet).
func (a *Agent) ownEntries() entryWriter {
	if a.registry == nil {
		return a.store
	}
	return a.registry.Own()
}

// registryReachable is the registry mirror's Status (reachable, since when); reachable
// without one (nothing to be cut off from).
func (a *Agent) registryReachable() (bool, time.Time) {
	if a.registry == nil {
		return true, a.started
	}
	return a.registry.Status()
}
