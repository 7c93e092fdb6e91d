package fleet_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestNextSequence(t *testing.T) {
	a, b := []byte("a"), []byte("b")
	for _, tc := range []struct {
		name      string
		prev      uint64
		prevFP    []byte
		fp        []byte
		rev       int64
		want      uint64
		rationale string
	}{
		{"unchanged", 5 << 16, a, a, 5, 5 << 16, "nothing moved"},
		{"unchanged, registry behind", 5<<16 + 2, a, a, 5, 5<<16 + 2, "a local change counted; the registry has not moved"},
		{"registry moved, same contents", 5 << 16, a, a, 6, 6 << 16, "every host follows the registry's revision"},
		{"local change", 5 << 16, a, b, 5, 5<<16 + 1, "offline rotation: counted in the low bits"},
		{"local then registry", 5<<16 + 3, a, b, 6, 6 << 16, "the registry lifts every host to the same value"},
		{"first start from the CA's sequence", 7, nil, a, 0, 8, "no registry yet: one more than the CA's"},
		{"first start with a registry", 7, nil, a, 3, 3 << 16, ""},
		{"registry older than the floor", 9 << 16, a, b, 3, 9<<16 + 1, "never backwards"},
	} {
		if got := fleet.NextSequence(tc.prev, tc.prevFP, tc.fp, tc.rev); got != tc.want {
			t.Errorf("%s: NextSequence(%d, %s, %s, %d) = %d, want %d (%s)", tc.name, tc.prev, tc.prevFP, tc.fp, tc.rev, got, tc.want, tc.rationale)
		}
	}
}

// host is one host's bundle state for the sequence tests: its CA's bundle (shared X.509
// roots, its own JWT keys), a real SQLite copy and a Bundler over it.
type host struct {
	t    *testing.T
	path string
	db   *store.SQLite
	b    *fleet.Bundler
	own  map[string]crypto.PublicKey
	last uint64
}

func newHost(t *testing.T) *host {
	h := &host{t: t, path: filepath.Join(t.TempDir(), "svidd.db"), own: map[string]crypto.PublicKey{}}
	h.restart()
	t.Cleanup(func() { h.db.Close() })
	return h
}

// restart reopens the store and starts a new Bundler from it, as a restarted svidd does.
func (h *host) restart() {
	if h.db != nil {
		h.db.Close()
	}
	db, err := store.OpenSQLite(context.Background(), h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	_, st, err := db.FleetKeys(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	h.db, h.b = db, fleet.NewBundler(db, st.Sequence, st.Fingerprint)
}

// serve assembles the bundle with others' keys at registry revision rev, checks it is well
// formed and its sequence did not go backwards, and returns the sequence.
func (h *host) serve(base *workload.Bundle, others []fleet.Key, rev int64) uint64 {
	h.t.Helper()
	own := *base
	own.JWTAuthorities = maps.Clone(h.own)
	own.JWKS = nil
	b, _, err := h.b.Bundle(context.Background(), &own, others, rev)
	if err != nil {
		h.t.Fatal(err)
	}
	if b.Sequence < h.last {
		h.t.Fatalf("sequence went backwards: %d after %d", b.Sequence, h.last)
	}
	h.last = b.Sequence
	jb, err := jwtbundle.Parse(td, b.JWKS)
	if err != nil {
		h.t.Fatalf("JWKS does not parse: %v", err)
	}
	var doc struct {
		Sequence uint64 `json:"spiffe_sequence"`
	}
	if err := json.Unmarshal(b.JWKS, &doc); err != nil || doc.Sequence != b.Sequence {
		h.t.Fatalf("JWKS spiffe_sequence %d, bundle %d (%v)", doc.Sequence, b.Sequence, err)
	}
	want := slices.Sorted(maps.Keys(h.own))
	for _, k := range others {
		want = append(want, k.KID)
	}
	slices.Sort(want)
	if got := slices.Sorted(maps.Keys(jb.JWTAuthorities())); !slices.Equal(got, want) {
		h.t.Fatalf("JWKS keys %v, want %v", got, want)
	}
	return b.Sequence
}

func pub(t *testing.T) crypto.PublicKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// TestSequenceAcrossHosts walks two hosts through restarts, an offline rotation and a key
// expiring locally before its lease ends: the sequence never goes backwards on either, and
// both serve the same one whenever they have seen the same registry history.
func TestSequenceAcrossHosts(t *testing.T) {
	base := workloadtest.NewCA(t, td, "unused").Bundle(t, 3) // the shared upstream roots
	base.JWTAuthorities = nil
	na := time.Now().Add(time.Hour)
	A, B := newHost(t), newHost(t)
	a1, a2, b1 := pub(t), pub(t), pub(t)
	A.own["a1"], B.own["b1"] = a1, b1
	keyA1 := fleet.Key{Node: "a", KID: "a1", Public: a1, NotAfter: na}
	keyA2 := fleet.Key{Node: "a", KID: "a2", Public: a2, NotAfter: na}
	keyB1 := fleet.Key{Node: "b", KID: "b1", Public: b1, NotAfter: na}

	// Both published, both caught up at revision 10.
	sa, sb := A.serve(base, []fleet.Key{keyB1}, 10), B.serve(base, []fleet.Key{keyA1}, 10)
	if sa != sb || sa != 10<<16 {
		t.Fatalf("caught up: A %d, B %d; want both %d", sa, sb, 10<<16)
	}
	// A restart that finds the same contents serves the same sequence.
	A.restart()
	if s := A.serve(base, []fleet.Key{keyB1}, 10); s != sa {
		t.Fatalf("after a restart: %d, want %d", s, sa)
	}
	// etcd unreachable: A's CA prepares a2. A counts it locally; B has not seen it.
	A.own["a2"] = a2
	off := A.serve(base, []fleet.Key{keyB1}, 10)
	if off != sa+1 {
		t.Fatalf("offline rotation: %d, want %d", off, sa+1)
	}
	// A restarts, still offline: the same contents, the same sequence.
	A.restart()
	if s := A.serve(base, []fleet.Key{keyB1}, 10); s != off {
		t.Fatalf("offline restart: %d, want %d", s, off)
	}
	// etcd back: A publishes a2 at revision 12; both hosts see it.
	sa, sb = A.serve(base, []fleet.Key{keyB1}, 12), B.serve(base, []fleet.Key{keyA1, keyA2}, 12)
	if sa != sb || sa != 12<<16 {
		t.Fatalf("after the registry caught up: A %d, B %d; want both %d", sa, sb, 12<<16)
	}
	// a1 expires: A's CA drops it and B drops it locally, each before the lease's delete
	// reaches the registry (revision 13).
	delete(A.own, "a1")
	A.serve(base, []fleet.Key{keyB1}, 12)
	B.serve(base, []fleet.Key{keyA2}, 12)
	B.restart() // and B restarts meanwhile
	B.serve(base, []fleet.Key{keyA2}, 12)
	sa, sb = A.serve(base, []fleet.Key{keyB1}, 13), B.serve(base, []fleet.Key{keyA2}, 13)
	if sa != sb || sa != 13<<16 {
		t.Fatalf("after the lease ended: A %d, B %d; want both %d", sa, sb, 13<<16)
	}
}

// TestBundlerStartsAboveCA: the first fleet bundle of a host that served the CA's own
// sequence (store "sqlite" before) is above it.
func TestBundlerStartsAboveCA(t *testing.T) {
	h := newHost(t)
	h.own["k"] = pub(t)
	base := workloadtest.NewCA(t, td, "unused").Bundle(t, 41)
	if s := h.serve(base, nil, 0); s != 42 {
		t.Fatalf("first fleet sequence %d, want 42", s)
	}
}
