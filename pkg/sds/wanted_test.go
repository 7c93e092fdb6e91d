package sds

import (
	"context"
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
)

// hintWatcher records the Need each Watch was given.
type hintWatcher struct {
	needs []workload.Need
}

func (h *hintWatcher) Watch(_ context.Context, _ *peercred.Peer, need workload.Need) (*workload.Subscription, error) {
	h.needs = append(h.needs, need)
	return workload.NewSubscription(&workload.View{}, nil), nil
}

// TestNeed: a stream's first request names become the hint for Watch only when they say
// exactly which SVIDs the stream serves; the default SVID, the wildcard, no names or an
// unknown name need the complete View.
func TestNeed(t *testing.T) {
	const (
		web = "spiffe://example.org/web"
		db  = "spiffe://example.org/db"
	)
	for _, tc := range []struct {
		name  string
		names []string
		want  string // fmt of the IDs needed; "nil" for the complete View
	}{
		{"one SVID and its trust domain", []string{web, "spiffe://example.org"}, "[" + web + "]"},
		{"two SVIDs, one repeated", []string{web, db, web}, "[" + web + " " + db + "]"},
		{"SVID of another trust domain and bundles", []string{"spiffe://other.org/x", "ROOT", "EVERY"}, "[spiffe://other.org/x]"},
		{"bundles only", []string{"ROOT", "spiffe://other.org"}, "[]"},
		{"default SVID", []string{web, "SVID"}, "nil"},
		{"built-in default name is just unknown here", []string{web, "default"}, "nil"},
		{"wildcard", []string{"*", web}, "nil"},
		{"no names", nil, "nil"},
		{"unknown name", []string{web, "file-root:system"}, "nil"},
		{"malformed SPIFFE ID", []string{"spiffe://example.org/web/"}, "nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &hintWatcher{}
			s, err := New(Config{
				Watcher: h, TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
				DefaultSVIDName: "SVID", DefaultBundleName: "ROOT", DefaultAllBundlesName: "EVERY",
				PeerFunc: func(context.Context) (*peercred.Peer, bool) { return peercred.NewPeer(1, 1000, 1000, -1), true },
			})
			if err != nil {
				t.Fatal(err)
			}
			sub, err := s.watch(context.Background(), newStreamLog(s.log, "test", nil), tc.names...)
			if err != nil {
				t.Fatal(err)
			}
			sub.Close()
			got := "nil"
			if n := h.needs[0]; !n.All {
				got = fmt.Sprint(n.IDs)
				if n.IDs == nil {
					got = "[]"
				}
			}
			if got != tc.want {
				t.Fatalf("hint for %q = %s, want %s", tc.names, got, tc.want)
			}
		})
	}
}
