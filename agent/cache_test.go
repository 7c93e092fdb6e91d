package agent

import (
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// fakeMinter mints SVID values without certificates: the cache only looks at IDs and times.
// Real minting is covered by package ca and the end-to-end tests.
type fakeMinter struct {
	now    func() time.Time
	ttl    time.Duration
	serial atomic.Int64
	mints  sync.Map // spiffe ID string → *atomic.Int64
	fail   atomic.Bool
	// failID, when set, is the one SPIFFE ID whose mint fails.
	failID string
	// delay makes each mint take that long; inflight and maxInflight count concurrent mints.
	delay                 time.Duration
	inflight, maxInflight atomic.Int64
	// gate, when set, is called first by every mint: a test blocks in it to hold mints back.
	gate func(id spiffeid.ID)
	// started counts mints begun (before gate).
	started atomic.Int64
}

func (m *fakeMinter) MintX509SVID(id spiffeid.ID, ttl time.Duration, _ []string) (*workload.SVID, error) {
	m.started.Add(1)
	if m.gate != nil {
		m.gate(id)
	}
	n := m.inflight.Add(1)
	defer m.inflight.Add(-1)
	for {
		old := m.maxInflight.Load()
		if n <= old || m.maxInflight.CompareAndSwap(old, n) {
			break
		}
	}
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	if m.fail.Load() || id.String() == m.failID {
		return nil, fmt.Errorf("minter broken")
	}
	if ttl == 0 {
		ttl = m.ttl
	}
	c, _ := m.mints.LoadOrStore(id.String(), new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
	now := m.now()
	return &workload.SVID{ID: id, NotBefore: now, NotAfter: now.Add(ttl), Serial: fmt.Sprint(m.serial.Add(1))}, nil
}

func (m *fakeMinter) count(id string) int64 {
	c, ok := m.mints.Load(id)
	if !ok {
		return 0
	}
	return c.(*atomic.Int64).Load()
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var td = spiffeid.RequireTrustDomainFromString("example.org")

func mkEntry(t *testing.T, id, spiffe string, rev int64, sels ...string) entry.Entry {
	t.Helper()
	s, err := entry.ParseSelectors(sels)
	if err != nil {
		t.Fatal(err)
	}
	return entry.Entry{ID: id, SPIFFEID: spiffeid.RequireFromString(spiffe), Selectors: s, Revision: rev}
}

func sels(t *testing.T, ss ...string) []entry.Selector {
	t.Helper()
	s, err := entry.ParseSelectors(ss)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newTestCache(t *testing.T) (*cache, *fakeMinter, *clock) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := &fakeMinter{now: clk.now, ttl: time.Hour}
	c := newCache(slog.New(slog.DiscardHandler), m, clk.now)
	c.bundles = []*workload.Bundle{{TrustDomain: td, Sequence: 1}}
	return c, m, clk
}

// seen remembers, per subscription, the sequence number (plus one) of the last View that
// latest returned: what a reader of the subscription has already received.
var seen sync.Map // *workload.Subscription → uint64

// latest returns the newest View of s if the test has not received it yet (through latest),
// or nil if nothing new was published since.
func latest(s *workload.Subscription) *workload.View {
	v, seq := s.LatestSeq()
	if prev, ok := seen.Load(s); ok && prev.(uint64) == seq+1 {
		return nil
	}
	seen.Store(s, seq+1)
	return v
}

func ids(v *workload.View) []string {
	var out []string
	for _, s := range v.SVIDs {
		out = append(out, s.ID.String())
	}
	return out
}

func TestSubscribeMatchesAndOrders(t *testing.T) {
	c, _, _ := newTestCache(t)
	c.load([]entry.Entry{
		mkEntry(t, "e2", "spiffe://example.org/web", 1, "unix:uid:1000"),
		mkEntry(t, "e1", "spiffe://example.org/api", 1, "unix:uid:1000", "unix:gid:1000"),
		mkEntry(t, "e3", "spiffe://example.org/other", 1, "unix:uid:2000"),
		mkEntry(t, "e4", "spiffe://example.org/needs-path", 1, "unix:uid:1000", "unix:path:/usr/bin/envoy"),
	})
	sub, err := c.subscribe(sels(t, "unix:uid:1000", "unix:gid:1000", "unix:path:/bin/sh"), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	v := latest(sub)
	got := ids(v)
	want := []string{"spiffe://example.org/api", "spiffe://example.org/web"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("SVIDs = %v, want %v (ordered by SPIFFE ID, others' entries excluded)", got, want)
	}
	if len(v.Bundles) != 1 {
		t.Fatalf("bundles = %d, want 1", len(v.Bundles))
	}
}

func TestUnentitledGetsEmptyViewThenPush(t *testing.T) {
	c, _, _ := newTestCache(t)
	sub, err := c.subscribe(sels(t, "unix:uid:3000"), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	v := latest(sub)
	if !v.Empty() || len(v.Bundles) != 0 {
		t.Fatalf("unentitled caller got %v SVIDs and %d bundles, want nothing", ids(v), len(v.Bundles))
	}
	e := mkEntry(t, "e1", "spiffe://example.org/late", 1, "unix:uid:3000")
	c.apply(store.Change{Op: store.OpCreate, Entry: e})
	v = latest(sub)
	if v == nil || fmt.Sprint(ids(v)) != "[spiffe://example.org/late]" {
		t.Fatalf("after entry created: view %v, want the new SVID pushed", v)
	}
}

func TestOneMintPerEntryAcrossStreams(t *testing.T) {
	c, m, _ := newTestCache(t)
	c.load([]entry.Entry{mkEntry(t, "e1", "spiffe://example.org/web", 1, "unix:uid:1000")})
	var wg sync.WaitGroup
	subs := make([]*workload.Subscription, 200)
	for i := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Different callers (extra selectors) that share the entry: still one SVID.
			s, err := c.subscribe(sels(t, "unix:uid:1000", fmt.Sprintf("unix:gid:%d", i%7)), nil, nil, nil)
			if err != nil {
				t.Error(err)
				return
			}
			subs[i] = s
		}()
	}
	wg.Wait()
	if n := m.count("spiffe://example.org/web"); n != 1 {
		t.Fatalf("minted %d times for 200 streams, want 1", n)
	}
	first := latest(subs[0]).SVIDs[0]
	views := map[string]*workload.View{} // selector key → the View its streams hold
	for i, s := range subs {
		v := s.Latest()
		if v.SVIDs[0] != first {
			t.Fatalf("stream %d holds a different SVID", i)
		}
		// Streams of one caller share one View (and what front-ends memoize on it).
		key := fmt.Sprint(i % 7)
		if w, ok := views[key]; ok && w != v {
			t.Fatalf("stream %d holds another View than its caller's other streams", i)
		}
		views[key] = v
	}
	for _, s := range subs {
		s.Close()
	}
	if st := c.stats(); st.Groups != 0 || st.Streams != 0 {
		t.Fatalf("after closing every stream: %+v, want no groups or streams left", st)
	}
}

func TestChangesReachOnlyAffectedStreams(t *testing.T) {
	c, _, _ := newTestCache(t)
	a := mkEntry(t, "a", "spiffe://example.org/a", 1, "unix:uid:1000")
	b := mkEntry(t, "b", "spiffe://example.org/b", 1, "unix:uid:2000")
	c.load([]entry.Entry{a, b})
	subA, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
	subB, _ := c.subscribe(sels(t, "unix:uid:2000"), nil, nil, nil)
	defer subA.Close()
	defer subB.Close()
	latest(subA)
	latest(subB)

	// Update a (new DNS name → new revision) → only A gets a new View, with a new SVID.
	old := subA.Latest().SVIDs[0]
	a2 := a
	a2.Revision = 2
	a2.DNSNames = []string{"a.example"}
	c.apply(store.Change{Op: store.OpUpdate, Entry: a2, Old: a})
	if v := latest(subA); v == nil || v.SVIDs[0] == old {
		t.Fatalf("update of a: stream A got %v, want a re-minted SVID", v)
	}
	if v := latest(subB); v != nil {
		t.Fatalf("update of a reached stream B: %v", ids(v))
	}

	// Move b to uid 1000: B loses it, A gains it.
	b2 := b
	b2.Revision = 2
	b2.Selectors = sels(t, "unix:uid:1000")
	c.apply(store.Change{Op: store.OpUpdate, Entry: b2, Old: b})
	if v := latest(subA); v == nil || fmt.Sprint(ids(v)) != "[spiffe://example.org/a spiffe://example.org/b]" {
		t.Fatalf("stream A after move: %v", v)
	}
	if v := latest(subB); v == nil || !v.Empty() {
		t.Fatalf("stream B after move: %v, want empty", v)
	}

	// Delete a.
	c.apply(store.Change{Op: store.OpDelete, Entry: a2})
	if v := latest(subA); v == nil || fmt.Sprint(ids(v)) != "[spiffe://example.org/b]" {
		t.Fatalf("stream A after delete: %v", v)
	}
}

func TestRotation(t *testing.T) {
	c, m, clk := newTestCache(t)
	var scheduled []time.Time
	c.scheduleRotation = func(_ string, at time.Time) { scheduled = append(scheduled, at) }
	e := mkEntry(t, "e1", "spiffe://example.org/web", 1, "unix:uid:1000")
	c.load([]entry.Entry{e})
	sub, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
	first := latest(sub).SVIDs[0]
	if len(scheduled) != 1 {
		t.Fatalf("scheduled %d rotations, want 1", len(scheduled))
	}
	frac := float64(first.RotateAt.Sub(first.NotBefore)) / float64(first.NotAfter.Sub(first.NotBefore))
	if frac < 0.45 || frac > 0.55 {
		t.Fatalf("rotation at %.2f of lifetime, want 0.45..0.55", frac)
	}

	c.rotate("e1") // not yet due: nothing
	if v := latest(sub); v != nil {
		t.Fatal("rotation before RotateAt pushed a new View")
	}
	clk.add(first.RotateAt.Sub(clk.now()))
	c.rotate("e1")
	v := latest(sub)
	if v == nil || v.SVIDs[0] == first || !v.SVIDs[0].NotAfter.After(first.NotAfter) {
		t.Fatalf("rotation did not push a fresh SVID: %v", v)
	}
	if n := m.count("spiffe://example.org/web"); n != 2 {
		t.Fatalf("minted %d, want 2", n)
	}

	// Nobody holds it any more: at the next rotation it is dropped, not re-minted.
	sub.Close()
	clk.add(time.Hour)
	c.rotate("e1")
	if n := m.count("spiffe://example.org/web"); n != 2 {
		t.Fatalf("unused SVID re-minted (mints=%d)", n)
	}
	if st := c.stats(); st.SVIDs != 0 {
		t.Fatalf("unused SVID kept: %+v", st)
	}
}

func TestRotationFailureKeepsServing(t *testing.T) {
	c, m, clk := newTestCache(t)
	var retries []time.Time
	c.scheduleRotation = func(_ string, at time.Time) { retries = append(retries, at) }
	c.load([]entry.Entry{mkEntry(t, "e1", "spiffe://example.org/web", 1, "unix:uid:1000")})
	sub, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
	defer sub.Close()
	first := latest(sub).SVIDs[0]
	clk.add(first.RotateAt.Sub(clk.now()))
	m.fail.Store(true)
	c.rotate("e1")
	if v := latest(sub); v != nil {
		t.Fatal("failed rotation published a View")
	}
	if len(retries) != 2 || !retries[1].After(clk.now()) {
		t.Fatalf("failed rotation not retried later: %v", retries)
	}
}

func TestBundleChangeRepublishes(t *testing.T) {
	c, _, _ := newTestCache(t)
	c.load([]entry.Entry{mkEntry(t, "e1", "spiffe://example.org/web", 1, "unix:uid:1000")})
	sub, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
	defer sub.Close()
	latest(sub)
	nb := &workload.Bundle{TrustDomain: td, Sequence: 2}
	c.setBundles([]*workload.Bundle{nb})
	v := latest(sub)
	if v == nil || v.Bundles[0] != nb {
		t.Fatalf("bundle change not pushed: %v", v)
	}
}

func TestRotationTime(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(time.Hour)
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{
		{0, 27 * time.Minute},
		{0.5, 30 * time.Minute},
		{0.999999, 33 * time.Minute},
	} {
		got := workload.RotateAt(nb, na, tc.r).Sub(nb).Round(time.Second)
		if got != tc.want {
			t.Errorf("RotateAt(r=%v) = %v after NotBefore, want %v", tc.r, got, tc.want)
		}
	}
}

// TestDigestEntryReattestsOpenStreams: a caller attested without its digest (no entry needed
// it then) has no digest selector; when an entry appears that it could match on its other
// selectors, its open streams are attested again (with the digest) and the matching one
// receives the SVID without reconnecting.
func TestDigestEntryReattestsOpenStreams(t *testing.T) {
	c, _, _ := newTestCache(t)
	digest := "unix:sha256:" + strings.Repeat("ab", 32)
	var reattested atomic.Int32
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), nil, func() ([]entry.Selector, error) {
		reattested.Add(1)
		return sels(t, "unix:uid:1000", digest), nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	other, _ := c.subscribe(sels(t, "unix:uid:2000"), nil, func() ([]entry.Selector, error) {
		return sels(t, "unix:uid:2000", "unix:sha256:"+strings.Repeat("cd", 32)), nil
	}, nil)
	defer other.Close()
	latest(sub)
	latest(other)

	c.apply(store.Change{Op: store.OpCreate, Entry: mkEntry(t, "d", "spiffe://example.org/pinned", 1, digest)})
	if reattested.Load() != 1 {
		t.Fatalf("re-attested %d times, want once", reattested.Load())
	}
	if v := latest(sub); v == nil || fmt.Sprint(ids(v)) != "[spiffe://example.org/pinned]" {
		t.Fatalf("open stream after the digest entry appeared: %v", v)
	}
	if v := latest(other); v != nil && !v.Empty() {
		t.Fatalf("a caller with another digest got %v", ids(v))
	}
	// A second digest entry does not re-attest again: the streams hold their digests now.
	c.apply(store.Change{Op: store.OpCreate, Entry: mkEntry(t, "d2", "spiffe://example.org/pinned2", 1, digest)})
	if reattested.Load() != 1 {
		t.Fatalf("re-attested again on a second digest entry")
	}
	if st := c.stats(); st.Streams != 2 {
		t.Fatalf("streams = %d after moves, want 2", st.Streams)
	}
}

// TestManyEntriesMintedConcurrently: a caller entitled to many identities gets its first View
// after about one mint's time per worker share, not the sum of every mint; every entry is
// still minted once however many streams of that caller arrive together, and the first View
// is complete.
func TestManyEntriesMintedConcurrently(t *testing.T) {
	c, m, _ := newTestCache(t)
	m.delay = 20 * time.Millisecond
	const n = 16
	var es []entry.Entry
	for i := range n {
		es = append(es, mkEntry(t, fmt.Sprintf("e%02d", i), fmt.Sprintf("spiffe://example.org/w/%02d", i), 1, "unix:uid:1000"))
	}
	c.load(es)

	start := time.Now()
	var wg sync.WaitGroup
	subs := make([]*workload.Subscription, 8)
	for i := range subs {
		wg.Go(func() {
			s, err := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
			if err != nil {
				t.Error(err)
				return
			}
			subs[i] = s
		})
	}
	wg.Wait()
	took := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}
	for i, s := range subs {
		if got := len(s.Latest().SVIDs); got != n {
			t.Fatalf("stream %d: first View holds %d SVIDs, want all %d", i, got, n)
		}
		s.Close()
	}
	for _, e := range es {
		if got := m.count(e.SPIFFEID.String()); got != 1 {
			t.Fatalf("%s minted %d times, want once", e.SPIFFEID, got)
		}
	}
	if got := m.maxInflight.Load(); got < 2 || got > int64(mintWorkers()) {
		t.Fatalf("at most %d mints ran at once, want 2..%d", got, mintWorkers())
	}
	// Sequential would be n×delay = 320 ms; with at least two workers it is at most half.
	if seq := n * m.delay; took > seq*3/4 {
		t.Fatalf("first View after %v, sequential minting takes %v: not minted concurrently", took, seq)
	}
}

// TestConcurrentMintFailure: when one of a caller's SVIDs cannot be minted, subscribe fails
// (no partial View is published) and the other mints are not left running or lost.
func TestConcurrentMintFailure(t *testing.T) {
	c, m, _ := newTestCache(t)
	m.delay = time.Millisecond
	var es []entry.Entry
	for i := range 12 {
		es = append(es, mkEntry(t, fmt.Sprintf("e%02d", i), fmt.Sprintf("spiffe://example.org/w/%02d", i), 1, "unix:uid:1000"))
	}
	c.load(es)
	m.failID = "spiffe://example.org/w/05"
	if sub, err := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil); err == nil {
		sub.Close()
		t.Fatal("subscribe succeeded although one SVID could not be minted")
	} else if !strings.Contains(err.Error(), "spiffe://example.org/w/05") {
		t.Fatalf("error %q does not name the failing identity", err)
	}
	if got := m.inflight.Load(); got != 0 {
		t.Fatalf("%d mints still running after subscribe returned", got)
	}
	if st := c.stats(); st.Groups != 0 || st.Streams != 0 {
		t.Fatalf("failed subscribe left %+v", st)
	}
	// The minter recovers: the next subscribe completes, reusing what was minted.
	m.failID = ""
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if got := len(sub.Latest().SVIDs); got != len(es) {
		t.Fatalf("View holds %d SVIDs, want %d", got, len(es))
	}
	for _, e := range es {
		if got := m.count(e.SPIFFEID.String()); got != 1 && e.SPIFFEID.String() != "spiffe://example.org/w/05" {
			t.Fatalf("%s minted %d times, want once", e.SPIFFEID, got)
		}
	}
}

// manyEntries loads n entries for uid 1000, spiffe://example.org/w/00 … and returns them.
func manyEntries(t *testing.T, c *cache, n int) []entry.Entry {
	t.Helper()
	var es []entry.Entry
	for i := range n {
		es = append(es, mkEntry(t, fmt.Sprintf("e%02d", i), fmt.Sprintf("spiffe://example.org/w/%02d", i), 1, "unix:uid:1000"))
	}
	c.load(es)
	return es
}

func wid(s string) spiffeid.ID { return spiffeid.RequireFromString("spiffe://example.org/" + s) }

// holdMints makes every mint of an ID not in pass wait until the returned release is called
// (or 3 s have passed, so that a broken cache fails the test instead of hanging it).
func holdMints(m *fakeMinter, pass ...string) (release func()) {
	ch := make(chan struct{})
	m.gate = func(id spiffeid.ID) {
		if !slices.Contains(pass, id.String()) {
			select {
			case <-ch:
			case <-time.After(3 * time.Second):
			}
		}
	}
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// waitView waits up to 5 s for sub's newest View to be one for which ok is true and returns it.
func waitView(t *testing.T, sub *workload.Subscription, what string, ok func(*workload.View) bool) *workload.View {
	t.Helper()
	wake := make(chan struct{}, 1)
	v, seq := sub.LatestSeq()
	sub.OnPublish(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}, seq)
	timeout := time.After(5 * time.Second)
	for !ok(v) {
		select {
		case <-wake:
			v = sub.Latest()
		case <-timeout:
			t.Fatalf("no %s View within 5s; latest: partial=%v %v", what, v.Partial, ids(v))
		}
	}
	return v
}

func complete(v *workload.View) bool { return !v.Partial }

// TestWantedFirst: a subscriber naming the identity it needs gets it after that one mint,
// while the caller's other SVIDs are still pending; a second subscriber wanting the same
// identity joins the Partial group at once; one wanting another identity mints only that in
// the foreground; every subscription then receives the complete View, with the very SVIDs the
// Partial Views held, each entry minted once.
func TestWantedFirst(t *testing.T) {
	c, m, _ := newTestCache(t)
	defer c.stop()
	es := manyEntries(t, c, 10)
	release := holdMints(m, "spiffe://example.org/w/03", "spiffe://example.org/w/07")
	defer release()
	sel := sels(t, "unix:uid:1000")

	sub1, err := c.subscribe(sel, []spiffeid.ID{wid("w/03")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub1.Close()
	if n := m.serial.Load(); n != 1 {
		t.Fatalf("%d mints done when the first View was returned, want 1 (the wanted one)", n)
	}
	v1 := latest(sub1)
	if !v1.Partial || fmt.Sprint(ids(v1)) != "[spiffe://example.org/w/03]" || len(v1.Bundles) != 1 || v1.Empty() {
		t.Fatalf("first View: partial=%v SVIDs %v, %d bundles; want Partial with w/03 and the bundle", v1.Partial, ids(v1), len(v1.Bundles))
	}

	sub2, err := c.subscribe(sel, []spiffeid.ID{wid("w/03")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if v := sub2.Latest(); v != v1 || m.serial.Load() != 1 {
		t.Fatalf("second subscriber: View %p (group's %p), %d mints; want the group's View, no mint", v, v1, m.serial.Load())
	}

	sub3, err := c.subscribe(sel, []spiffeid.ID{wid("w/07")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub3.Close()
	v3 := latest(sub3)
	if !v3.Partial || fmt.Sprint(ids(v3)) != "[spiffe://example.org/w/03 spiffe://example.org/w/07]" || v3.SVIDs[0] != v1.SVIDs[0] {
		t.Fatalf("third subscriber: partial=%v %v; want Partial [w/03 w/07], the same w/03", v3.Partial, ids(v3))
	}
	if v := latest(sub1); v != v3 {
		t.Fatal("the group's other streams did not get its new Partial View")
	}
	if st := c.stats(); st.Groups != 1 || st.Streams != 3 {
		t.Fatalf("stats %+v, want one group of 3 streams", st)
	}

	release()
	for i, sub := range []*workload.Subscription{sub1, sub2, sub3} {
		v := waitView(t, sub, "complete", complete)
		if len(v.SVIDs) != len(es) || v.SVIDs[3] != v1.SVIDs[0] || v.SVIDs[7] != v3.SVIDs[1] {
			t.Fatalf("stream %d: complete View %v, want all %d with the Partial Views' SVIDs", i, ids(v), len(es))
		}
	}
	for _, e := range es {
		if n := m.count(e.SPIFFEID.String()); n != 1 {
			t.Fatalf("%s minted %d times, want once", e.SPIFFEID, n)
		}
	}
	// Complete now: a new subscriber with a hint gets the complete View, never a Partial one.
	sub4, err := c.subscribe(sel, []spiffeid.ID{wid("w/01")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub4.Close()
	if v := sub4.Latest(); v.Partial || len(v.SVIDs) != len(es) {
		t.Fatalf("subscriber after completion: partial=%v, %d SVIDs", v.Partial, len(v.SVIDs))
	}
}

// TestWantedHints: what the first View is for each kind of hint.
func TestWantedHints(t *testing.T) {
	for _, tc := range []struct {
		name        string
		wanted      []spiffeid.ID
		wantPartial bool
		wantIDs     string
	}{
		{"no hint: complete", nil, false, "10 SVIDs"},
		{"bundles only: nothing minted first", []spiffeid.ID{}, true, "[]"},
		{"not entitled to the wanted ID", []spiffeid.ID{wid("other")}, true, "[]"},
		{"two wanted", []spiffeid.ID{wid("w/09"), wid("w/02")}, true, "[spiffe://example.org/w/02 spiffe://example.org/w/09]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, m, _ := newTestCache(t)
			defer c.stop()
			manyEntries(t, c, 10)
			release := holdMints(m, "spiffe://example.org/w/02", "spiffe://example.org/w/09")
			if tc.wanted == nil {
				release() // a complete first View needs every mint
			}
			defer release()
			sub, err := c.subscribe(sels(t, "unix:uid:1000"), tc.wanted, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			v := sub.Latest()
			got := fmt.Sprint(ids(v))
			if len(v.SVIDs) == 10 {
				got = "10 SVIDs"
			}
			if v.Partial != tc.wantPartial || got != tc.wantIDs || len(v.Bundles) != 1 || v.Empty() {
				t.Fatalf("first View: partial=%v %s, %d bundles; want partial=%v %s and the bundle", v.Partial, got, len(v.Bundles), tc.wantPartial, tc.wantIDs)
			}
			release()
			if v := waitView(t, sub, "complete", complete); len(v.SVIDs) != 10 {
				t.Fatalf("complete View holds %d SVIDs", len(v.SVIDs))
			}
		})
	}
}

// TestWantedIDFromTwoEntries: when two entries grant the wanted ID, both are minted first,
// so the Partial View serves the SVID of the first entry, the one the complete View serves.
func TestWantedIDFromTwoEntries(t *testing.T) {
	c, m, _ := newTestCache(t)
	defer c.stop()
	c.load([]entry.Entry{
		mkEntry(t, "a", "spiffe://example.org/web", 1, "unix:uid:1000"),
		mkEntry(t, "b", "spiffe://example.org/web", 1, "unix:uid:1000", "unix:gid:1000"),
		mkEntry(t, "c", "spiffe://example.org/zzz", 1, "unix:uid:1000"),
	})
	release := holdMints(m, "spiffe://example.org/web")
	defer release()
	sub, err := c.subscribe(sels(t, "unix:uid:1000", "unix:gid:1000"), []spiffeid.ID{wid("web")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	v := sub.Latest()
	if !v.Partial || fmt.Sprint(ids(v)) != "[spiffe://example.org/web]" || m.count("spiffe://example.org/web") != 2 {
		t.Fatalf("first View partial=%v %v after %d mints of web; want Partial [web], both entries minted", v.Partial, ids(v), m.count("spiffe://example.org/web"))
	}
	release()
	full := waitView(t, sub, "complete", complete)
	if full.SVIDs[0] != v.SVIDs[0] {
		t.Fatalf("complete View serves %s from entry %s, the Partial one from %s", full.SVIDs[0].ID, full.SVIDs[0].EntryID, v.SVIDs[0].EntryID)
	}
}

// TestNoHintJoinsPartialGroup: a subscriber without a hint (the Workload API) joining a
// Partial group waits for every SVID, and the group's other streams get the complete View too.
func TestNoHintJoinsPartialGroup(t *testing.T) {
	c, m, _ := newTestCache(t)
	defer c.stop()
	manyEntries(t, c, 6)
	release := holdMints(m, "spiffe://example.org/w/00")
	defer release()
	sel := sels(t, "unix:uid:1000")
	sds, err := c.subscribe(sel, []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sds.Close()
	done := make(chan *workload.Subscription)
	go func() {
		s, err := c.subscribe(sel, nil, nil, nil)
		if err != nil {
			t.Error(err)
		}
		done <- s
	}()
	select {
	case <-done:
		t.Fatal("subscriber without a hint returned while SVIDs were still missing")
	case <-time.After(50 * time.Millisecond):
	}
	release()
	wl := <-done
	if wl == nil {
		t.FailNow()
	}
	defer wl.Close()
	if v := wl.Latest(); v.Partial || len(v.SVIDs) != 6 {
		t.Fatalf("subscriber without a hint: partial=%v %v", v.Partial, ids(v))
	}
	waitView(t, sds, "complete", complete)
}

// TestBackgroundYieldsToForeground: while a foreground mint runs, the background minter does
// not start one.
func TestBackgroundYieldsToForeground(t *testing.T) {
	c, m, _ := newTestCache(t)
	defer c.stop()
	manyEntries(t, c, 8)
	c.load([]entry.Entry{mkEntry(t, "other", "spiffe://example.org/other", 1, "unix:uid:2000")})
	held := make(chan struct{})
	m.gate = func(id spiffeid.ID) {
		if id.String() == "spiffe://example.org/other" {
			select {
			case <-held:
			case <-time.After(3 * time.Second):
			}
		}
	}
	fg := make(chan error)
	go func() {
		s, err := c.subscribe(sels(t, "unix:uid:2000"), nil, nil, nil)
		if err == nil {
			s.Close()
		}
		fg <- err
	}()
	for m.started.Load() == 0 { // the foreground mint is under way (and held)
		time.Sleep(time.Millisecond)
	}
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), []spiffeid.ID{wid("w/05")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	time.Sleep(50 * time.Millisecond)
	if n := m.started.Load(); n != 2 {
		t.Fatalf("%d mints started while a foreground mint was running, want 2 (both foreground)", n)
	}
	close(held)
	if err := <-fg; err != nil {
		t.Fatal(err)
	}
	if v := waitView(t, sub, "complete", complete); len(v.SVIDs) != 8 {
		t.Fatalf("complete View holds %d SVIDs", len(v.SVIDs))
	}
}

// TestBackgroundAfterEntryChanges: entries deleted while the background minter works are
// neither minted nor served; a closed Partial group is not completed.
func TestBackgroundAfterEntryChanges(t *testing.T) {
	t.Run("entry deleted", func(t *testing.T) {
		c, m, _ := newTestCache(t)
		defer c.stop()
		es := manyEntries(t, c, 6)
		release := holdMints(m, "spiffe://example.org/w/00")
		defer release()
		sub, err := c.subscribe(sels(t, "unix:uid:1000"), []spiffeid.ID{wid("w/00")}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		// The background minter is held in w/01's mint; w/04 is still ahead of it.
		for m.started.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		applied := make(chan struct{})
		go func() {
			c.apply(store.Change{Op: store.OpDelete, Entry: es[4]})
			close(applied)
		}()
		time.Sleep(20 * time.Millisecond)
		release()
		<-applied
		v := waitView(t, sub, "complete", complete)
		if slices.Contains(ids(v), "spiffe://example.org/w/04") || len(v.SVIDs) != 5 {
			t.Fatalf("complete View %v still serves the deleted entry (or lacks others)", ids(v))
		}
		if n := m.count("spiffe://example.org/w/04"); n != 0 {
			t.Fatalf("deleted entry minted %d times", n)
		}
		if st := c.stats(); st.SVIDs != 5 {
			t.Fatalf("%d SVIDs held, want 5", st.SVIDs)
		}
		// Whoever still holds the deleted entry in a list of work (the background minter's
		// snapshot of a group) does not mint it.
		if err := c.mintOne(es[4], false); err != nil || m.count("spiffe://example.org/w/04") != 0 {
			t.Fatalf("mintOne of a deleted entry: err %v, %d mints", err, m.count("spiffe://example.org/w/04"))
		}
	})
	t.Run("group closed", func(t *testing.T) {
		c, m, _ := newTestCache(t)
		defer c.stop()
		manyEntries(t, c, 6)
		release := holdMints(m, "spiffe://example.org/w/00")
		defer release()
		sub, err := c.subscribe(sels(t, "unix:uid:1000"), []spiffeid.ID{wid("w/00")}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for m.started.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		sub.Close()
		release()
		waitIdle(t, c)
		// w/00 in the foreground, w/01 the mint in flight when the group closed: no more.
		if n := m.started.Load(); n != 2 {
			t.Fatalf("%d mints after the group closed, want 2", n)
		}
	})
}

// waitIdle waits up to 5 s for the background minter to exit.
func waitIdle(t *testing.T, c *cache) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		running := c.bgRunning
		c.mu.Unlock()
		if !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("background minter still running after 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBackgroundMintFailureRetried: a background mint that fails leaves the group Partial
// (its streams keep what they have) and is tried again.
func TestBackgroundMintFailureRetried(t *testing.T) {
	defer func(d time.Duration) { bgRetryDelay = d }(bgRetryDelay)
	bgRetryDelay = 20 * time.Millisecond
	c, m, _ := newTestCache(t)
	defer c.stop()
	manyEntries(t, c, 4)
	var failing atomic.Bool
	failing.Store(true)
	m.gate = func(id spiffeid.ID) {
		if id.String() == "spiffe://example.org/w/02" && failing.Load() {
			m.fail.Store(true)
		} else {
			m.fail.Store(false)
		}
	}
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for m.started.Load() < 5 { // w/00, w/01, w/02 failed, retried at least once
		time.Sleep(time.Millisecond)
	}
	if v := sub.Latest(); !v.Partial {
		t.Fatal("group completed although an SVID could not be minted")
	}
	failing.Store(false)
	if v := waitView(t, sub, "complete", complete); len(v.SVIDs) != 4 {
		t.Fatalf("complete View holds %d SVIDs", len(v.SVIDs))
	}
}

// TestStopWithBackgroundPending: stop waits for the mint in flight, then the minter goroutine
// is gone and nothing more is minted; later subscribers get complete Views.
func TestStopWithBackgroundPending(t *testing.T) {
	c, m, _ := newTestCache(t)
	manyEntries(t, c, 10)
	release := holdMints(m, "spiffe://example.org/w/00")
	defer release()
	before := runtime.NumGoroutine()
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for m.started.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() { c.stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("stop returned while a background mint was in flight")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}
	if n := m.started.Load(); n != 2 {
		t.Fatalf("%d mints, want 2: nothing after stop", n)
	}
	if v := sub.Latest(); !v.Partial {
		t.Fatal("Partial group completed after stop")
	}
	// The minter goroutine is gone (give the runtime a moment to reap it).
	deadline := time.Now().Add(time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines after stop, %d before the subscription", n, before)
	}
	// After stop a hint no longer makes a Partial View: nothing would complete it.
	other, err := c.subscribe(sels(t, "unix:uid:1000", "unix:gid:5"), []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if v := other.Latest(); v.Partial || len(v.SVIDs) != 10 {
		t.Fatalf("subscriber after stop: partial=%v, %d SVIDs", v.Partial, len(v.SVIDs))
	}
	c.stop() // idempotent
}

// TestRefreshKeepsPartialGroup: a change reaching a Partial group (a bundle rotation, an
// entry update) is published at once as a new Partial View, without waiting for the SVIDs the
// background minter still owes; an updated entry whose SVID the group holds is re-minted
// first. The complete View then carries the change.
func TestRefreshKeepsPartialGroup(t *testing.T) {
	c, m, _ := newTestCache(t)
	defer c.stop()
	es := manyEntries(t, c, 5)
	release := holdMints(m, "spiffe://example.org/w/00")
	defer release()
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	first := latest(sub)

	nb := &workload.Bundle{TrustDomain: td, Sequence: 2}
	c.setBundles([]*workload.Bundle{nb}) // returns although the other mints are held
	v := latest(sub)
	if v == nil || !v.Partial || fmt.Sprint(ids(v)) != "[spiffe://example.org/w/00]" || v.SVIDs[0] != first.SVIDs[0] || v.Bundles[0] != nb {
		t.Fatalf("after a bundle change: %v, want a Partial View with the same w/00 and the new bundle", v)
	}

	up := es[0]
	up.Revision = 2
	up.DNSNames = []string{"w0.example"}
	c.apply(store.Change{Op: store.OpUpdate, Entry: up, Old: es[0]})
	v = latest(sub)
	if v == nil || !v.Partial || len(v.SVIDs) != 1 || v.SVIDs[0] == first.SVIDs[0] || v.SVIDs[0].EntryRevision != 2 {
		t.Fatalf("after updating the held entry: %v, want a Partial View with w/00 re-minted", v)
	}
	updated := v.SVIDs[0]

	release()
	v = waitView(t, sub, "complete", complete)
	if len(v.SVIDs) != 5 || v.SVIDs[0] != updated || v.Bundles[0] != nb {
		t.Fatalf("complete View: %v, want all 5 with the updated w/00 and the new bundle", ids(v))
	}
	for i := 1; i < 5; i++ {
		if n := m.count(fmt.Sprintf("spiffe://example.org/w/%02d", i)); n != 1 {
			t.Fatalf("w/%02d minted %d times", i, n)
		}
	}
}

// TestJoinPartialGroupQuietly: a stream joining a Partial group for an identity it holds gets
// the group's View as it is, and the group's other streams get nothing, although the
// background minter has made other SVIDs ready meanwhile (they wait for the complete View).
func TestJoinPartialGroupQuietly(t *testing.T) {
	c, m, _ := newTestCache(t)
	defer c.stop()
	manyEntries(t, c, 6)
	release := holdMints(m, "spiffe://example.org/w/00", "spiffe://example.org/w/01", "spiffe://example.org/w/02")
	defer release()
	sel := sels(t, "unix:uid:1000")
	sub1, err := c.subscribe(sel, []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub1.Close()
	v1 := latest(sub1)
	for m.started.Load() < 4 { // w/00, then w/01 and w/02 ready, the minter held in w/03
		time.Sleep(time.Millisecond)
	}
	sub2, err := c.subscribe(sel, []spiffeid.ID{wid("w/00")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if v := sub2.Latest(); v != v1 {
		t.Fatalf("joining stream got %v, want the group's View %v", ids(v), ids(v1))
	}
	if v := latest(sub1); v != nil {
		t.Fatalf("a join published %v to the group's other stream", ids(v))
	}
}
