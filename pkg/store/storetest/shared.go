package storetest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

// Shared is a backend that several store instances use at once (etcd, one per host): what
// the shared-store cases need beyond Run's open. A store declares itself shared by running
// RunShared beside Run; SQLite (one process's file) does not.
type Shared interface {
	// Open opens another instance on this backend; the suite closes it.
	Open(t *testing.T) store.Store
	// Disconnect cuts s (opened by Open) off from the backend until reconnect is called;
	// other instances keep working meanwhile.
	Disconnect(t *testing.T, s store.Store) (reconnect func())
	// Compact discards the backend's change history up to now, so an instance cut off
	// before now cannot resume from its last revision.
	Compact(t *testing.T)
}

// RunShared runs the cases of a shared store. newBackend returns a new, empty backend.
func RunShared(t *testing.T, newBackend func(t *testing.T) Shared) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b Shared)
	}{
		{"OtherInstanceWritesReachWatch", testOtherInstance},
		{"WatchResumesAfterDisconnect", testResume},
		{"CompactedWhileDisconnectedReloads", testCompacted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newBackend(t)) })
	}
}

// recorder collects the changes a watcher receives, for a test goroutine to wait on.
type recorder struct {
	mu      sync.Mutex
	changes []store.Change
}

func record(t *testing.T, s store.Store) *recorder {
	r := &recorder{}
	t.Cleanup(s.Watch(func(c store.Change) {
		r.mu.Lock()
		r.changes = append(r.changes, c)
		r.mu.Unlock()
	}))
	return r
}

// waitFor waits up to 20 s for n changes in all and returns them.
func (r *recorder) waitFor(t *testing.T, n int) []store.Change {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r.mu.Lock()
		got := slices.Clone(r.changes)
		r.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("watcher got %d changes, want %d: %+v", len(got), n, got)
			}
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func checkChanges(t *testing.T, got, want []store.Change) {
	t.Helper()
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
}

func mustCreate(t *testing.T, s store.Store, path string, ss ...string) entry.Entry {
	t.Helper()
	e, err := s.CreateEntry(context.Background(), entry.Entry{SPIFFEID: id(path), Selectors: sels(ss...)})
	if err != nil {
		t.Fatalf("CreateEntry %s: %v", path, err)
	}
	return e
}

func mustUpdate(t *testing.T, s store.Store, e entry.Entry, ss ...string) entry.Entry {
	t.Helper()
	e.Selectors = sels(ss...)
	u, err := s.UpdateEntry(context.Background(), e)
	if err != nil {
		t.Fatalf("UpdateEntry %s: %v", e.ID, err)
	}
	return u
}

func mustDelete(t *testing.T, s store.Store, id string) entry.Entry {
	t.Helper()
	e, err := s.DeleteEntry(context.Background(), id)
	if err != nil {
		t.Fatalf("DeleteEntry %s: %v", id, err)
	}
	return e
}

// testOtherInstance: what one instance writes reaches the other's watchers, in order, and
// the other's reads.
func testOtherInstance(t *testing.T, b Shared) {
	a, w := b.Open(t), b.Open(t)
	rec := record(t, a)
	e1 := mustCreate(t, w, "/other", "unix:uid:1")
	e2 := mustUpdate(t, w, e1, "unix:uid:2")
	del := mustDelete(t, w, e1.ID)
	e3 := mustCreate(t, w, "/other/3", "unix:uid:3")
	checkChanges(t, rec.waitFor(t, 4), []store.Change{
		{Op: store.OpCreate, Entry: e1},
		{Op: store.OpUpdate, Entry: e2, Old: e1},
		{Op: store.OpDelete, Entry: del},
		{Op: store.OpCreate, Entry: e3},
	})
	got, err := a.GetEntry(context.Background(), e3.ID)
	if err != nil || Equal(got, e3) != "" {
		t.Fatalf("other instance reads %+v, %v; want %+v", got, err, e3)
	}
	// The uniqueness rule holds across instances.
	if _, err := a.CreateEntry(context.Background(), entry.Entry{SPIFFEID: id("/other/3"), Selectors: sels("unix:uid:3")}); err == nil {
		t.Fatal("duplicate of another instance's entry was accepted")
	}
}

// testResume: an instance cut off while others write gets every change it missed, each one,
// in order, once it is back: it resumed from its revision (a reload would not report an entry
// created and deleted while it was away).
func testResume(t *testing.T, b Shared) {
	a, w := b.Open(t), b.Open(t)
	rec := record(t, a)
	e1 := mustCreate(t, w, "/resume/1", "unix:uid:1")
	rec.waitFor(t, 1)

	reconnect := b.Disconnect(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := a.Ping(ctx)
	cancel()
	if err == nil {
		t.Fatal("Ping succeeded on a disconnected instance")
	}
	e2 := mustCreate(t, w, "/resume/2", "unix:uid:2")
	u1 := mustUpdate(t, w, e1, "unix:uid:10")
	d2 := mustDelete(t, w, e2.ID)
	reconnect()

	got := rec.waitFor(t, 4)
	checkChanges(t, got[1:], []store.Change{
		{Op: store.OpCreate, Entry: e2},
		{Op: store.OpUpdate, Entry: u1, Old: e1},
		{Op: store.OpDelete, Entry: d2},
	})
}

// testCompacted: an instance cut off across a compaction reloads when it is back; its
// watchers then hold exactly the backend's entries (a deleted entry reported deleted, none
// still served), and later writes reach it again.
func testCompacted(t *testing.T, b Shared) {
	a, w := b.Open(t), b.Open(t)
	rec := record(t, a)
	gone := mustCreate(t, w, "/compact/gone", "unix:uid:1")
	kept := mustCreate(t, w, "/compact/kept", "unix:uid:2")
	rec.waitFor(t, 2)

	reconnect := b.Disconnect(t, a)
	mustDelete(t, w, gone.ID)
	keptU := mustUpdate(t, w, mustUpdate(t, w, kept, "unix:uid:20"), "unix:uid:21")
	added := mustCreate(t, w, "/compact/added", "unix:uid:3")
	// Created and deleted while a was away: a reload never sees it, a resume would.
	transient := mustCreate(t, w, "/compact/transient", "unix:uid:5")
	mustDelete(t, w, transient.ID)
	b.Compact(t)
	reconnect()

	// A reload reports the difference only: gone deleted, kept updated once, added created.
	changes := rec.waitFor(t, 5)
	for _, c := range changes[2:] {
		if c.Entry.ID == transient.ID {
			t.Fatalf("an entry created and deleted during the disconnect was reported (%s): the instance resumed from compacted history instead of reloading", c.Op)
		}
	}
	// What a watcher holds: the entries as of the changes it was told.
	held := map[string]entry.Entry{}
	for _, c := range changes {
		if c.Op == store.OpDelete {
			delete(held, c.Entry.ID)
		} else {
			held[c.Entry.ID] = c.Entry
		}
	}
	var sawDelete bool
	for _, c := range changes[2:] {
		if c.Op == store.OpDelete && c.Entry.ID == gone.ID {
			sawDelete = true
			if d := Equal(c.Entry, gone); d != "" {
				t.Fatalf("deleted entry reported as %s", d)
			}
		}
	}
	if !sawDelete {
		t.Fatalf("the entry deleted while disconnected was not reported deleted: %+v", changes[2:])
	}
	want, err := w.ListEntries(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != len(want) {
		t.Fatalf("watcher holds %d entries after the reload, the store %d: %+v", len(held), len(want), held)
	}
	for _, e := range want {
		if d := Equal(held[e.ID], e); d != "" {
			t.Fatalf("watcher holds %s: %s", e.ID, d)
		}
	}
	if d := Equal(held[keptU.ID], keptU); d != "" || Equal(held[added.ID], added) != "" {
		t.Fatalf("watcher state after reload is not current: %s", d)
	}
	// Followed again from the reload's revision.
	later := mustCreate(t, w, "/compact/later", "unix:uid:4")
	got := rec.waitFor(t, 6)
	checkChanges(t, got[5:], []store.Change{{Op: store.OpCreate, Entry: later}})
}
