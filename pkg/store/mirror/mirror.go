// Package mirror keeps a host's local SQLite copy of a shared registry (store "etcd") and
// serves from it: reads, Watch and readiness never depend on the registry being reachable,
// writes go to the registry and fail at once, saying so, while it is not. When the registry
// is back the copy catches up (the registry store resumes from its revision, or reloads after
// a compaction) without a restart.
//
// A host copies only the registry's entries that can match on it (entry.CanMatchNode with
// its node name and groups), and keeps its own entries (the config file's, Name set) beside
// them: those are never written to the registry, and the copy's sync never removes or
// replaces them. A registry entry with the same (SPIFFE ID, selector set) as one of the
// host's own is not copied while that one exists (one warning), and is copied when it goes.
package mirror

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
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
	// CheckEvery is how often a reachable registry is probed (default 5 s, each wait
	// lengthened by up to a quarter at random so that a fleet's probes spread out); an
	// unreachable one is probed every min(CheckEvery, 1 s) so that a host catches up soon
	// after it is back. A probe or a write waits at most Timeout (default 2 s). Between
	// probes reachability follows the traffic the host has anyway: a call to the registry
	// that times out marks it unreachable at once, one that succeeds or a change delivered
	// by its watch marks it reachable, and a registry that reports its connection (the
	// optional interface{ Connected() bool }, which etcdstore implements) is checked every
	// min(CheckEvery, 1 s) at no cost to it.
	CheckEvery, Timeout time.Duration
	// WriteTimeout bounds a write (default 5 s): longer than a probe's Timeout because a
	// write caught by an etcd leader's death waits for the election (1 s by etcd's default
	// election timeout, more under load) and the registry's retry on another member; a
	// write that times out marks the registry unreachable, failing the writes after it.
	WriteTimeout time.Duration
	// NodeName and NodeGroups are the host's (agent.node_name, node_groups): only the
	// registry's entries that can match on this host are copied (entry.CanMatchNode).
	NodeName   string
	NodeGroups []string
	Logger     *slog.Logger
}

// Mirror is a store.Store: reads from Local, writes to the registry. Safe for concurrent use.
type Mirror struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	remote    store.Store // nil until Run connects
	reachable bool
	since     time.Time // when reachable last changed
	// progress is the registry's Progress as of the last call while connected.
	delivered, lastChange int64
	// applyMu orders a full sync, changes from the registry's Watch and writes of the
	// host's own entries (Own).
	applyMu sync.Mutex
	// shadowed holds the registry entries in scope that are not copied because one of the
	// host's own entries has their (SPIFFE ID, selector set), by ID (guarded by applyMu).
	shadowed map[string]entry.Entry
}

// New validates cfg. Run connects and follows.
func New(cfg Config) (*Mirror, error) {
	if cfg.Local == nil || cfg.Open == nil {
		return nil, errors.New("mirror: Local and Open are required")
	}
	if cfg.CheckEvery <= 0 {
		// Each probe is a read etcd answers; at 1 s, a thousand hosts' probes were most of
		// an idle cluster's CPU (docs/BENCHMARKS.md, "Fleet registry").
		cfg.CheckEvery = 5 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	m := &Mirror{cfg: cfg, log: cfg.Logger, since: time.Now(), shadowed: make(map[string]entry.Entry)}
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

// progresser is what a registry store may report of how far its Watch has delivered
// (etcdstore does).
type progresser interface {
	Progress() (delivered, lastChange int64)
}

// Progress says how far this host's copy has followed the registry: every change up to
// revision delivered is in the copy, and lastChange is the revision of the newest entry change
// among them. Both are 0 before the copy was first brought up to date; while the registry is
// unreachable they stay where the copy is.
func (m *Mirror) Progress() (delivered, lastChange int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.remote.(progresser); ok {
		m.delivered, m.lastChange = p.Progress()
	}
	return m.delivered, m.lastChange
}

// heard marks the registry reachable when its watch delivers a change (a commit the
// cluster made), once follow has connected.
func (m *Mirror) heard() {
	m.mu.Lock()
	following := m.remote != nil
	m.mu.Unlock()
	if following {
		m.setReachable(true)
	}
}

// answered records what a call to the registry says about reachability: a call that timed
// out (and whose caller had not given up) marks it unreachable at once, so that the next
// writes fail without waiting for the probe; one that succeeded marks it reachable.
func (m *Mirror) answered(ctx, cctx context.Context, err error) (timedOut bool) {
	switch {
	case err == nil:
		m.setReachable(true)
	case ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded):
		m.setReachable(false)
		return true
	}
	return false
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
		case <-time.After(min(m.cfg.CheckEvery, time.Second)):
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
	t := time.NewTicker(min(m.cfg.CheckEvery, time.Second))
	defer t.Stop()
	conn, _ := remote.(connected)
	next := time.Now().Add(m.probeWait())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if conn != nil && !conn.Connected() {
			m.setReachable(false)
			continue
		}
		if ok, _ := m.Status(); ok && time.Now().Before(next) {
			continue
		}
		pctx, pcancel := context.WithTimeout(ctx, m.cfg.Timeout)
		err := remote.Ping(pctx)
		pcancel()
		if ctx.Err() != nil {
			return nil
		}
		m.setReachable(err == nil)
		next = time.Now().Add(m.probeWait())
	}
}

// connected is implemented by a registry store that knows, without asking the registry,
// whether its connection is up (etcdstore: the gRPC connection's state).
type connected interface{ Connected() bool }

// snapshotter is implemented by a registry store that holds every entry in memory
// (etcdstore: read by Open, kept current by its watch). The full sync takes the entries from
// it rather than reading and decoding every entry from the registry a second time right
// after Open did: about 15 % of a joining host's CPU with 10,000 entries. The entries are as
// of the revision returned, and every change after it reaches the store's watchers, which
// the mirror has registered before the sync.
type snapshotter interface {
	Snapshot() (entries []entry.Entry, revision int64)
}

// probeWait is the wait before the next probe of a reachable registry: CheckEvery plus up to
// a quarter more, so that hosts started together do not probe together.
func (m *Mirror) probeWait() time.Duration {
	return m.cfg.CheckEvery + rand.N(m.cfg.CheckEvery/4+1)
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

// inScope reports whether a registry entry can match on this host, i.e. belongs in the copy.
func (m *Mirror) inScope(e entry.Entry) bool {
	return entry.CanMatchNode(e, m.cfg.NodeName, m.cfg.NodeGroups)
}

// sync makes the copy equal to the registry's entries in scope: what the copy holds that is
// not one of them (deleted while this host was away, or moved to other hosts) is removed, the
// rest copied. The host's own entries are left as they are.
func (m *Mirror) sync(ctx context.Context, remote store.Store) (err error) {
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	var all []entry.Entry
	if snap, ok := remote.(snapshotter); ok {
		all, _ = snap.Snapshot()
	} else if all, err = remote.ListEntries(ctx, store.Filter{}); err != nil {
		return fmt.Errorf("reading the registry: %w", err)
	}
	have, err := m.cfg.Local.ListEntries(ctx, store.Filter{})
	if err != nil {
		return fmt.Errorf("reading this host's copy: %w", err)
	}
	want := make([]entry.Entry, 0, len(all))
	keep := make(map[string]entry.Entry, len(all))
	for _, e := range all {
		if m.inScope(e) {
			e.Name = "" // registry entries have none; a name would make it look like the host's own
			want = append(want, e)
			keep[e.ID] = e
		}
	}
	var removes []string
	for _, e := range have {
		if _, ok := keep[e.ID]; !ok && e.Name == "" {
			removes = append(removes, e.ID)
		}
	}
	for id := range m.shadowed {
		if _, ok := keep[id]; !ok {
			delete(m.shadowed, id)
		}
	}
	current := make(map[string]entry.Entry, len(have))
	for _, e := range have {
		current[e.ID] = e
	}
	puts := make([]entry.Entry, 0, len(want))
	for _, e := range want {
		if c, ok := current[e.ID]; ok && c.Revision == e.Revision && c.UpdatedAt.Equal(e.UpdatedAt) {
			continue
		}
		puts = append(puts, e)
	}
	// One transaction: a host joining a registry of 10,000 entries commits once, not 10,000
	// times (each a disk sync). Only if one of them collides with the host's own entries is
	// the sync done entry by entry, so that the rest are still copied (put records the
	// shadowed ones).
	err = m.cfg.Local.Apply(ctx, puts, removes)
	switch {
	case errors.Is(err, store.ErrOwnEntry):
		if err := m.cfg.Local.Apply(ctx, nil, removes); err != nil {
			return err
		}
		for _, e := range puts {
			if err := m.put(ctx, e); err != nil {
				return err
			}
		}
	case err != nil:
		return err
	default:
		for _, e := range puts {
			m.unshadow(e)
		}
	}
	m.log.Info("registry copy up to date", "entries", len(want), "registry_entries", len(all), "shadowed_by_own_entries", len(m.shadowed))
	return nil
}

// put copies a registry entry, or records it as shadowed when one of the host's own entries
// holds its (SPIFFE ID, selector set), warning once. m.applyMu must be held.
func (m *Mirror) put(ctx context.Context, e entry.Entry) error {
	err := m.cfg.Local.Put(ctx, e)
	_, was := m.shadowed[e.ID]
	switch {
	case errors.Is(err, store.ErrOwnEntry):
		// An update that now collides with an own entry: its older version, copied before,
		// must not stay served either. Unless the collision is the ID itself: then what the
		// copy holds under it is the host's own entry, which stays.
		cur, gerr := m.cfg.Local.GetEntry(ctx, e.ID)
		switch {
		case errors.Is(gerr, store.ErrNotFound):
		case gerr != nil:
			return gerr
		case cur.Name == "":
			if err := m.cfg.Local.Remove(ctx, e.ID); err != nil {
				return err
			}
		}
		if !was {
			m.log.Warn("registry entry not served on this host: one of this host's config entries has the same SPIFFE ID and selectors, and wins",
				"entry_id", e.ID, "spiffe_id", e.SPIFFEID.String(), "error", err)
		}
		m.shadowed[e.ID] = e
		return nil
	case err == nil:
		m.unshadow(e)
	}
	return err
}

// unshadow forgets that e was shadowed, once it has been copied. m.applyMu must be held.
func (m *Mirror) unshadow(e entry.Entry) {
	if _, was := m.shadowed[e.ID]; was {
		delete(m.shadowed, e.ID)
		m.log.Info("registry entry served on this host again: the config entry that shadowed it is gone", "entry_id", e.ID, "spiffe_id", e.SPIFFEID.String())
	}
}

// apply copies one change from the registry. A change older than what the copy holds (it
// was already part of a sync) is skipped. An entry updated out of this host's scope is
// removed from the copy; one updated into it is copied.
func (m *Mirror) apply(ch store.Change) {
	m.heard()
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	ctx := context.Background()
	e := ch.Entry
	e.Name = ""
	cur, err := m.cfg.Local.GetEntry(ctx, e.ID)
	have := err == nil
	if have && cur.Name != "" {
		// An ID of the host's own: never the registry's to change. The registry's entry is
		// kept as shadowed, so that its latest version is copied once the own entry goes.
		if ch.Op == store.OpDelete || !m.inScope(e) {
			delete(m.shadowed, e.ID)
		} else {
			m.shadowed[e.ID] = e
		}
		return
	}
	if sh, ok := m.shadowed[e.ID]; ok && !have {
		cur, have = sh, true
	}
	newer := !have || cur.Revision < e.Revision
	switch {
	case ch.Op == store.OpDelete || !m.inScope(e):
		if have && cur.Revision > e.Revision {
			return
		}
		delete(m.shadowed, e.ID)
		err = m.cfg.Local.Remove(ctx, e.ID)
	case !newer:
		return
	default:
		err = m.put(ctx, e)
	}
	if err != nil {
		m.log.Error("copying a registry change", "op", ch.Op.String(), "entry_id", e.ID, "error", err)
	}
}

// restoreShadowed copies the shadowed registry entries that no own entry holds any more.
// m.applyMu must be held.
func (m *Mirror) restoreShadowed(ctx context.Context) {
	for _, e := range m.shadowed {
		if err := m.put(ctx, e); err != nil {
			m.log.Error("copying a registry entry no longer shadowed", "entry_id", e.ID, "error", err)
		}
	}
}

// Own writes the host's own entries (the config file's, Name set) into the copy only: never
// to the registry, and whether or not it is reachable. The agent's config reconciliation
// uses it. An own entry with the same (SPIFFE ID, selector set) as a copied registry entry
// replaces it in the copy (the registry entry is shadowed, and copied again when the own
// entry goes or changes).
func (m *Mirror) Own() *Own { return &Own{m: m} }

// Own is the writer Mirror.Own returns.
type Own struct{ m *Mirror }

var errUnnamed = errors.New("mirror: the host's own entries are the config file's and have a name")

// CreateEntry creates e (Name set) in the copy.
func (o *Own) CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	if e.Name == "" {
		return entry.Entry{}, errUnnamed
	}
	return o.write(ctx, e, func() (entry.Entry, error) { return o.m.cfg.Local.CreateEntry(ctx, e) })
}

// UpdateEntry updates the own entry e.ID (Name set) in the copy.
func (o *Own) UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	if e.Name == "" {
		return entry.Entry{}, errUnnamed
	}
	return o.write(ctx, e, func() (entry.Entry, error) { return o.m.cfg.Local.UpdateEntry(ctx, e) })
}

// DeleteEntry deletes the own entry id from the copy.
func (o *Own) DeleteEntry(ctx context.Context, id string) (entry.Entry, error) {
	o.m.applyMu.Lock()
	defer o.m.applyMu.Unlock()
	cur, err := o.m.cfg.Local.GetEntry(ctx, id)
	if err != nil {
		return entry.Entry{}, err
	}
	if cur.Name == "" {
		return entry.Entry{}, fmt.Errorf("mirror: entry %s is the registry's, not this host's own", id)
	}
	out, err := o.m.cfg.Local.DeleteEntry(ctx, id)
	if err == nil {
		o.m.restoreShadowed(ctx)
	}
	return out, err
}

// write runs a create or update of an own entry; a copied registry entry holding e's
// (SPIFFE ID, selector set) gives way to it.
func (o *Own) write(ctx context.Context, e entry.Entry, do func() (entry.Entry, error)) (entry.Entry, error) {
	m := o.m
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	out, err := do()
	if errors.Is(err, store.ErrAlreadyExists) {
		held, herr := m.cfg.Local.ListEntries(ctx, store.Filter{SPIFFEID: e.SPIFFEID, Selectors: e.Selectors})
		if herr != nil {
			return entry.Entry{}, herr
		}
		key := entry.SelectorKey(entry.Normalize(e.Selectors))
		for _, h := range held {
			if h.Name != "" || entry.SelectorKey(h.Selectors) != key {
				continue
			}
			if err := m.cfg.Local.Remove(ctx, h.ID); err != nil {
				return entry.Entry{}, err
			}
			m.shadowed[h.ID] = h
			m.log.Warn("registry entry not served on this host: config entry "+e.Name+" has the same SPIFFE ID and selectors, and wins",
				"entry_id", h.ID, "spiffe_id", h.SPIFFEID.String())
			out, err = do()
		}
	}
	if err == nil {
		m.restoreShadowed(ctx) // an update may have freed another's selectors
	}
	return out, err
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

// write runs fn against the registry within WriteTimeout. A timeout marks the registry
// unreachable at once, so the next writes fail without waiting.
func (m *Mirror) write(ctx context.Context, fn func(ctx context.Context, r store.Store) (entry.Entry, error)) (entry.Entry, error) {
	r, err := m.writable()
	if err != nil {
		return entry.Entry{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, m.cfg.WriteTimeout)
	defer cancel()
	e, err := fn(wctx, r)
	if errors.Is(err, store.ErrReadOnly) {
		// Refused by the registry, which answered: reachable, and the caller is told why.
		return entry.Entry{}, err
	}
	if m.answered(ctx, wctx, err) {
		return entry.Entry{}, fmt.Errorf("%w; the write may not have been applied (%w): %v", ErrUnreachable, store.ErrUnavailable, err)
	}
	return e, err
}

// CreateEntry creates e in the registry; when it can match on this host it is in this host's
// copy when the call returns.
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

// Fleet returns the entries as an operator sees them (the admin API): the Mirror, but
// GetEntry and ListEntries read the whole registry, not only the entries that can match on
// this host, so that an entry registered for another host can be shown, changed and deleted
// from any host (as SPIRE's entry show lists every entry of its server). The host's own
// entries are included. While the registry is unreachable they read this host's copy.
func (m *Mirror) Fleet() store.Store { return fleet{m} }

type fleet struct{ *Mirror }

// GetEntry reads this host's copy, then the registry.
func (f fleet) GetEntry(ctx context.Context, id string) (entry.Entry, error) {
	e, err := f.cfg.Local.GetEntry(ctx, id)
	if !errors.Is(err, store.ErrNotFound) {
		return e, err
	}
	r, rerr := f.writable()
	if rerr != nil {
		return e, err
	}
	rctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	re, rerr := r.GetEntry(rctx, id)
	if errors.Is(rerr, store.ErrNotFound) {
		f.answered(ctx, rctx, nil) // an answer
	} else {
		f.answered(ctx, rctx, rerr)
	}
	if rerr != nil {
		return e, err
	}
	return re, nil
}

// ListEntries reads the registry and this host's own entries, or the copy.
func (f fleet) ListEntries(ctx context.Context, flt store.Filter) ([]entry.Entry, error) {
	r, err := f.writable()
	if err != nil {
		return f.cfg.Local.ListEntries(ctx, flt)
	}
	rctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	out, err := r.ListEntries(rctx, flt)
	f.answered(ctx, rctx, err)
	if err != nil {
		f.log.Warn("listing the registry failed; listing this host's copy", "error", err)
		return f.cfg.Local.ListEntries(ctx, flt)
	}
	local, err := f.cfg.Local.ListEntries(ctx, flt)
	if err != nil {
		return nil, err
	}
	for _, e := range local {
		if e.Name != "" {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b entry.Entry) int {
		return cmp.Or(strings.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()), strings.Compare(a.ID, b.ID))
	})
	return out, nil
}

// Watch follows this host's copy, which changes as the registry does.
func (m *Mirror) Watch(fn func(store.Change)) (cancel func()) { return m.cfg.Local.Watch(fn) }

// Ping checks this host's copy: a host serves while the registry is away.
func (m *Mirror) Ping(ctx context.Context) error { return m.cfg.Local.Ping(ctx) }

// Close closes the local copy (Run owns the registry connection and ends with its ctx).
func (m *Mirror) Close() error { return m.cfg.Local.Close() }

// Federated bundles are served from the local copy, readable and writable whether or not
// etcd is reachable; the fleet shares fetched ones through etcd separately (pkg/fleet's
// SharedBundles writes bundles/ and every host takes the shared copy into this one).

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
