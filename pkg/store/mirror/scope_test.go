package mirror_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/mirror"
)

func node(name string, groups ...string) func(*mirror.Config) {
	return func(c *mirror.Config) { c.NodeName, c.NodeGroups = name, groups }
}

func scoped(t *testing.T, path string, sel ...string) entry.Entry {
	t.Helper()
	ss, err := entry.ParseSelectors(sel)
	if err != nil {
		t.Fatal(err)
	}
	return entry.Entry{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path), Selectors: ss}
}

// copyIDs returns the IDs in a host's copy (what it serves), names for its own entries.
func copyIDs(t *testing.T, h *host) map[string]bool {
	t.Helper()
	es, err := h.m.ListEntries(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]bool, len(es))
	for _, e := range es {
		out[e.ID] = true
		if e.Name != "" {
			out["own:"+e.Name] = true
		}
	}
	return out
}

// settle writes a marker entry every host copies and waits for it on each: the registry
// delivers changes in one order, so every change before it has been applied too.
func settle(t *testing.T, writer *host, hosts ...*host) {
	t.Helper()
	mark, err := writer.m.CreateEntry(context.Background(), scoped(t, "/marker-"+time.Now().Format("150405.000000000"), "unix:uid:9"))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		eventually(t, "the marker reaches every host", func() bool { return has(h, mark.ID) })
	}
	if _, err := writer.m.DeleteEntry(context.Background(), mark.ID); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		eventually(t, "the marker's deletion reaches every host", func() bool { return !has(h, mark.ID) })
	}
}

// TestScopedCopies: each host copies only the entries that can match on it: an entry for
// node:name:A reaches A's copy only, one without node selectors every host, one for a group
// its members; an update that moves an entry from A to B removes it from A's copy and adds it
// to B's, and a host restarted (full sync) or cut off across a compaction (full reload)
// ends with the same scoped copy. The admin API's fleet view lists and finds every entry
// from any host.
func TestScopedCopies(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	dir := t.TempDir()
	a := startHost(t, c, filepath.Join(dir, "a.db"), node("A", "web", "eu"))
	b := startHost(t, c, filepath.Join(dir, "b.db"), node("B", "db", "eu"))
	eventually(t, "both hosts reach the registry", func() bool { return reachable(a) && reachable(b) })
	ctx := context.Background()
	create := func(e entry.Entry) entry.Entry {
		t.Helper()
		out, err := a.m.CreateEntry(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	onA := create(scoped(t, "/on-a", "unix:uid:1", "node:name:A"))
	everywhere := create(scoped(t, "/everywhere", "unix:uid:1"))
	web := create(scoped(t, "/web", "unix:uid:1", "node:group:web"))
	eu := create(scoped(t, "/eu", "unix:uid:1", "node:group:eu"))
	webEU := create(scoped(t, "/web-eu", "unix:uid:1", "node:group:web", "node:group:eu"))
	nowhere := create(scoped(t, "/nowhere", "unix:uid:1", "node:name:A", "node:name:B"))
	bInWeb := create(scoped(t, "/b-web", "unix:uid:1", "node:name:B", "node:group:web"))

	check := func(when string, h *host, want ...entry.Entry) {
		t.Helper()
		got := copyIDs(t, h)
		ws := make(map[string]bool)
		for _, e := range want {
			ws[e.ID] = true
			if !got[e.ID] {
				t.Errorf("%s: %s's copy lacks %s", when, h.name, e.SPIFFEID)
			}
		}
		for _, e := range []entry.Entry{onA, everywhere, web, eu, webEU, nowhere, bInWeb} {
			if got[e.ID] && !ws[e.ID] {
				t.Errorf("%s: %s's copy holds %s (selectors %v), which cannot match there", when, h.name, e.SPIFFEID, e.Selectors)
			}
		}
	}
	settle(t, a, a, b)
	check("created", a, onA, everywhere, web, eu, webEU)
	check("created", b, everywhere, eu)

	// Moved from A to B, then to the web group (A), by updates.
	moved := onA
	moved.Selectors = []entry.Selector{{Type: "node", Value: "name:B"}, {Type: "unix", Value: "uid:1"}}
	if onA, err := b.m.UpdateEntry(ctx, moved); err != nil {
		t.Fatal(err)
	} else {
		moved = onA
	}
	settle(t, a, a, b)
	check("moved to B", a, everywhere, web, eu, webEU)
	check("moved to B", b, moved, everywhere, eu)
	moved.Selectors = []entry.Selector{{Type: "node", Value: "group:web"}, {Type: "unix", Value: "uid:1"}}
	if _, err := b.m.UpdateEntry(ctx, moved); err != nil {
		t.Fatal(err)
	}
	settle(t, a, a, b)
	check("moved to the web group", a, onA, everywhere, web, eu, webEU)
	check("moved to the web group", b, everywhere, eu)

	// The fleet view (svidctl entry list / show) sees every entry from any host.
	all, err := b.m.Fleet().ListEntries(ctx, store.Filter{})
	if err != nil || len(all) != 7 {
		t.Fatalf("fleet view from B lists %d entries (%v), want all 7", len(all), err)
	}
	if got, err := b.m.Fleet().GetEntry(ctx, nowhere.ID); err != nil || got.SPIFFEID != nowhere.SPIFFEID {
		t.Fatalf("fleet view from B cannot find an entry that matches no host: %v", err)
	}
	if _, err := b.m.GetEntry(ctx, web.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("B's copy GetEntry of an entry for A = %v, want ErrNotFound", err)
	}

	// A full sync at start copies the same scope: B's copy, emptied of scope by a fake stale
	// entry for A, and restarted.
	b.stop()
	stale, err := store.OpenSQLite(ctx, filepath.Join(dir, "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stale.Put(ctx, web); err != nil { // as if B had copied it under another config
		t.Fatal(err)
	}
	stale.Close()
	b = startHost(t, c, filepath.Join(dir, "b.db"), node("B", "db", "eu"))
	eventually(t, "B reachable again", func() bool { return reachable(b) })
	check("B restarted", b, everywhere, eu)

	// Cut off across a compaction: the registry store reloads and delivers the difference.
	b.proxy.Cut()
	eventually(t, "B notices", func() bool { return !reachable(b) })
	moved.Selectors = []entry.Selector{{Type: "node", Value: "group:db"}, {Type: "unix", Value: "uid:1"}}
	if _, err := a.m.UpdateEntry(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.DeleteEntry(ctx, eu.ID); err != nil {
		t.Fatal(err)
	}
	c.Compact()
	b.proxy.Restore()
	eventually(t, "B reachable after the compaction", func() bool { return reachable(b) })
	settle(t, a, a, b)
	check("after the compaction", b, onA, everywhere)
	check("after the compaction", a, everywhere, web, webEU)
}

// TestOwnEntries: the host's own entries (the config file's) live in its copy only: never in
// the registry, kept by full syncs, restarts and a compaction reload. A registry entry with
// an own entry's (SPIFFE ID, selectors) is not copied while the own entry exists, whichever
// came first, and comes back when it goes.
func TestOwnEntries(t *testing.T) {
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
	if _, err := a.m.Own().CreateEntry(ctx, scoped(t, "/x", "unix:uid:1")); err == nil {
		t.Fatal("Own().CreateEntry of an entry without a name succeeded")
	}
	// The same (SPIFFE ID, selectors) registered fleet-wide: A keeps its own.
	fleetDup, err := b.m.CreateEntry(ctx, scoped(t, "/own", "unix:uid:1"))
	if err != nil {
		t.Fatalf("fleet entry beside another host's own entry: %v", err)
	}
	other, err := b.m.CreateEntry(ctx, scoped(t, "/other", "unix:uid:1"))
	if err != nil {
		t.Fatal(err)
	}
	settle(t, b, a, b)
	got := copyIDs(t, a)
	if !got[own.ID] || got[fleetDup.ID] || !got[other.ID] {
		t.Fatalf("A's copy %v: want its own entry, not the fleet duplicate, and the other fleet entry", got)
	}
	if !has(b, fleetDup.ID) {
		t.Fatal("B lacks the fleet entry (it has no own entry in its way)")
	}
	if _, err := b.m.Fleet().GetEntry(ctx, own.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("A's own entry reached the registry (B finds it: %v)", err)
	}

	// Restart (full sync) and a compaction reload keep the own entry and the shadowing.
	a.stop()
	a = startHost(t, c, filepath.Join(dir, "a.db"), node("A"))
	eventually(t, "A reachable again", func() bool { return reachable(a) })
	a.proxy.Cut()
	eventually(t, "A notices", func() bool { return !reachable(a) })
	if _, err := b.m.DeleteEntry(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	c.Compact()
	a.proxy.Restore()
	eventually(t, "A reachable after the compaction", func() bool { return reachable(a) })
	settle(t, b, a, b)
	got = copyIDs(t, a)
	if !got[own.ID] || got[fleetDup.ID] || got[other.ID] {
		t.Fatalf("A's copy after restart and compaction %v: want its own entry only", got)
	}

	// The own entry goes: the fleet entry is copied.
	if _, err := a.m.Own().DeleteEntry(ctx, own.ID); err != nil {
		t.Fatal(err)
	}
	if got := copyIDs(t, a); got[own.ID] || !got[fleetDup.ID] {
		t.Fatalf("A's copy after its own entry went %v: want the fleet entry back", got)
	}
	// An own entry created over a copied fleet entry: the own one wins at once.
	own2, err := a.m.Own().CreateEntry(ctx, ownE)
	if err != nil {
		t.Fatalf("own entry over a copied fleet entry: %v", err)
	}
	if got := copyIDs(t, a); !got[own2.ID] || got[fleetDup.ID] {
		t.Fatalf("A's copy %v: want the new own entry in place of the fleet one", got)
	}
	// Updating the own entry to other selectors frees the fleet entry's.
	upd := own2
	upd.Selectors = []entry.Selector{{Type: "unix", Value: "uid:2"}}
	if _, err := a.m.Own().UpdateEntry(ctx, upd); err != nil {
		t.Fatal(err)
	}
	if got := copyIDs(t, a); !got[own2.ID] || !got[fleetDup.ID] {
		t.Fatalf("A's copy %v after the own entry changed selectors: want both", got)
	}
	// An update of the fleet entry arriving while shadowed does not replace the own entry.
	upd.Selectors = []entry.Selector{{Type: "unix", Value: "uid:1"}}
	if _, err := a.m.Own().UpdateEntry(ctx, upd); err != nil {
		t.Fatal(err)
	}
	fleetDup.DNSNames = []string{"own.example.org"}
	if _, err := b.m.UpdateEntry(ctx, fleetDup); err != nil {
		t.Fatal(err)
	}
	settle(t, b, a, b)
	if got := copyIDs(t, a); !got[own2.ID] || got[fleetDup.ID] {
		t.Fatalf("A's copy %v after the shadowed fleet entry changed: want the own entry only", got)
	}
	// A copied fleet entry updated onto an own entry's selectors: its old version goes too.
	moving, err := b.m.CreateEntry(ctx, scoped(t, "/own", "unix:uid:3"))
	if err != nil {
		t.Fatal(err)
	}
	settle(t, b, a, b)
	if !has(a, moving.ID) {
		t.Fatal("A lacks a fleet entry it can match")
	}
	moving.Selectors = own2.Selectors
	if _, err := b.m.UpdateEntry(ctx, moving); err == nil {
		t.Fatal("two fleet entries with the same SPIFFE ID and selectors")
	}
	if _, err := b.m.DeleteEntry(ctx, fleetDup.ID); err != nil {
		t.Fatal(err)
	}
	if moving, err = b.m.UpdateEntry(ctx, moving); err != nil {
		t.Fatal(err)
	}
	settle(t, b, a, b)
	if got := copyIDs(t, a); !got[own2.ID] || got[moving.ID] || got[fleetDup.ID] {
		t.Fatalf("A's copy %v after a fleet entry moved onto its own entry's selectors: want the own entry only", got)
	}
	if _, err := b.m.Own().DeleteEntry(ctx, moving.ID); err == nil {
		t.Fatal("Own().DeleteEntry removed a registry entry from the copy")
	}
	if n := len(fleetView(t, b)); n != 1 { // moving
		t.Fatalf("the registry holds %d entries, want the one fleet entry (own entries never go there)", n)
	}
}

func fleetView(t *testing.T, h *host) []entry.Entry {
	t.Helper()
	es, err := h.m.Fleet().ListEntries(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return es
}
