// Package storetest is a conformance suite for store.Store implementations: every store (SQLite,
// a future PostgreSQL, a test fake) runs the same behavioural tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

// Run runs the suite. open returns a new, empty store; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CRUDRoundTrip", testCRUD},
		{"DuplicateRefused", testDuplicate},
		{"NotFound", testNotFound},
		{"ListFilterAndOrder", testList},
		{"WatchInCommitOrder", testWatch},
		{"ConcurrentCreates", testConcurrentCreates},
		{"ConcurrentUpdatesWatchedInOrder", testConcurrentUpdates},
		{"ReturnedEntriesAreCallers", testOwnership},
		{"FederatesWith", testFederatesWith},
		{"Bundles", testBundles},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

func id(s string) spiffeid.ID { return spiffeid.RequireFromString("spiffe://example.org" + s) }

func td(s string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(s) }

func sels(ss ...string) []entry.Selector {
	out, err := entry.ParseSelectors(ss)
	if err != nil {
		panic(err)
	}
	return out
}

// Equal reports the first difference between two entries, or "" if they are equal.
func Equal(got, want entry.Entry) string {
	switch {
	case got.ID != want.ID:
		return fmt.Sprintf("ID %q, want %q", got.ID, want.ID)
	case got.Name != want.Name:
		return fmt.Sprintf("Name %q, want %q", got.Name, want.Name)
	case got.SPIFFEID != want.SPIFFEID:
		return fmt.Sprintf("SPIFFEID %s, want %s", got.SPIFFEID, want.SPIFFEID)
	case !slices.Equal(got.Selectors, want.Selectors):
		return fmt.Sprintf("Selectors %v, want %v", got.Selectors, want.Selectors)
	case got.X509SVIDTTL != want.X509SVIDTTL:
		return fmt.Sprintf("X509SVIDTTL %s, want %s", got.X509SVIDTTL, want.X509SVIDTTL)
	case !slices.Equal(got.DNSNames, want.DNSNames):
		return fmt.Sprintf("DNSNames %q, want %q", got.DNSNames, want.DNSNames)
	case !slices.Equal(got.FederatesWith, want.FederatesWith):
		return fmt.Sprintf("FederatesWith %v, want %v", got.FederatesWith, want.FederatesWith)
	case got.Revision != want.Revision:
		return fmt.Sprintf("Revision %d, want %d", got.Revision, want.Revision)
	case !got.CreatedAt.Equal(want.CreatedAt):
		return fmt.Sprintf("CreatedAt %s, want %s", got.CreatedAt, want.CreatedAt)
	case !got.UpdatedAt.Equal(want.UpdatedAt):
		return fmt.Sprintf("UpdatedAt %s, want %s", got.UpdatedAt, want.UpdatedAt)
	}
	return ""
}

func testCRUD(t *testing.T, s store.Store) {
	ctx := context.Background()
	before := time.Now().Add(-time.Second)
	in := entry.Entry{
		Name:     "backend",
		SPIFFEID: id("/backend"),
		// Unsorted with a duplicate: the store normalizes.
		Selectors:     []entry.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "path:/usr/bin/envoy"}, {Type: "unix", Value: "uid:1000"}},
		X509SVIDTTL:   90 * time.Minute,
		DNSNames:      []string{"backend.example.org", "*.backend.example.org"},
		FederatesWith: []spiffeid.TrustDomain{td("other.org")},
	}
	created, err := s.CreateEntry(ctx, in)
	if err != nil {
		t.Fatalf("CreateEntry: %v", err)
	}
	if created.ID == "" || created.Revision != 1 || created.CreatedAt.Before(before) || !created.UpdatedAt.Equal(created.CreatedAt) {
		t.Fatalf("CreateEntry = ID %q, Revision %d, CreatedAt %s, UpdatedAt %s; want an ID, revision 1, now, now",
			created.ID, created.Revision, created.CreatedAt, created.UpdatedAt)
	}
	want := in
	want.ID, want.Revision, want.CreatedAt, want.UpdatedAt = created.ID, 1, created.CreatedAt, created.UpdatedAt
	want.Selectors = sels("unix:path:/usr/bin/envoy", "unix:uid:1000")
	if d := Equal(created, want); d != "" {
		t.Fatalf("CreateEntry returned %s", d)
	}
	got, err := s.GetEntry(ctx, created.ID)
	if err != nil {
		t.Fatalf("GetEntry: %v", err)
	}
	if d := Equal(got, want); d != "" {
		t.Fatalf("GetEntry returned %s", d)
	}

	// Two creates get distinct IDs.
	other, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/other"), Selectors: sels("unix:uid:1")})
	if err != nil {
		t.Fatalf("CreateEntry: %v", err)
	}
	if other.ID == created.ID {
		t.Fatalf("two entries share ID %q", other.ID)
	}
	if other.DNSNames != nil || other.X509SVIDTTL != 0 || other.Name != "" {
		t.Fatalf("zero fields not kept zero: %+v", other)
	}

	time.Sleep(2 * time.Millisecond) // so UpdatedAt can differ
	upd := got
	upd.SPIFFEID = id("/backend/v2")
	upd.Selectors = sels("unix:uid:1001")
	upd.X509SVIDTTL = 0
	upd.DNSNames = nil
	upd.FederatesWith = nil
	upd.Name = ""
	upd.CreatedAt = time.Unix(1, 0) // ignored
	upd.Revision = 77               // ignored
	updated, err := s.UpdateEntry(ctx, upd)
	if err != nil {
		t.Fatalf("UpdateEntry: %v", err)
	}
	wantU := upd
	wantU.Revision, wantU.CreatedAt, wantU.UpdatedAt = 2, created.CreatedAt, updated.UpdatedAt
	if d := Equal(updated, wantU); d != "" {
		t.Fatalf("UpdateEntry returned %s", d)
	}
	if !updated.UpdatedAt.After(created.UpdatedAt) {
		t.Fatalf("UpdatedAt %s not after %s", updated.UpdatedAt, created.UpdatedAt)
	}
	if got, err := s.GetEntry(ctx, created.ID); err != nil || Equal(got, wantU) != "" {
		t.Fatalf("GetEntry after update = %v (%s)", err, Equal(got, wantU))
	}

	deleted, err := s.DeleteEntry(ctx, created.ID)
	if err != nil {
		t.Fatalf("DeleteEntry: %v", err)
	}
	if d := Equal(deleted, wantU); d != "" {
		t.Fatalf("DeleteEntry returned %s", d)
	}
	if _, err := s.GetEntry(ctx, created.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEntry after delete: err = %v, want ErrNotFound", err)
	}
	list, err := s.ListEntries(ctx, store.Filter{})
	if err != nil || len(list) != 1 || list[0].ID != other.ID {
		t.Fatalf("ListEntries after delete = %v, %v; want only %s", list, err, other.ID)
	}
}

func testDuplicate(t *testing.T, s store.Store) {
	ctx := context.Background()
	first, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/a"), Selectors: sels("unix:uid:1", "unix:gid:2")})
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/b"), Selectors: sels("unix:uid:1")})
	if err != nil {
		t.Fatal(err)
	}
	var changes int
	cancel := s.Watch(func(store.Change) { changes++ })
	defer cancel()

	// Same SPIFFE ID and the same selector set written differently.
	dup := entry.Entry{SPIFFEID: id("/a"), Name: "different", Selectors: []entry.Selector{{Type: "unix", Value: "gid:2"}, {Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:2"}}}
	if _, err := s.CreateEntry(ctx, dup); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("duplicate create: err = %v, want ErrAlreadyExists", err)
	}
	// Updating another entry into a duplicate is refused too.
	upd := second
	upd.SPIFFEID, upd.Selectors = id("/a"), sels("unix:gid:2", "unix:uid:1")
	if _, err := s.UpdateEntry(ctx, upd); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("update into a duplicate: err = %v, want ErrAlreadyExists", err)
	}
	// Creating with an ID already in use is refused.
	if _, err := s.CreateEntry(ctx, entry.Entry{ID: first.ID, SPIFFEID: id("/c"), Selectors: sels("unix:uid:3")}); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("create with a taken ID: err = %v, want ErrAlreadyExists", err)
	}

	list, err := s.ListEntries(ctx, store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || Equal(list[0], first) != "" || Equal(list[1], second) != "" {
		t.Fatalf("entries changed by refused writes: %+v", list)
	}
	if changes != 0 {
		t.Fatalf("refused writes produced %d changes", changes)
	}

	// A different SPIFFE ID with the same selectors, or a subset, is not a duplicate.
	if _, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/a"), Selectors: sels("unix:uid:1")}); err != nil {
		t.Fatalf("subset of selectors refused: %v", err)
	}
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.UpdateEntry(ctx, entry.Entry{ID: "no-such-id", SPIFFEID: id("/a"), Selectors: sels("unix:uid:1")}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateEntry(unknown): err = %v, want ErrNotFound", err)
	}
	if _, err := s.DeleteEntry(ctx, "no-such-id"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteEntry(unknown): err = %v, want ErrNotFound", err)
	}
	if _, err := s.GetEntry(ctx, "no-such-id"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEntry(unknown): err = %v, want ErrNotFound", err)
	}
	if _, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/a")}); !errors.Is(err, entry.ErrInvalid) {
		t.Fatalf("CreateEntry without selectors: err = %v, want entry.ErrInvalid", err)
	}
	if _, err := s.CreateEntry(ctx, entry.Entry{Selectors: sels("unix:uid:1")}); !errors.Is(err, entry.ErrInvalid) {
		t.Fatalf("CreateEntry without SPIFFE ID: err = %v, want entry.ErrInvalid", err)
	}
	if list, err := s.ListEntries(ctx, store.Filter{}); err != nil || len(list) != 0 {
		t.Fatalf("ListEntries = %v, %v; want empty", list, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(name, path string, ss ...string) string {
		e, err := s.CreateEntry(ctx, entry.Entry{Name: name, SPIFFEID: id(path), Selectors: sels(ss...)})
		if err != nil {
			t.Fatal(err)
		}
		return e.ID
	}
	c := mk("", "/c", "unix:uid:1")
	a1 := mk("web", "/a", "unix:uid:1", "unix:path:/bin/a")
	b := mk("", "/b", "unix:uid:2", "unix:path:/bin/a")
	a2 := mk("", "/a", "unix:uid:10")
	// "/a/x" sorts after "/a" and before "/b".
	ax := mk("web", "/a/x", "unix:uid:1", "unix:gid:1")

	sortedA := []string{a1, a2}
	slices.Sort(sortedA)
	tests := []struct {
		name string
		f    store.Filter
		want []string
	}{
		{"all", store.Filter{}, append(append(sortedA, ax), b, c)},
		{"by SPIFFE ID", store.Filter{SPIFFEID: id("/a")}, sortedA},
		{"by name", store.Filter{Name: "web"}, []string{a1, ax}},
		{"by one selector", store.Filter{Selectors: sels("unix:uid:1")}, []string{a1, ax, c}},
		{"selector is not a prefix", store.Filter{Selectors: sels("unix:uid:10")}, []string{a2}},
		{"by two selectors", store.Filter{Selectors: sels("unix:path:/bin/a", "unix:uid:1")}, []string{a1}},
		{"selectors and name", store.Filter{Name: "web", Selectors: sels("unix:gid:1")}, []string{ax}},
		{"no match", store.Filter{SPIFFEID: id("/b"), Selectors: sels("unix:uid:1")}, nil},
		{"unknown name", store.Filter{Name: "nope"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list, err := s.ListEntries(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range list {
				got = append(got, e.ID)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ListEntries(%+v) = %v, want %v", tt.f, got, tt.want)
			}
		})
	}
}

func testWatch(t *testing.T, s store.Store) {
	ctx := context.Background()
	var got, got2 []store.Change
	cancel := s.Watch(func(c store.Change) { got = append(got, c) })
	cancel2 := s.Watch(func(c store.Change) { got2 = append(got2, c) })

	e1, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/w"), Selectors: sels("unix:uid:1")})
	if err != nil {
		t.Fatal(err)
	}
	upd := e1
	upd.Selectors = sels("unix:uid:2")
	e2, err := s.UpdateEntry(ctx, upd)
	if err != nil {
		t.Fatal(err)
	}
	cancel2()
	cancel2() // idempotent
	del, err := s.DeleteEntry(ctx, e1.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Failed writes are not changes.
	if _, err := s.DeleteEntry(ctx, e1.ID); err == nil {
		t.Fatal("second delete succeeded")
	}

	want := []store.Change{
		{Op: store.OpCreate, Entry: e1},
		{Op: store.OpUpdate, Entry: e2, Old: e1},
		{Op: store.OpDelete, Entry: del},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d changes, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].Op != want[i].Op {
			t.Fatalf("change %d: Op %s, want %s", i, got[i].Op, want[i].Op)
		}
		if d := Equal(got[i].Entry, want[i].Entry); d != "" {
			t.Fatalf("change %d (%s): Entry %s", i, got[i].Op, d)
		}
		if d := Equal(got[i].Old, want[i].Old); d != "" {
			t.Fatalf("change %d (%s): Old %s", i, got[i].Op, d)
		}
	}
	if len(got2) != 2 {
		t.Fatalf("cancelled watcher got %d changes, want 2", len(got2))
	}
	cancel()
	if _, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/w2"), Selectors: sels("unix:uid:1")}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("cancelled watcher still called: %d changes", len(got))
	}
}

func testConcurrentCreates(t *testing.T, s store.Store) {
	ctx := context.Background()
	const workers, each = 8, 25
	// Watch order must be commit order even under contention: revisions of one entry are
	// not interleaved here, so check that every create is seen exactly once.
	var mu sync.Mutex
	seen := map[string]int{}
	cancel := s.Watch(func(c store.Change) {
		mu.Lock()
		seen[c.Entry.ID]++
		mu.Unlock()
	})
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	ids := make(chan string, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				e, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id(fmt.Sprintf("/w%d/%d", w, i)), Selectors: sels(fmt.Sprintf("unix:uid:%d", w))})
				if err != nil {
					errs <- err
					return
				}
				ids <- e.ID
			}
		})
	}
	wg.Wait()
	close(errs)
	close(ids)
	for err := range errs {
		t.Fatalf("concurrent create: %v", err)
	}
	list, err := s.ListEntries(ctx, store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != workers*each {
		t.Fatalf("%d entries stored, want %d", len(list), workers*each)
	}
	stored := map[string]bool{}
	for _, e := range list {
		stored[e.ID] = true
	}
	for id := range ids {
		if !stored[id] {
			t.Fatalf("acknowledged entry %s missing", id)
		}
		if seen[id] != 1 {
			t.Fatalf("entry %s seen by the watcher %d times", id, seen[id])
		}
	}
}

// testConcurrentUpdates updates one entry from many goroutines: the watcher must see
// revisions 2, 3, 4, ... in order, each Old being the previous Entry (commit order).
func testConcurrentUpdates(t *testing.T, s store.Store) {
	ctx := context.Background()
	e, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: id("/u"), Selectors: sels("unix:uid:0")})
	if err != nil {
		t.Fatal(err)
	}
	var got []store.Change
	var mu sync.Mutex
	cancel := s.Watch(func(c store.Change) {
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
	})
	defer cancel()
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				u := e
				u.Selectors = sels(fmt.Sprintf("unix:uid:%d", 1+w*each+i))
				if _, err := s.UpdateEntry(ctx, u); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent update: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != workers*each {
		t.Fatalf("watcher saw %d changes, want %d", len(got), workers*each)
	}
	prev := e
	for i, c := range got {
		if c.Op != store.OpUpdate || c.Entry.Revision != int64(i+2) {
			t.Fatalf("change %d: %s revision %d, want update revision %d", i, c.Op, c.Entry.Revision, i+2)
		}
		if d := Equal(c.Old, prev); d != "" {
			t.Fatalf("change %d: Old is not the previous version: %s", i, d)
		}
		prev = c.Entry
	}
	final, err := s.GetEntry(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d := Equal(final, prev); d != "" {
		t.Fatalf("stored entry is not the last change watched: %s", d)
	}
}

func testOwnership(t *testing.T, s store.Store) {
	ctx := context.Background()
	in := entry.Entry{SPIFFEID: id("/o"), Selectors: sels("unix:uid:1"), DNSNames: []string{"o.example.org"}}
	e, err := s.CreateEntry(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	in.Selectors[0].Value = "uid:2"
	in.DNSNames[0] = "changed-input"
	e.Selectors[0].Value = "uid:3"
	e.DNSNames[0] = "changed-output"
	got, err := s.GetEntry(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Selectors[0].Value != "uid:1" || got.DNSNames[0] != "o.example.org" {
		t.Fatalf("store shares memory with its callers: %+v", got)
	}
}

// testFederatesWith: an entry's federated trust domains are stored normalized (sorted, no
// duplicates), survive an update that changes other fields, and are replaced as a whole.
func testFederatesWith(t *testing.T, s store.Store) {
	ctx := context.Background()
	e, err := s.CreateEntry(ctx, entry.Entry{
		SPIFFEID:      id("/fed"),
		Selectors:     sels("unix:uid:7"),
		FederatesWith: []spiffeid.TrustDomain{td("zeta.org"), td("alpha.org"), td("zeta.org")},
	})
	if err != nil {
		t.Fatalf("CreateEntry: %v", err)
	}
	want := []spiffeid.TrustDomain{td("alpha.org"), td("zeta.org")}
	if !slices.Equal(e.FederatesWith, want) {
		t.Fatalf("CreateEntry FederatesWith = %v, want %v", e.FederatesWith, want)
	}
	got, err := s.GetEntry(ctx, e.ID)
	if err != nil || !slices.Equal(got.FederatesWith, want) {
		t.Fatalf("GetEntry FederatesWith = %v, %v; want %v", got.FederatesWith, err, want)
	}
	got.DNSNames = []string{"fed.example.org"}
	upd, err := s.UpdateEntry(ctx, got)
	if err != nil || !slices.Equal(upd.FederatesWith, want) {
		t.Fatalf("UpdateEntry of another field: FederatesWith = %v, %v; want %v", upd.FederatesWith, err, want)
	}
	upd.FederatesWith = []spiffeid.TrustDomain{td("beta.org")}
	if upd, err = s.UpdateEntry(ctx, upd); err != nil {
		t.Fatalf("UpdateEntry: %v", err)
	}
	list, err := s.ListEntries(ctx, store.Filter{SPIFFEID: id("/fed")})
	if err != nil || len(list) != 1 || !slices.Equal(list[0].FederatesWith, []spiffeid.TrustDomain{td("beta.org")}) {
		t.Fatalf("ListEntries after replacing FederatesWith = %v, %v; want [beta.org]", list, err)
	}
	// The caller's slice is its own.
	upd.FederatesWith[0] = td("mutated.org")
	if got, _ := s.GetEntry(ctx, e.ID); got.FederatesWith[0] != td("beta.org") {
		t.Fatalf("modifying a returned entry changed the stored one: %v", got.FederatesWith)
	}
}

// testBundles: federated bundles are kept per trust domain, replaced whole, listed by name,
// and deleting one leaves the others.
func testBundles(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.GetBundle(ctx, td("other.org")); !errors.Is(err, store.ErrBundleNotFound) {
		t.Fatalf("GetBundle on an empty store: %v, want ErrBundleNotFound", err)
	}
	if _, err := s.DeleteBundle(ctx, td("other.org")); !errors.Is(err, store.ErrBundleNotFound) {
		t.Fatalf("DeleteBundle on an empty store: %v, want ErrBundleNotFound", err)
	}
	if list, err := s.ListBundles(ctx); err != nil || len(list) != 0 {
		t.Fatalf("ListBundles on an empty store = %v, %v", list, err)
	}
	docB := []byte(`{"keys":[],"spiffe_sequence":3}`)
	b, err := s.SetBundle(ctx, store.FederatedBundle{TrustDomain: td("b.org"), Doc: docB, Source: store.BundleFromEndpoint, Sequence: 3})
	if err != nil {
		t.Fatalf("SetBundle: %v", err)
	}
	if b.UpdatedAt.IsZero() || string(b.Doc) != string(docB) {
		t.Fatalf("SetBundle returned %+v", b)
	}
	if _, err := s.SetBundle(ctx, store.FederatedBundle{TrustDomain: td("a.org"), Doc: []byte(`{"keys":[]}`), Source: store.BundleManual}); err != nil {
		t.Fatalf("SetBundle: %v", err)
	}
	docB2 := []byte(`{"keys":[],"spiffe_sequence":4}`)
	if _, err := s.SetBundle(ctx, store.FederatedBundle{TrustDomain: td("b.org"), Doc: docB2, Source: store.BundleFromEndpoint, Sequence: 4}); err != nil {
		t.Fatalf("SetBundle replacing: %v", err)
	}
	list, err := s.ListBundles(ctx)
	if err != nil || len(list) != 2 || list[0].TrustDomain != td("a.org") || list[1].TrustDomain != td("b.org") {
		t.Fatalf("ListBundles = %+v, %v; want a.org then b.org", list, err)
	}
	got, err := s.GetBundle(ctx, td("b.org"))
	if err != nil || string(got.Doc) != string(docB2) || got.Sequence != 4 || got.Source != store.BundleFromEndpoint {
		t.Fatalf("GetBundle after replacing = %+v, %v", got, err)
	}
	for _, bad := range []store.FederatedBundle{
		{Doc: docB, Source: store.BundleManual},
		{TrustDomain: td("c.org"), Source: store.BundleManual},
		{TrustDomain: td("c.org"), Doc: docB, Source: "guessed"},
	} {
		if _, err := s.SetBundle(ctx, bad); err == nil {
			t.Errorf("SetBundle(%+v) succeeded", bad)
		}
	}
	del, err := s.DeleteBundle(ctx, td("b.org"))
	if err != nil || string(del.Doc) != string(docB2) {
		t.Fatalf("DeleteBundle = %+v, %v", del, err)
	}
	if list, err := s.ListBundles(ctx); err != nil || len(list) != 1 || list[0].TrustDomain != td("a.org") {
		t.Fatalf("ListBundles after delete = %+v, %v; want only a.org", list, err)
	}
}
