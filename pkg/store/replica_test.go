package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/storetest"
)

// TestSQLitePut: a copied entry keeps its ID, Revision and timestamps; a stale local entry
// holding the same (SPIFFE ID, selectors) under another ID gives way, and watchers hear both.
func TestSQLitePut(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()
	ctx := context.Background()
	var heard []store.Change
	defer s.Watch(func(c store.Change) { heard = append(heard, c) })()

	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	e := entry.Entry{ID: "remote-1", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/p"),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}, Revision: 7, CreatedAt: at, UpdatedAt: at.Add(time.Hour),
		FederatesWith: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("other.org")}}
	if err := s.Put(ctx, e); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetEntry(ctx, "remote-1")
	if err != nil {
		t.Fatal(err)
	}
	if d := storetest.Equal(got, e); d != "" {
		t.Fatalf("copied entry: %s", d)
	}
	e2 := e
	e2.ID, e2.Revision = "remote-2", 1
	if err := s.Put(ctx, e2); err != nil {
		t.Fatalf("Put over a stale duplicate: %v", err)
	}
	if _, err := s.GetEntry(ctx, "remote-1"); err == nil {
		t.Fatal("stale duplicate kept")
	}
	if len(heard) != 3 || heard[0].Op != store.OpCreate || heard[1].Op != store.OpDelete || heard[2].Op != store.OpCreate {
		t.Fatalf("watchers heard %+v", heard)
	}
	if err := s.Remove(ctx, "never-there"); err != nil {
		t.Fatalf("Remove of an absent entry: %v", err)
	}
	if err := s.Remove(ctx, "remote-2"); err != nil || len(heard) != 4 || heard[3].Op != store.OpDelete {
		t.Fatalf("Remove = %v, heard %d changes", err, len(heard))
	}
}

// TestSQLitePutOwnEntryWins: a copied registry entry never replaces one of the host's own
// (a config entry, Name set), neither by (SPIFFE ID, selectors) nor by ID: ErrOwnEntry, and
// nothing changes.
func TestSQLitePutOwnEntryWins(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()
	ctx := context.Background()
	own, err := s.CreateEntry(ctx, entry.Entry{Name: "web", SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/web"),
		Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	var heard []store.Change
	defer s.Watch(func(c store.Change) { heard = append(heard, c) })()
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, e := range []entry.Entry{
		{ID: "remote-1", SPIFFEID: own.SPIFFEID, Selectors: own.Selectors, Revision: 3, CreatedAt: at, UpdatedAt: at},
		{ID: own.ID, SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/other"), Selectors: own.Selectors, Revision: 3, CreatedAt: at, UpdatedAt: at},
	} {
		if err := s.Put(ctx, e); !errors.Is(err, store.ErrOwnEntry) {
			t.Fatalf("Put(%s %s) over the host's own entry = %v, want ErrOwnEntry", e.ID, e.SPIFFEID, err)
		}
	}
	got, err := s.GetEntry(ctx, own.ID)
	if err != nil || storetest.Equal(got, own) != "" || len(heard) != 0 {
		t.Fatalf("own entry after refused Puts = %+v, %v; heard %+v", got, err, heard)
	}
	if es, _ := s.ListEntries(ctx, store.Filter{}); len(es) != 1 {
		t.Fatalf("%d entries, want only the own one", len(es))
	}
}

// TestSQLiteApply: removals and puts in one transaction; watchers hear each change after the
// commit; an invalid entry anywhere in the batch applies nothing.
func TestSQLiteApply(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()
	ctx := context.Background()
	mk := func(id, path string) entry.Entry {
		return entry.Entry{ID: id, SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path),
			Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}, Revision: 1}
	}
	if err := s.Put(ctx, mk("old", "/old")); err != nil {
		t.Fatal(err)
	}
	var heard []store.Change
	defer s.Watch(func(c store.Change) { heard = append(heard, c) })()

	bad := mk("bad", "/bad")
	bad.Selectors = nil
	if err := s.Apply(ctx, []entry.Entry{mk("a", "/a"), bad}, []string{"old"}); err == nil {
		t.Fatal("Apply with an entry without selectors succeeded")
	}
	if all, _ := s.ListEntries(ctx, store.Filter{}); len(all) != 1 || all[0].ID != "old" || len(heard) != 0 {
		t.Fatalf("after a failed Apply: %d entries, %d changes heard; want the old entry alone, none", len(all), len(heard))
	}

	if err := s.Apply(ctx, []entry.Entry{mk("a", "/a"), mk("b", "/b")}, []string{"old", "never-there"}); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListEntries(ctx, store.Filter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("after Apply: %d entries (%v), want 2", len(all), err)
	}
	if len(heard) != 3 || heard[0].Op != store.OpDelete || heard[1].Op != store.OpCreate || heard[2].Op != store.OpCreate {
		t.Fatalf("watchers heard %+v", heard)
	}
}

// TestSQLiteApplyFreshCopy: a batch into an empty copy (a host's first sync, which skips the
// per-entry query) ends as the same puts one by one do, when the batch repeats an ID or a
// (SPIFFE ID, selectors): the later one replaces the earlier.
func TestSQLiteApplyFreshCopy(t *testing.T) {
	ctx := context.Background()
	mk := func(id, path string) entry.Entry {
		return entry.Entry{ID: id, SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path),
			Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}, Revision: 1}
	}
	batch := []entry.Entry{mk("a", "/x"), mk("b", "/b"), mk("a", "/y"), mk("c", "/z"), mk("d", "/z"), mk("e", "/e")}
	state := func(s *store.SQLite) map[string]string {
		es, err := s.ListEntries(ctx, store.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, e := range es {
			out[e.ID] = e.SPIFFEID.String()
		}
		return out
	}
	one, _ := openTemp(t)
	defer one.Close()
	var heardOne []string
	defer one.Watch(func(c store.Change) { heardOne = append(heardOne, c.Op.String()+" "+c.Entry.ID) })()
	for _, e := range batch {
		if err := one.Put(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	all, _ := openTemp(t)
	defer all.Close()
	var heardAll []string
	defer all.Watch(func(c store.Change) { heardAll = append(heardAll, c.Op.String()+" "+c.Entry.ID) })()
	if err := all.Apply(ctx, batch, nil); err != nil {
		t.Fatal(err)
	}
	want, got := state(one), state(all)
	if len(got) != 4 || got["a"] != "spiffe://example.org/y" || got["c"] != "" || got["d"] != "spiffe://example.org/z" {
		t.Fatalf("fresh Apply left %v; want a=/y, b, d=/z, e (one by one: %v)", got, want)
	}
	if fmt.Sprint(want) != fmt.Sprint(got) || fmt.Sprint(heardOne) != fmt.Sprint(heardAll) {
		t.Fatalf("fresh Apply: %v, heard %v; one by one: %v, heard %v", got, heardAll, want, heardOne)
	}
}
