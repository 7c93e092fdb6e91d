package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/mirror"
	"github.com/svidd/svidd/pkg/workload"
)

// A registrar-only host (agent { registrar_only = true }, store "etcd") is where operators
// register: svidd serves the admin socket and nothing else. Its entry writes go straight to
// the fleet registry through etcdstore; it keeps no local copy (it serves no workload), has
// no CA, no attestor and no Workload API socket, and needs no data dir. The hosts that serve
// workloads can then hold read-only etcd credentials (README "Running a fleet").

// registrarTimeout bounds one admin call's work against etcd, so that while etcd is
// unreachable an operator is told so at once rather than when svidctl gives up.
const registrarTimeout = 5 * time.Second

// registrarStore is a registrar's store: the registry itself once connected. Until then,
// and whenever a call cannot reach etcd within registrarTimeout, writes fail with
// mirror.ErrUnreachable and store.ErrUnavailable (503), as on every other host.
type registrarStore struct {
	mu        sync.Mutex
	st        *etcdstore.Store // nil until connected
	reachable bool
	since     time.Time
}

func (r *registrarStore) status() (reachable bool, since time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reachable, r.since
}

func (r *registrarStore) setReachable(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reachable != ok {
		r.reachable, r.since = ok, time.Now()
	}
}

func (r *registrarStore) unreachable(err error) error {
	_, since := r.status()
	return fmt.Errorf("%w since %s (%w): %v", mirror.ErrUnreachable, since.UTC().Format(time.RFC3339), store.ErrUnavailable, err)
}

// call runs fn against the registry within registrarTimeout.
func call[T any](ctx context.Context, r *registrarStore, fn func(ctx context.Context, st *etcdstore.Store) (T, error)) (T, error) {
	var zero T
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	if st == nil {
		return zero, r.unreachable(errors.New("not connected yet"))
	}
	if ok, _ := r.status(); !ok {
		// The probe (followRegistry) saw etcd gone: say so at once rather than wait again.
		return zero, r.unreachable(errors.New("no member answers"))
	}
	cctx, cancel := context.WithTimeout(ctx, registrarTimeout)
	defer cancel()
	v, err := fn(cctx, st)
	if err != nil && ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
		r.setReachable(false)
		return zero, r.unreachable(err)
	}
	return v, err
}

func (r *registrarStore) CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (entry.Entry, error) { return st.CreateEntry(ctx, e) })
}

func (r *registrarStore) UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (entry.Entry, error) { return st.UpdateEntry(ctx, e) })
}

func (r *registrarStore) DeleteEntry(ctx context.Context, id string) (entry.Entry, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (entry.Entry, error) { return st.DeleteEntry(ctx, id) })
}

func (r *registrarStore) GetEntry(ctx context.Context, id string) (entry.Entry, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (entry.Entry, error) { return st.GetEntry(ctx, id) })
}

func (r *registrarStore) ListEntries(ctx context.Context, f store.Filter) ([]entry.Entry, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) ([]entry.Entry, error) { return st.ListEntries(ctx, f) })
}

// Watch is never called on a registrar (it has no cache); it reports nothing.
func (r *registrarStore) Watch(func(store.Change)) (cancel func()) { return func() {} }

func (r *registrarStore) Ping(ctx context.Context) error {
	_, err := call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (struct{}, error) { return struct{}{}, st.Ping(ctx) })
	return err
}

func (r *registrarStore) Close() error {
	r.mu.Lock()
	st := r.st
	r.st = nil
	r.mu.Unlock()
	if st != nil {
		return st.Close()
	}
	return nil
}

func (r *registrarStore) SetBundle(ctx context.Context, b store.FederatedBundle) (store.FederatedBundle, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (store.FederatedBundle, error) {
		return st.SetBundle(ctx, b)
	})
}

func (r *registrarStore) GetBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (store.FederatedBundle, error) {
		return st.GetBundle(ctx, td)
	})
}

func (r *registrarStore) ListBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) ([]store.FederatedBundle, error) {
		return st.ListBundles(ctx)
	})
}

func (r *registrarStore) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	return call(ctx, r, func(ctx context.Context, st *etcdstore.Store) (store.FederatedBundle, error) {
		return st.DeleteBundle(ctx, td)
	})
}

// newRegistrar is New for a registrar-only host: the etcd client and the admin API's store.
func newRegistrar(cfg Config) (*Agent, error) {
	a := &Agent{cfg: cfg, log: cfg.Logger, qready: make(chan struct{}, 1)}
	tc, err := etcdTLS(cfg.Store.Etcd)
	if err != nil {
		return nil, err
	}
	cli, err := etcdstore.NewClient(etcdstore.Config{Endpoints: cfg.Store.Etcd.Endpoints, TLS: tc})
	if err != nil {
		return nil, err
	}
	a.etcd = cli
	a.reg = &registrarStore{since: time.Now()}
	a.store = a.reg
	return a, nil
}

// serveRegistrar is Serve for a registrar-only host: the admin API, connecting to etcd and
// probing it in the background, until ctx is done.
func (a *Agent) serveRegistrar(ctx context.Context, ls Listeners) error {
	defer a.closeResources()
	defer ls.Close()
	a.started = time.Now().UTC()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ls.Admin.Admit = a.admitAdmin
	srv, err := admin.New(admin.Config{
		TrustDomain: a.cfg.TrustDomain,
		Store:       a.reg,
		Bundle:      func() *workload.Bundle { return nil }, // no CA here
		CATTL:       a.cfg.CA.CATTL,
		Status:      a.registrarStatus,
		Ready:       a.reg.Ping,
		Nodes:       a.nodesAdmin(),
		Federation:  registrarFederation{a.reg},
		Logger:      a.log,
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { a.followRegistry(ctx) })
	a.serving.Store(true)
	a.log.Info("svidd serving as a registrar only", "trust_domain", a.cfg.TrustDomain.Name(),
		"admin_socket_path", ls.Admin.Path(), "registry", a.cfg.Store.Etcd.Endpoints)
	if a.cfg.OnReady != nil {
		a.cfg.OnReady()
	}
	err = srv.Serve(ctx, ls.Admin)
	a.serving.Store(false)
	a.log.Info("svidd stopped")
	return err
}

// followRegistry opens the registry (retrying until etcd answers), then probes it every
// second for svidctl status, until ctx is done.
func (a *Agent) followRegistry(ctx context.Context) {
	log := a.log.With("component", "registry")
	wait := 100 * time.Millisecond
	for {
		octx, cancel := context.WithTimeout(ctx, registrarTimeout)
		st, err := etcdstore.Open(octx, etcdstore.Config{Client: a.etcd, Prefix: a.cfg.Store.Etcd.Prefix, Logger: log})
		cancel()
		if err == nil {
			a.reg.mu.Lock()
			a.reg.st = st
			a.reg.mu.Unlock()
			a.reg.setReachable(true)
			break
		}
		log.Warn("connecting to the registry", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		a.reg.mu.Lock()
		st := a.reg.st
		a.reg.mu.Unlock()
		err := st.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		a.reg.setReachable(err == nil)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// registrarStatus is a registrar's status: the registry's state and how many entries it
// holds (read from etcd; left 0 while it cannot be read).
func (a *Agent) registrarStatus() admin.Status {
	ok, since := a.reg.status()
	out := admin.Status{
		TrustDomain:   a.cfg.TrustDomain.Name(),
		Now:           time.Now().UTC(),
		StartedAt:     a.started,
		Registry:      &admin.Registry{Kind: conf.StoreEtcd, Reachable: ok, Since: since.UTC()},
		RegistrarOnly: true,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if entries, err := a.reg.ListEntries(ctx, store.Filter{}); err == nil {
		out.Entries = len(entries)
	}
	return out
}

// registrarFederation is svidctl bundle on a registrar: the fleet's shared bundles under
// bundles/ in etcd, which every host takes (fleet.SharedBundles). A bundle set here is
// checked against the shared one by the rules a host applies (federation.NextVersion).
type registrarFederation struct{ r *registrarStore }

func (f registrarFederation) List(ctx context.Context) ([]admin.FederatedBundle, error) {
	ctx, cancel := context.WithTimeout(ctx, registrarTimeout)
	defer cancel()
	rows, err := f.r.ListBundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the fleet's federated bundles: %w", err)
	}
	out := make([]admin.FederatedBundle, 0, len(rows))
	for _, row := range rows {
		fb := admin.FederatedBundle{TrustDomain: row.TrustDomain.Name(), Source: string(row.Source), Version: row.Sequence,
			UpdatedAt: row.UpdatedAt}
		if b, err := spiffebundle.Parse(row.TrustDomain, row.Doc); err == nil {
			fb.HasBundle, fb.X509Authorities, fb.JWTAuthorities = true, len(b.X509Authorities()), len(b.JWTAuthorities())
		}
		out = append(out, fb)
	}
	return out, nil
}

func (f registrarFederation) Get(ctx context.Context, td spiffeid.TrustDomain) (admin.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, registrarTimeout)
	defer cancel()
	row, err := f.r.GetBundle(ctx, td)
	if err != nil {
		return admin.Bundle{}, err // store.ErrBundleNotFound: 404; unreachable: 503
	}
	b, err := spiffebundle.Parse(td, row.Doc)
	if err != nil {
		return admin.Bundle{}, fmt.Errorf("the fleet's bundle of %s in etcd is unreadable: %w", td.Name(), err)
	}
	return admin.Bundle{TrustDomain: td.Name(), Sequence: row.Sequence, PEM: string(federation.ToWorkload(b, row.Sequence).PEM),
		SPIFFE: row.Doc}, nil
}

func (f registrarFederation) Set(ctx context.Context, td spiffeid.TrustDomain, format string, data []byte) error {
	b, err := federation.ParseBundle(td, format, data)
	if err != nil {
		return err
	}
	var cur *spiffebundle.Bundle
	var curVersion uint64
	row, err := f.r.GetBundle(ctx, td)
	switch {
	case err == nil:
		if cur, err = spiffebundle.Parse(td, row.Doc); err != nil {
			cur = nil // unreadable: replaced
		}
		curVersion = row.Sequence
	case !errors.Is(err, store.ErrBundleNotFound):
		return err
	}
	version, err := federation.NextVersion(cur, b, curVersion)
	if err != nil {
		return err
	}
	doc, err := federation.Marshal(b)
	if err != nil {
		return err
	}
	_, err = f.r.SetBundle(ctx, store.FederatedBundle{TrustDomain: td, Doc: doc, Source: store.BundleManual, Sequence: version})
	return err
}

func (f registrarFederation) Delete(ctx context.Context, td spiffeid.TrustDomain) error {
	_, err := f.r.DeleteBundle(ctx, td)
	return err
}
