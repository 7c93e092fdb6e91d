package agent

import (
	"fmt"
	"log/slog"
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
}

func (m *fakeMinter) MintX509SVID(id spiffeid.ID, ttl time.Duration, _ []string) (*workload.SVID, error) {
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

// latest drains the subscription and returns the newest View, or nil if none is pending.
func latest(s *workload.Subscription) *workload.View {
	var v *workload.View
	for {
		select {
		case v = <-s.Updates():
		default:
			return v
		}
	}
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
	sub, err := c.subscribe(sels(t, "unix:uid:1000", "unix:gid:1000", "unix:path:/bin/sh"), nil, nil)
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
	sub, err := c.subscribe(sels(t, "unix:uid:3000"), nil, nil)
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
			s, err := c.subscribe(sels(t, "unix:uid:1000", fmt.Sprintf("unix:gid:%d", i%7)), nil, nil)
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
	subA, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil)
	subB, _ := c.subscribe(sels(t, "unix:uid:2000"), nil, nil)
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
	sub, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil)
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
	sub, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil)
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
	sub, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil)
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
		got := rotationTime(nb, na, tc.r).Sub(nb).Round(time.Second)
		if got != tc.want {
			t.Errorf("rotationTime(r=%v) = %v after NotBefore, want %v", tc.r, got, tc.want)
		}
	}
}

// TestDigestEntryReattestsOpenStreams: a caller attested before any entry used unix:sha256 has
// no digest selector; when such an entry appears, open streams are attested again (with the
// digest) and the matching one receives the SVID without reconnecting.
func TestDigestEntryReattestsOpenStreams(t *testing.T) {
	c, _, _ := newTestCache(t)
	digest := "unix:sha256:" + strings.Repeat("ab", 32)
	var reattested atomic.Int32
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), func() ([]entry.Selector, error) {
		reattested.Add(1)
		return sels(t, "unix:uid:1000", digest), nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	other, _ := c.subscribe(sels(t, "unix:uid:2000"), func() ([]entry.Selector, error) {
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
	// A second digest entry does not re-attest again (the flag only flips once).
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
			s, err := c.subscribe(sels(t, "unix:uid:1000"), nil, nil)
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
	if sub, err := c.subscribe(sels(t, "unix:uid:1000"), nil, nil); err == nil {
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
	sub, err := c.subscribe(sels(t, "unix:uid:1000"), nil, nil)
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
