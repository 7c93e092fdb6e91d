package entry

import (
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestIndexExplain(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	mk := func(id, path string, sels ...string) Entry {
		s, err := ParseSelectors(sels)
		if err != nil {
			t.Fatal(err)
		}
		return Entry{ID: id, SPIFFEID: spiffeid.RequireFromPath(td, path), Selectors: s}
	}
	x := NewIndex()
	x.Put(mk("a", "/web", "unix:uid:1000", "unix:path:/usr/bin/envoy"))
	x.Put(mk("b", "/any", "unix:uid:1000"))
	x.Put(mk("c", "/db", "unix:uid:2000", "unix:path:/usr/bin/pg", "unix:gid:2000"))
	x.Put(mk("d", "/exact", "unix:uid:1000", "unix:gid:1000", "unix:path:/usr/bin/envoy"))
	x.Put(mk("e", "/path-only", "unix:path:/usr/bin/envoy"))
	caller, _ := ParseSelectors([]string{"unix:uid:1000", "unix:gid:1000", "unix:path:/usr/local/bin/envoy"})

	matched, near := x.Explain(caller, 10)
	if len(matched) != 1 || matched[0].ID != "b" {
		t.Fatalf("matched %v, want b", matched)
	}
	var order []string
	for _, n := range near {
		order = append(order, n.Entry.ID)
	}
	// d: has 2 of 3; a: 1 of 2; c: 0 of 3 (more missing) after e: 0 of 1.
	if want := []string{"d", "a", "e", "c"}; !slices.Equal(order, want) {
		t.Fatalf("near misses %v, want %v", order, want)
	}
	if got := near[0].Missing; len(got) != 1 || got[0].String() != "unix:path:/usr/bin/envoy" || near[0].Has != 2 {
		t.Errorf("d: missing %v has %d, want unix:path:/usr/bin/envoy and 2", got, near[0].Has)
	}
	if _, near := x.Explain(caller, 2); len(near) != 2 {
		t.Errorf("maxNear 2 gave %d", len(near))
	}
}
