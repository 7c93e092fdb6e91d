package mirror_test

import (
	"context"
	"path/filepath"
	"testing"

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
