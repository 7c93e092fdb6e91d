package mirror_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/internal/etcdtest"
)

// TestFullSyncBesideOwnEntry: a full sync copies in one transaction; when one of the
// registry's entries collides with the host's own entry, the rest are still copied and the
// colliding one is left out.
func TestFullSyncBesideOwnEntry(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	dir := t.TempDir()
	a := startHost(t, c, filepath.Join(dir, "a.db"), node("A"))
	b := startHost(t, c, filepath.Join(dir, "b.db"), node("B"))
	eventually(t, "both hosts reach the registry", func() bool { return reachable(a) && reachable(b) })
	ctx := context.Background()
	ownE := scoped(t, "/own", "unix:uid:1")
	ownE.Name = "own"
	own, err := a.m.Own().CreateEntry(ctx, ownE)
	if err != nil {
		t.Fatal(err)
	}
	a.stop()
	// Written while A is away: its next start copies them in one full sync.
	dup, err := b.m.CreateEntry(ctx, scoped(t, "/own", "unix:uid:1"))
	if err != nil {
		t.Fatal(err)
	}
	var others []string
	for _, p := range []string{"/one", "/two", "/three"} {
		e, err := b.m.CreateEntry(ctx, scoped(t, p, "unix:uid:1"))
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, e.ID)
	}
	a = startHost(t, c, filepath.Join(dir, "a.db"), node("A"))
	eventually(t, "A reachable again", func() bool { return reachable(a) })
	got := copyIDs(t, a)
	if !got[own.ID] || got[dup.ID] {
		t.Fatalf("A's copy %v: want its own entry, not the registry's duplicate", got)
	}
	for _, id := range others {
		if !got[id] {
			t.Fatalf("A's copy %v lacks %s, copied in the same sync as the duplicate", got, id)
		}
	}
}

// TestRegistryEntryWithOwnID: a registry entry that reuses the ID of one of the host's own
// entries (a registrar may choose an entry's ID) never replaces or removes the host's own
// entry, neither in a full sync nor from the watch; the registry's entry is served once the
// own entry is gone.
func TestRegistryEntryWithOwnID(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	dir := t.TempDir()
	a := startHost(t, c, filepath.Join(dir, "a.db"), node("A"))
	b := startHost(t, c, filepath.Join(dir, "b.db"), node("B"))
	eventually(t, "both hosts reach the registry", func() bool { return reachable(a) && reachable(b) })
	ctx := context.Background()
	ownE := scoped(t, "/own", "unix:uid:1")
	ownE.Name, ownE.ID = "own", "clashing-id"
	if _, err := a.m.Own().CreateEntry(ctx, ownE); err != nil {
		t.Fatal(err)
	}
	a.stop()
	// Written while A is away: its next start meets it in a full sync, beside another entry.
	clashE := scoped(t, "/registry", "unix:uid:2")
	clashE.ID = "clashing-id"
	clash, err := b.m.CreateEntry(ctx, clashE)
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.m.CreateEntry(ctx, scoped(t, "/other", "unix:uid:1"))
	if err != nil {
		t.Fatal(err)
	}
	a = startHost(t, c, filepath.Join(dir, "a.db"), node("A"))
	eventually(t, "A reachable again", func() bool { return reachable(a) })
	ownIs := func(when string) {
		t.Helper()
		got, err := a.m.GetEntry(ctx, "clashing-id")
		if err != nil || got.Name != "own" || got.SPIFFEID != ownE.SPIFFEID {
			t.Fatalf("%s: A's entry clashing-id = %+v, %v; want its own entry %q", when, got, err, ownE.SPIFFEID)
		}
	}
	ownIs("after the full sync")
	if !has(a, other.ID) {
		t.Fatal("the entry copied in the same sync as the clashing one is missing")
	}
	// An update of the registry's entry arrives through the watch.
	clash.SPIFFEID = spiffeid.RequireFromString("spiffe://example.org/registry-updated")
	if _, err := b.m.UpdateEntry(ctx, clash); err != nil {
		t.Fatal(err)
	}
	settle(t, b, a, b)
	ownIs("after an update through the watch")
	if _, err := a.m.Own().DeleteEntry(ctx, "clashing-id"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the registry's entry served once the own one is gone", func() bool {
		got, err := a.m.GetEntry(ctx, "clashing-id")
		return err == nil && got.Name == "" && got.SPIFFEID == clash.SPIFFEID
	})
}
