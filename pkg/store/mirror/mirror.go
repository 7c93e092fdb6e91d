// Package mirror keeps a host's local SQLite copy of a shared registry (store "etcd") and
// serves from it: reads, Watch and readiness never depend on the registry being reachable,
// writes go to the registry and fail at once, saying so, while it is not. When the registry
// is back the copy catches up (the registry store resumes from its revision, or reloads after
// a compaction) without a restart.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

var _ store.Store = (*Mirror)(nil)

// ErrUnreachable is returned by writes while the registry cannot be reached, together with
// store.ErrUnavailable (the admin API answers 503). Nothing was written.
var ErrUnreachable = errors.New("the registry (etcd) is unreachable")

// Config configures New.
type Config struct {
	// Local is this host's copy; Close closes it.
	Local *store.SQLite
	// Open connects to the registry; Run retries it until it succeeds. The registry's Watch
	// must report every write by any instance (etcdstore does).
	Open func(ctx context.Context) (store.Store, error)
	// CheckEvery is how often reachability is probed (default 1 s); a probe or a write
	// waits at most Timeout (default 2 s).
	CheckEvery, Timeout time.Duration
	Logger              *slog.Logger
}

// Mirror is a store.Store: reads from Local, writes to the registry. Safe for concurrent use.
type Mirror struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	remote    store.Store // nil until Run connects
	reachable bool
	since     time.Time // when reachable last changed
	// applyMu orders a full sync against changes from the registry's Watch.
	applyMu sync.Mutex
}

// New validates cfg. Run connects and follows.
func New(cfg Config) (*Mirror, error) {
	if cfg.Local == nil || cfg.Open == nil {
		return nil, errors.New("mirror: Local and Open are required")
	}
	if cfg.CheckEvery <= 0 {
		cfg.CheckEvery = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	m := &Mirror{cfg: cfg, log: cfg.Logger, since: time.Now()}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	return m, nil
}

// Status says whether the registry is reachable, and since when (or since New, before the
// first connection).
func (m *Mirror) Status() (reachable bool, since time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reachable, m.since
}

func (m *Mirror) setReachable(ok bool) {
	m.mu.Lock()
	changed := m.reachable != ok
	if changed {
		m.reachable, m.since = ok, time.Now()
	}
	m.mu.Unlock()
	if changed && ok {
		m.log.Info("registry reachable")
	} else if changed {
		m.log.Warn("registry unreachable; serving this host's copy")
	}
}

// Run connects to the registry (retrying), brings the copy up to date, follows changes and
// probes reachability until ctx ends. It returns nil on a clean stop; a failure to connect or
// to bring the copy up to date is retried, never fatal: the host serves its copy meanwhile.
func (m *Mirror) Run(ctx context.Context) error {
	for {
		remote, err := m.connect(ctx)
		if err != nil {
			return nil // ctx ended
		}
		err = m.follow(ctx, remote)
		remote.Close()
		if ctx.Err() != nil {
			return nil
		}
		m.log.Warn("bringing the registry copy up to date; retrying", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(m.cfg.CheckEvery):
		}
	}
}

// follow syncs the copy with remote, then keeps it current (remote's Watch) and probes
// reachability until ctx ends (nil) or the sync fails.
func (m *Mirror) follow(ctx context.Context, remote store.Store) error {
	cancel := remote.Watch(m.apply)
	defer cancel()
	if err := m.sync(ctx, remote); err != nil {
		return err
	}
	m.mu.Lock()
	m.remote = remote
	m.mu.Unlock()
	m.setReachable(true)
	defer func() {
		m.mu.Lock()
		m.remote = nil
		m.mu.Unlock()
	}()
	t := time.NewTicker(m.cfg.CheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			pctx, pcancel := context.WithTimeout(ctx, m.cfg.Timeout)
			err := remote.Ping(pctx)
			pcancel()
			if ctx.Err() != nil {
				return nil
			}
			m.setReachable(err == nil)
		}
	}
}

func (m *Mirror) connect(ctx context.Context) (store.Store, error) {
	wait := 100 * time.Millisecond
	for {
		octx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		remote, err := m.cfg.Open(octx)
		cancel()
		if err == nil {
			return remote, nil
		}
		m.log.Warn("connecting to the registry", "error", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// sync makes the copy equal to the registry: what the copy holds that the registry does not
// is removed (deleted while this host was away), the rest copied.
func (m *Mirror) sync(ctx context.Context, remote store.Store) error {
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	want, err := remote.ListEntries(ctx, store.Filter{})
	if err != nil {
		return fmt.Errorf("reading the registry: %w", err)
	}
	have, err := m.cfg.Local.ListEntries(ctx, store.Filter{})
	if err != nil {
		return fmt.Errorf("reading this host's copy: %w", err)
	}
	keep := make(map[string]entry.Entry, len(want))
	for _, e := range want {
		keep[e.ID] = e
	}
	for _, e := range have {
		if _, ok := keep[e.ID]; !ok {
			if err := m.cfg.Local.Remove(ctx, e.ID); err != nil {
				return err
			}
		}
	}
	current := make(map[string]entry.Entry, len(have))
	for _, e := range have {
		current[e.ID] = e
	}
	for _, e := range want {
		if c, ok := current[e.ID]; ok && c.Revision == e.Revision && c.UpdatedAt.Equal(e.UpdatedAt) {
			continue
		}
		if err := m.cfg.Local.Put(ctx, e); err != nil {
			return err
		}
	}
	m.log.Info("registry copy up to date", "entries", len(want))
	return nil
}

// apply copies one change from the registry. A change older than what the copy holds (it
// was already part of a sync) is skipped.
func (m *Mirror) apply(ch store.Change) {
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	ctx := context.Background()
	cur, err := m.cfg.Local.GetEntry(ctx, ch.Entry.ID)
	have := err == nil
	switch ch.Op {
	case store.OpDelete:
		if have && cur.Revision > ch.Entry.Revision {
			return
		}
		err = m.cfg.Local.Remove(ctx, ch.Entry.ID)
	default:
		if have && cur.Revision >= ch.Entry.Revision {
			return
		}
		err = m.cfg.Local.Put(ctx, ch.Entry)
	}
	if err != nil {
		m.log.Error("copying a registry change", "op", ch.Op.String(), "entry_id", ch.Entry.ID, "error", err)
	}
}

// writable returns the registry if it is reachable, or ErrUnreachable.
func (m *Mirror) writable() (store.Store, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.remote == nil || !m.reachable {
		return nil, fmt.Errorf("%w since %s; this host serves its copy of the entries and refuses writes until it is back (%w)",
			ErrUnreachable, m.since.UTC().Format(time.RFC3339), store.ErrUnavailable)
	}
	return m.remote, nil
}

// write runs fn against the registry within Timeout. A timeout marks the registry unreachable
// at once, so the next writes fail without waiting.
func (m *Mirror) write(ctx context.Context, fn func(ctx context.Context, r store.Store) (entry.Entry, error)) (entry.Entry, error) {
	r, err := m.writable()
	if err != nil {
		return entry.Entry{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	e, err := fn(wctx, r)
	if err != nil && ctx.Err() == nil && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		m.setReachable(false)
		return entry.Entry{}, fmt.Errorf("%w; the write may not have been applied (%w): %v", ErrUnreachable, store.ErrUnavailable, err)
	}
	return e, err
}

// CreateEntry creates e in the registry; it is in this host's copy when the call returns.
func (m *Mirror) CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	return m.write(ctx, func(ctx context.Context, r store.Store) (entry.Entry, error) { return r.CreateEntry(ctx, e) })
}

// UpdateEntry updates e in the registry.
func (m *Mirror) UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	return m.write(ctx, func(ctx context.Context, r store.Store) (entry.Entry, error) { return r.UpdateEntry(ctx, e) })
}

// DeleteEntry deletes the entry from the registry.
func (m *Mirror) DeleteEntry(ctx context.Context, id string) (entry.Entry, error) {
	return m.write(ctx, func(ctx context.Context, r store.Store) (entry.Entry, error) { return r.DeleteEntry(ctx, id) })
}

// GetEntry reads this host's copy.
func (m *Mirror) GetEntry(ctx context.Context, id string) (entry.Entry, error) {
	return m.cfg.Local.GetEntry(ctx, id)
}

// ListEntries reads this host's copy.
func (m *Mirror) ListEntries(ctx context.Context, f store.Filter) ([]entry.Entry, error) {
	return m.cfg.Local.ListEntries(ctx, f)
}

// Watch follows this host's copy, which changes as the registry does.
func (m *Mirror) Watch(fn func(store.Change)) (cancel func()) { return m.cfg.Local.Watch(fn) }

// Ping checks this host's copy: a host serves while the registry is away.
func (m *Mirror) Ping(ctx context.Context) error { return m.cfg.Local.Ping(ctx) }

// Close closes the local copy (Run owns the registry connection and ends with its ctx).
func (m *Mirror) Close() error { return m.cfg.Local.Close() }

// Federated bundles are this host's own (each host fetches its federations' bundles); they
// live in the local copy only, readable and writable whether or not etcd is reachable.

// SetBundle implements store.Store on the local copy.
func (m *Mirror) SetBundle(ctx context.Context, b store.FederatedBundle) (store.FederatedBundle, error) {
	return m.cfg.Local.SetBundle(ctx, b)
}

// GetBundle implements store.Store on the local copy.
func (m *Mirror) GetBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	return m.cfg.Local.GetBundle(ctx, td)
}

// ListBundles implements store.Store on the local copy.
func (m *Mirror) ListBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	return m.cfg.Local.ListBundles(ctx)
}

// DeleteBundle implements store.Store on the local copy.
func (m *Mirror) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	return m.cfg.Local.DeleteBundle(ctx, td)
}
