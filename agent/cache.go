package agent

import (
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// cache is the agent's identity cache: the entries (indexed for matching), one SVID per entry
// shared by every caller entitled to it, and the open subscriptions grouped by selector set.
//
// Callers with the same selector set (every stream of one Envoy, every process of one service
// user) form one group: its View is built once per change and published to all its
// subscriptions, so the cost of a change is per group, not per stream, and a new stream of a
// known caller costs a map lookup.
//
// Locking: mu guards everything below it. Minting (the only slow step) happens outside mu,
// deduplicated per entry by minting. Changes (entries, bundle, rotation) are applied by one
// goroutine at a time (the agent's updater); Subscribe runs concurrently with them.
//
// Partial groups: a subscriber that names the SPIFFE IDs it needs first (workload.Need; an
// SDS stream serves one secret, a bundle-only call needs none) waits only for those SVIDs. Its group is registered with a
// Partial View and queued for the background minter, one goroutine for the whole cache that
// mints the rest one SVID at a time, only while no foreground mint runs (a caller waiting for
// its first secret always goes first), then publishes the complete View. A group never goes
// from complete back to Partial.
type cache struct {
	log    *slog.Logger
	minter Minter
	now    func() time.Time
	// onMint and onRotate are hooks for metrics; never nil.
	onMint   func(d time.Duration, err error)
	onRotate func()

	mu      sync.Mutex
	index   *entry.Index
	bundles []*workload.Bundle // the own trust domain's (setBundles)
	// fed is the federated bundles and the trust domains given to every caller
	// (setFederation, federation.go); a group's View gets those its entries federate with.
	fed     federation.Snapshot
	svids   map[string]*workload.SVID // entry ID → current SVID
	minting map[string]chan struct{}  // entry ID → closed when an in-flight mint ends
	groups  map[string]*group         // entry.SelectorKey(selectors) → group
	// subGroup is each open subscription's group.
	subGroup map[*workload.Subscription]*group
	// rotate is called (outside mu) with an entry ID when its SVID is due for re-minting.
	scheduleRotation func(entryID string, at time.Time)

	// fgMints counts foreground mint calls in progress; fgIdle is signalled (with mu) when it
	// drops to zero, and on stop.
	fgMints int
	fgIdle  *sync.Cond
	// bgQueue holds the Partial groups waiting for the background minter, oldest first, each
	// once (group.queued); bgRunning says whether the minter goroutine runs. It is started on
	// demand and exits when the queue is empty, so an idle agent holds no goroutine for it.
	bgQueue   []*group
	bgRunning bool
	bgWG      sync.WaitGroup
	// stopped is set by stop: nothing more is queued, and subscribers get complete Views.
	stopped bool
}

type group struct {
	key       string
	selectors []entry.Selector
	entries   []entry.Entry  // matched, in Index.Match order
	view      *workload.View // Partial until the background minter completes it
	subs      map[*workload.Subscription]Reattester
	queued    bool // in cache.bgQueue
}

func newCache(log *slog.Logger, m Minter, now func() time.Time) *cache {
	c := &cache{
		log:              log,
		minter:           m,
		now:              now,
		onMint:           func(time.Duration, error) {},
		onRotate:         func() {},
		index:            entry.NewIndex(),
		svids:            make(map[string]*workload.SVID),
		minting:          make(map[string]chan struct{}),
		groups:           make(map[string]*group),
		subGroup:         make(map[*workload.Subscription]*group),
		scheduleRotation: func(string, time.Time) {},
	}
	c.fgIdle = sync.NewCond(&c.mu)
	return c
}

// stop ends background minting and waits for the minter goroutine to exit (a mint in progress
// finishes first). Groups still Partial stay so; subscribers from now on get complete Views.
// Idempotent.
func (c *cache) stop() {
	c.mu.Lock()
	c.stopped = true
	c.fgIdle.Broadcast()
	c.mu.Unlock()
	c.bgWG.Wait()
}

// needsDigest reports whether a caller with these selectors (attested without its binary's
// digest) must have its binary hashed: whether an entry with a unix:sha256 selector could
// match it on its other selectors (entry.Index.NeedsDigest).
func (c *cache) needsDigest(sel []entry.Selector) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.index.NeedsDigest(sel)
}

// load replaces the whole entry set (at start).
func (c *cache) load(entries []entry.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		c.index.Put(e)
	}
}

// setBundles replaces the own trust domain's bundles and republishes every group.
func (c *cache) setBundles(b []*workload.Bundle) { c.republish(func() { c.bundles = b }) }

// republish runs set with c.mu held, then rebuilds every group's View and publishes those
// that changed.
func (c *cache) republish(set func()) {
	c.mu.Lock()
	set()
	all := make([]*group, 0, len(c.groups))
	for _, g := range c.groups {
		all = append(all, g)
	}
	c.mu.Unlock()
	c.refresh(all)
}

// Reattester attests a subscription's caller again, with the binary's digest: used when an
// entry with a unix:sha256 selector appears that the caller, attested without the digest,
// could match on its other selectors. It fails if the caller now runs another binary than
// when it connected.
type Reattester func() ([]entry.Selector, error)

// subscribe returns a subscription for a caller with the given (normalized) selectors, holding
// its current View. reattest and onClose may be nil; onClose runs once when the subscription
// is closed. wanted comes from the workload.Need of Watch: nil means the first View is complete;
// otherwise it may be Partial, holding at least the SVIDs of the wanted IDs the caller is
// entitled to (every entry granting one of them is minted first, so a Partial View serves the
// same SVID the complete one will), and the rest are minted in the background.
func (c *cache) subscribe(selectors []entry.Selector, wanted []spiffeid.ID, reattest Reattester, onClose func()) (*workload.Subscription, error) {
	for {
		c.mu.Lock()
		g, view, missing := c.groupForLocked(selectors, wanted)
		if missing == nil {
			var sub *workload.Subscription
			sub = workload.NewSubscription(view, func() {
				c.unsubscribe(sub)
				if onClose != nil {
					onClose()
				}
			})
			c.joinLocked(g, sub, reattest)
			c.mu.Unlock()
			return sub, nil
		}
		c.mu.Unlock()
		if err := c.mint(missing); err != nil {
			return nil, err
		}
	}
}

// groupForLocked returns the group for selectors (a new one, not yet registered, if none
// exists) with its current View, or the entries whose SVIDs must be minted first. An existing
// group's View can be behind (a rotation not yet refreshed): whoever notices first publishes
// it to everyone, so refresh never skips a stale stream. wanted is as in subscribe.
func (c *cache) groupForLocked(selectors []entry.Selector, wanted []spiffeid.ID) (*group, *workload.View, []entry.Entry) {
	key := entry.SelectorKey(selectors)
	g, ok := c.groups[key]
	if !ok {
		g = &group{key: key, selectors: selectors, subs: make(map[*workload.Subscription]Reattester)}
		g.entries = c.index.Match(selectors)
	}
	switch {
	case wanted == nil:
	case c.stopped:
		wanted = nil // no background minter would complete it
	case ok && !g.view.Partial:
		wanted = nil // never turn a complete group Partial again
	case ok:
		// The group's streams hold these SVIDs already: a new Partial View must keep them.
		wanted = append(slices.Clip(wanted), c.heldLocked(g)...)
	}
	view, missing := c.buildViewLocked(g, wanted)
	if missing != nil {
		return nil, nil, missing
	}
	if ok {
		if viewEqual(g.view, view) {
			// Nothing changed: hand out the View the group's streams already hold, so the
			// encodings the front-ends memoize on it (View.Memo) are shared by every stream
			// of the group, not rebuilt for each new one.
			view = g.view
		} else {
			for s := range g.subs {
				s.Publish(view)
			}
		}
	}
	g.view = view
	return g, view, nil
}

// heldLocked returns the SPIFFE IDs of the SVIDs a Partial group's View holds (non-nil, maybe
// empty), which a new Partial View of it must hold too; nil if g's View is complete or the
// cache is stopped (nothing would complete a Partial View then). c.mu must be held.
func (c *cache) heldLocked(g *group) []spiffeid.ID {
	if g.view == nil || !g.view.Partial || c.stopped {
		return nil
	}
	ids := make([]spiffeid.ID, 0, len(g.view.SVIDs))
	for _, s := range g.view.SVIDs {
		ids = append(ids, s.ID)
	}
	return ids
}

// joinLocked adds sub to g, registering g if it is new, and queues g for the background
// minter if its View is Partial.
func (c *cache) joinLocked(g *group, sub *workload.Subscription, reattest Reattester) {
	if c.groups[g.key] != g {
		c.groups[g.key] = g
	}
	g.subs[sub] = reattest
	c.subGroup[sub] = g
	if g.view.Partial {
		c.enqueueLocked(g)
	}
}

func (c *cache) unsubscribe(sub *workload.Subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leaveLocked(sub)
}

func (c *cache) leaveLocked(sub *workload.Subscription) {
	g := c.subGroup[sub]
	if g == nil {
		return
	}
	delete(c.subGroup, sub)
	delete(g.subs, sub)
	if len(g.subs) == 0 && c.groups[g.key] == g {
		delete(c.groups, g.key)
	}
}

// move re-homes an open subscription into the group for selectors and publishes its View
// there; a closed subscription is left alone.
func (c *cache) move(sub *workload.Subscription, selectors []entry.Selector) error {
	for {
		c.mu.Lock()
		old := c.subGroup[sub]
		if old == nil || old.key == entry.SelectorKey(selectors) {
			c.mu.Unlock()
			return nil
		}
		g, view, missing := c.groupForLocked(selectors, nil)
		if missing == nil {
			reattest := old.subs[sub]
			c.leaveLocked(sub)
			c.joinLocked(g, sub, reattest)
			sub.Publish(view)
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
		if err := c.mint(missing); err != nil {
			return err
		}
	}
}

// reattest attests the open subscriptions of gs again (with the digest) and moves each to its
// new group. Called by the updater when an entry with a unix:sha256 selector appears that
// these groups' callers could match but for their digest.
func (c *cache) reattest(gs []*group) {
	type pending struct {
		sub      *workload.Subscription
		reattest Reattester
	}
	var todo []pending
	c.mu.Lock()
	for _, g := range gs {
		for sub, r := range g.subs {
			if r != nil {
				todo = append(todo, pending{sub, r})
			}
		}
	}
	c.mu.Unlock()
	for _, p := range todo {
		sel, err := p.reattest()
		if err != nil {
			// The caller is gone, over its hashing budget, or runs another binary than it
			// connected with (never re-attested into that one's identities): its stream
			// keeps what it was given at connect.
			c.log.Debug("re-attestation failed", "error", err)
			continue
		}
		if err := c.move(p.sub, sel); err != nil {
			c.log.Error("moving a stream after re-attestation failed", "error", err)
		}
	}
}

// buildViewLocked builds g's View from the current SVIDs, or returns the entries whose SVIDs
// must be minted first. With wanted nil the View is complete: every missing entry is
// returned. Otherwise only the missing entries granting a wanted ID are, and when there are
// none the View may be Partial (other entries still missing): it holds the SVIDs of the
// wanted IDs, i.e. what the group's streams asked for, not whatever else happens to be
// ready, so that a stream joining for an identity the group holds gets the group's View as
// it is instead of publishing a new one to every stream. c.mu must be held.
func (c *cache) buildViewLocked(g *group, wanted []spiffeid.ID) (*workload.View, []entry.Entry) {
	var missing []int // indexes in g.entries: an Entry is large, a big group's copies add up
	v := &workload.View{SVIDs: make([]*workload.SVID, 0, len(g.entries))}
	now := c.now()
	for i, e := range g.entries {
		// Two entries may grant the same SPIFFE ID (different selector sets); serve it once,
		// from the first of them. Match orders entries by SPIFFE ID: they are adjacent.
		dup := i > 0 && g.entries[i-1].SPIFFEID == e.SPIFFEID
		s := c.svids[e.ID]
		if !svidCurrent(s, e, now) {
			missing = append(missing, i)
			continue
		}
		if !dup {
			v.SVIDs = append(v.SVIDs, s)
		}
	}
	if missing == nil {
		if len(v.SVIDs) > 0 {
			v.Bundles = c.bundlesForLocked(g)
		}
		return v, nil
	}
	var first []entry.Entry
	for _, i := range missing {
		if wanted == nil || slices.Contains(wanted, g.entries[i].SPIFFEID) {
			first = append(first, g.entries[i])
		}
	}
	if first != nil {
		return nil, first
	}
	kept := v.SVIDs[:0]
	for _, s := range v.SVIDs {
		if slices.Contains(wanted, s.ID) {
			kept = append(kept, s)
		}
	}
	v.SVIDs = kept
	// Entitled to something (missing is not empty), so the bundles are the caller's already.
	v.Partial = true
	v.Bundles = c.bundlesForLocked(g)
	return v, nil
}

// mintWorkers bounds the mints one call of mint runs at once. A variable for benchmarks.
var mintWorkers = func() int { return 2 * runtime.GOMAXPROCS(0) }

// bgRetryDelay is how long a group whose background mint failed waits before it is tried
// again. A variable for tests.
var bgRetryDelay = time.Second

// apply applies one committed store change and pushes the new Views of the groups it affects.
func (c *cache) apply(ch store.Change) {
	c.mu.Lock()
	switch ch.Op {
	case store.OpDelete:
		c.index.Delete(ch.Entry.ID)
		delete(c.svids, ch.Entry.ID)
	default:
		c.index.Put(ch.Entry)
	}
	var affected, undigested []*group
	for _, g := range c.groups {
		switch {
		case entry.Matches(ch.Entry, g.selectors) || (ch.Op == store.OpUpdate && entry.Matches(ch.Old, g.selectors)):
			g.entries = c.index.Match(g.selectors)
			affected = append(affected, g)
		case ch.Op != store.OpDelete && !hasDigest(g.selectors) && entry.NeedsDigestFor(ch.Entry, g.selectors):
			// Attested without the digest (none was needed then): only the digest can tell.
			undigested = append(undigested, g)
		}
	}
	c.mu.Unlock()
	c.refresh(affected)
	if len(undigested) > 0 {
		c.reattest(undigested)
	}
}

// hasDigest reports whether a caller's selectors include its binary's digest.
func hasDigest(sel []entry.Selector) bool {
	for _, s := range sel {
		if s.Type == entry.TypeUnix && strings.HasPrefix(s.Value, "sha256:") {
			return true
		}
	}
	return false
}

// refresh rebuilds and publishes the Views of gs, minting what is missing first. A Partial
// group stays Partial: only the SVIDs its streams hold are minted first (an entry of theirs
// changed), the rest is still the background minter's, so a change reaches every stream
// without waiting for SVIDs nobody has asked for yet.
func (c *cache) refresh(gs []*group) {
	for len(gs) > 0 {
		var retry []*group
		var missing []entry.Entry
		c.mu.Lock()
		for _, g := range gs {
			if c.groups[g.key] != g {
				continue // closed meanwhile
			}
			v, m := c.buildViewLocked(g, c.heldLocked(g))
			if v != nil && v.Partial {
				c.enqueueLocked(g) // new entries may have come: make sure someone mints them
			}
			if m != nil {
				missing = append(missing, m...)
				retry = append(retry, g)
				continue
			}
			if viewEqual(g.view, v) {
				continue
			}
			g.view = v
			for sub := range g.subs {
				sub.Publish(v)
			}
		}
		c.mu.Unlock()
		if len(missing) > 0 {
			if err := c.mint(missing); err != nil {
				c.log.Error("minting for changed entries failed", "error", err)
				return
			}
		}
		gs = retry
	}
}

// viewEqual reports whether two Views hold the same SVIDs and bundles (by identity: they are
// immutable, so a re-minted SVID or a new bundle is a new pointer) and are both Partial or
// both complete.
func viewEqual(a, b *workload.View) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Partial == b.Partial && slices.Equal(a.SVIDs, b.SVIDs) && slices.Equal(a.Bundles, b.Bundles)
}

// stats is a snapshot for status and metrics.
type stats struct {
	Entries, Groups, Streams, SVIDs int
}

func (c *cache) stats() stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := stats{Entries: c.index.Len(), Groups: len(c.groups), SVIDs: len(c.svids)}
	for _, g := range c.groups {
		st.Streams += len(g.subs)
	}
	return st
}

// heldIdentity is one SVID the cache holds and how many open streams hold it.
type heldIdentity struct {
	SVID    *workload.SVID
	Streams int
}

// identities lists every SVID currently held, by SPIFFE ID then entry ID.
func (c *cache) identities() []heldIdentity {
	c.mu.Lock()
	defer c.mu.Unlock()
	streams := make(map[string]int, len(c.svids))
	for _, g := range c.groups {
		for _, e := range g.entries {
			streams[e.ID] += len(g.subs)
		}
	}
	out := make([]heldIdentity, 0, len(c.svids))
	for id, s := range c.svids {
		out = append(out, heldIdentity{SVID: s, Streams: streams[id]})
	}
	slices.SortFunc(out, func(a, b heldIdentity) int {
		if c := strings.Compare(a.SVID.ID.String(), b.SVID.ID.String()); c != 0 {
			return c
		}
		return strings.Compare(a.SVID.EntryID, b.SVID.EntryID)
	})
	return out
}

// entitledIDs returns the SPIFFE IDs a caller with these selectors holds, in View order (the
// default first), without duplicates.
func (c *cache) entitledIDs(sel []entry.Selector) []spiffeid.ID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []spiffeid.ID
	for _, e := range c.index.Match(sel) {
		if !slices.Contains(out, e.SPIFFEID) {
			out = append(out, e.SPIFFEID)
		}
	}
	return out
}
