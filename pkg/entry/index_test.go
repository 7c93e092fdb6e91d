package entry

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func sel(ss ...string) []Selector {
	out := make([]Selector, len(ss))
	for i, s := range ss {
		typ, value, _ := strings.Cut(s, ":")
		out[i] = Selector{Type: typ, Value: value}
	}
	return out
}

func mkEntry(id, spiffeID string, sels ...string) Entry {
	return Entry{ID: id, SPIFFEID: spiffeid.RequireFromString(spiffeID), Selectors: sel(sels...)}
}

func ids(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func TestIndexMatch(t *testing.T) {
	x := NewIndex()
	x.Put(mkEntry("e-uid", "spiffe://example.org/web", "unix:uid:1000"))
	x.Put(mkEntry("e-uid-path", "spiffe://example.org/envoy", "unix:uid:1000", "unix:path:/usr/bin/envoy"))
	x.Put(mkEntry("e-path", "spiffe://example.org/any-envoy", "unix:path:/usr/bin/envoy"))
	x.Put(mkEntry("e-other", "spiffe://example.org/db", "unix:uid:2000"))
	x.Put(mkEntry("e-unit", "spiffe://example.org/unit", "systemd:unit:envoy.service", "unix:namespace:host"))
	// Same SPIFFE ID as e-uid: ordering falls back to entry ID.
	x.Put(mkEntry("a-uid-gid", "spiffe://example.org/web", "unix:uid:1000", "unix:gid:1000"))
	// Duplicate selectors in an entry count once.
	x.Put(mkEntry("e-dup", "spiffe://example.org/dup", "unix:gid:50", "unix:gid:50"))

	tests := []struct {
		name   string
		caller []string
		want   []string
	}{
		{"nothing", nil, nil},
		{"unknown", []string{"unix:uid:3000"}, nil},
		{"uid only", []string{"unix:uid:1000"}, []string{"e-uid"}},
		{"uid and path", []string{"unix:path:/usr/bin/envoy", "unix:uid:1000"},
			[]string{"e-path", "e-uid-path", "e-uid"}},
		{"all of an entry's selectors needed", []string{"systemd:unit:envoy.service"}, nil},
		{"superset of selectors", []string{"unix:namespace:host", "unix:uid:9", "systemd:unit:envoy.service", "unix:gid:9"}, []string{"e-unit"}},
		{"same SPIFFE ID ordered by entry ID", []string{"unix:uid:1000", "unix:gid:1000"}, []string{"a-uid-gid", "e-uid"}},
		{"caller duplicates", []string{"unix:uid:1000", "unix:uid:1000", "unix:gid:1000", "unix:uid:1000"}, []string{"a-uid-gid", "e-uid"}},
		{"entry with duplicate selectors", []string{"unix:gid:50"}, []string{"e-dup"}},
		{"prefix is not a match", []string{"unix:uid:100"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caller := sel(tt.caller...)
			got := x.Match(caller)
			if !slices.Equal(ids(got), tt.want) {
				t.Fatalf("Match(%v) = %v, want %v", tt.caller, ids(got), tt.want)
			}
			// The index and the pure predicate agree, for every entry.
			for _, id := range []string{"e-uid", "e-uid-path", "e-path", "e-other", "e-unit", "a-uid-gid", "e-dup"} {
				e, ok := x.Get(id)
				if !ok {
					t.Fatalf("Get(%q) missing", id)
				}
				if Matches(e, caller) != slices.Contains(tt.want, id) {
					t.Fatalf("Matches(%s, %v) = %v, disagrees with Match", id, tt.caller, Matches(e, caller))
				}
			}
		})
	}
}

func TestIndexPutReplaceDelete(t *testing.T) {
	x := NewIndex()
	x.Put(mkEntry("1", "spiffe://example.org/a", "unix:uid:1", "unix:sha256:"+sha))
	x.Put(mkEntry("2", "spiffe://example.org/b", "unix:uid:1"))
	if x.Len() != 2 {
		t.Fatalf("Len = %d, want 2", x.Len())
	}
	caller := sel("unix:uid:1", "unix:sha256:"+sha)
	if got := ids(x.Match(caller)); !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("Match = %v", got)
	}
	if !x.UsesSelectorKind("unix:sha256") || !x.UsesSelectorKind("unix:uid") {
		t.Fatal("UsesSelectorKind: want unix:sha256 and unix:uid in use")
	}
	if x.UsesSelectorKind("unix:path") || x.UsesSelectorKind("unix") || x.UsesSelectorKind("unix:sha") {
		t.Fatal("UsesSelectorKind reports a kind no entry uses")
	}

	// Replace entry 1: new SPIFFE ID, no sha256 selector, different uid.
	x.Put(mkEntry("1", "spiffe://example.org/z", "unix:uid:2"))
	if x.Len() != 2 {
		t.Fatalf("Len after replace = %d, want 2", x.Len())
	}
	if got := ids(x.Match(caller)); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("Match after replace = %v, want [2] (old selectors must be gone)", got)
	}
	if got := x.Match(sel("unix:uid:2")); len(got) != 1 || got[0].SPIFFEID.String() != "spiffe://example.org/z" {
		t.Fatalf("Match(uid 2) after replace = %v", got)
	}
	if x.UsesSelectorKind("unix:sha256") {
		t.Fatal("UsesSelectorKind(unix:sha256) still true after the only entry using it was replaced")
	}

	x.Delete("2")
	x.Delete("2") // deleting twice is harmless
	x.Delete("never existed")
	if _, ok := x.Get("2"); ok {
		t.Fatal("Get after Delete found the entry")
	}
	if got := x.Match(caller); len(got) != 0 {
		t.Fatalf("Match after Delete = %v, want none", ids(got))
	}
	if x.Len() != 1 || !x.UsesSelectorKind("unix:uid") {
		t.Fatalf("Len = %d, UsesSelectorKind(unix:uid) = %v; want 1, true", x.Len(), x.UsesSelectorKind("unix:uid"))
	}
	x.Delete("1")
	if x.Len() != 0 || x.UsesSelectorKind("unix:uid") {
		t.Fatal("index not empty after deleting everything")
	}
	if len(x.byAnchor) != 0 || len(x.selCount) != 0 || len(x.kindCount) != 0 {
		t.Fatalf("index leaks bookkeeping after deleting everything: %d anchors, %d selectors, %d kinds",
			len(x.byAnchor), len(x.selCount), len(x.kindCount))
	}
}

func TestIndexOwnsItsCopy(t *testing.T) {
	x := NewIndex()
	e := mkEntry("1", "spiffe://example.org/a", "unix:uid:1")
	e.DNSNames = []string{"a.example.org"}
	x.Put(e)
	e.Selectors[0] = Selector{"unix", "uid:2"}
	e.DNSNames[0] = "changed"
	if got := ids(x.Match(sel("unix:uid:1"))); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("Match = %v after the caller modified its slices", got)
	}
	if got, _ := x.Get("1"); got.DNSNames[0] != "a.example.org" {
		t.Fatalf("DNSNames = %v after the caller modified its slice", got.DNSNames)
	}
}

func TestEntryWithoutSelectorsMatchesNobody(t *testing.T) {
	x := NewIndex()
	e := mkEntry("empty", "spiffe://example.org/a")
	x.Put(e)
	if got := x.Match(sel("unix:uid:0")); len(got) != 0 {
		t.Fatalf("Match = %v, want none for an entry with no selectors", ids(got))
	}
	if Matches(e, sel("unix:uid:0")) || Matches(e, nil) {
		t.Fatal("Matches = true for an entry with no selectors")
	}
	if _, ok := x.Get("empty"); !ok || x.Len() != 1 {
		t.Fatal("entry without selectors not kept")
	}
	x.Delete("empty")
	if x.Len() != 0 {
		t.Fatal("Delete of an entry without selectors failed")
	}
}

// TestIndexMatchesBruteForce checks Match against the pure predicate over random entries
// and callers, through puts, replaces and deletes (which move anchors around).
func TestIndexMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pool := sel("unix:uid:0", "unix:uid:1", "unix:uid:2", "unix:gid:0", "unix:gid:1",
		"unix:path:/a", "unix:path:/b", "unix:namespace:host", "systemd:unit:a.service", "unix:sha256:"+sha,
		"unix:sha256:"+strings.Repeat("c", 64))
	pick := func(n int) []Selector {
		out := make([]Selector, n)
		for i := range out {
			out[i] = pool[r.IntN(len(pool))]
		}
		return out
	}
	x := NewIndex()
	all := map[string]Entry{}
	for step := range 3000 {
		id := fmt.Sprint(r.IntN(200))
		if r.IntN(4) == 0 {
			x.Delete(id)
			delete(all, id)
		} else {
			e := Entry{ID: id, SPIFFEID: spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/w%d", r.IntN(20))), Selectors: pick(1 + r.IntN(3))}
			x.Put(e)
			all[id] = e
		}
		caller := pick(r.IntN(6))
		var want []Entry
		for _, e := range all {
			if Matches(e, caller) {
				want = append(want, e)
			}
		}
		slices.SortFunc(want, compareForMatch)
		if got := x.Match(caller); !slices.Equal(ids(got), ids(want)) {
			t.Fatalf("step %d: Match(%v) = %v, brute force says %v", step, caller, ids(got), ids(want))
		}
		if x.Len() != len(all) {
			t.Fatalf("step %d: Len = %d, want %d", step, x.Len(), len(all))
		}
		// NeedsDigest is asked of callers attested without the digest.
		noDigest := slices.DeleteFunc(slices.Clone(caller), func(s Selector) bool { return selectorKind(s) == KindSHA256 })
		wantNeed := false
		for _, e := range all {
			wantNeed = wantNeed || NeedsDigestFor(e, noDigest)
		}
		if got := x.NeedsDigest(noDigest); got != wantNeed {
			t.Fatalf("step %d: NeedsDigest(%v) = %v, brute force says %v", step, noDigest, got, wantNeed)
		}
	}
}

// TestNeedsDigest: a caller needs its binary hashed only when some entry with a unix:sha256
// selector has all its other selectors among the caller's.
func TestNeedsDigest(t *testing.T) {
	other := strings.Repeat("b", 64)
	x := NewIndex()
	if x.NeedsDigest(sel("unix:uid:1000")) {
		t.Fatal("empty index needs a digest")
	}
	x.Put(mkEntry("e-uid", "spiffe://example.org/web", "unix:uid:1000"))
	x.Put(mkEntry("e-envoy", "spiffe://example.org/envoy", "unix:uid:1001", "unix:sha256:"+sha))
	x.Put(mkEntry("e-envoy-host", "spiffe://example.org/envoy-host", "unix:uid:1003", "unix:namespace:host", "unix:sha256:"+other))
	tests := []struct {
		caller []string
		want   bool
	}{
		{nil, false},
		{[]string{"unix:uid:1000"}, false},
		{[]string{"unix:uid:1001"}, true},
		{[]string{"unix:uid:1001", "unix:gid:5"}, true},
		{[]string{"unix:uid:1003"}, false},
		{[]string{"unix:uid:1003", "unix:namespace:host"}, true},
		{[]string{"unix:uid:1002", "unix:namespace:host"}, false},
	}
	for _, tt := range tests {
		if got := x.NeedsDigest(sel(tt.caller...)); got != tt.want {
			t.Errorf("NeedsDigest(%v) = %v, want %v", tt.caller, got, tt.want)
		}
	}
	// An entry whose only selectors are digests needs every caller hashed, until it goes.
	x.Put(mkEntry("e-any", "spiffe://example.org/any", "unix:sha256:"+other))
	if !x.NeedsDigest(sel("unix:uid:1000")) {
		t.Error("a digest-only entry does not make every caller need a digest")
	}
	x.Delete("e-any")
	x.Delete("e-envoy")
	if x.NeedsDigest(sel("unix:uid:1001")) || x.NeedsDigest(sel("unix:uid:1000")) {
		t.Error("deleted digest entries still need a digest")
	}
	// Replacing an entry refiles it.
	x.Put(mkEntry("e-uid", "spiffe://example.org/web", "unix:uid:1000", "unix:sha256:"+sha))
	if !x.NeedsDigest(sel("unix:uid:1000")) {
		t.Error("an entry updated to use a digest is not found")
	}
}

// benchIndex builds 10,000 entries shaped like a busy host: each has a uid (1,000 distinct), a
// binary path (100 distinct) and, for a third of them, the common unix:namespace:host.
func benchIndex() (*Index, []Selector) {
	x := NewIndex()
	for i := range 10000 {
		sels := []string{fmt.Sprintf("unix:uid:%d", i%1000), fmt.Sprintf("unix:path:/usr/bin/app%d", i%100)}
		if i%3 == 0 {
			sels = append(sels, "unix:namespace:host")
		}
		x.Put(mkEntry(fmt.Sprintf("id-%05d", i), fmt.Sprintf("spiffe://example.org/w/%d", i), sels...))
	}
	caller := sel("unix:uid:42", "unix:user:envoy", "unix:gid:42", "unix:group:envoy",
		"unix:supplementary_gid:4", "unix:supplementary_gid:27", "unix:path:/usr/bin/app42",
		"unix:namespace:host", "unix:cgroup:/system.slice/envoy.service", "systemd:unit:envoy.service")
	return x, caller
}

func TestBenchIndexShape(t *testing.T) {
	x, caller := benchIndex()
	got := x.Match(caller)
	// uid 42 and app42 coincide for i ≡ 42 (mod 100) with i%1000 == 42: i = 42, 1042, ..., 9042.
	if len(got) != 10 {
		t.Fatalf("Match found %d entries, want 10", len(got))
	}
}

func BenchmarkMatch(b *testing.B) {
	x, caller := benchIndex()
	b.ReportAllocs()
	for b.Loop() {
		if len(x.Match(caller)) == 0 {
			b.Fatal("no match")
		}
	}
}
