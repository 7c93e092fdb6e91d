package agent

import (
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

func bundleTDs(v *workload.View) []string {
	var out []string
	for _, b := range v.Bundles {
		out = append(out, b.TrustDomain.Name())
	}
	return out
}

// TestFederatedBundlesPerCaller: a caller receives the federated bundles its entries federate
// with (and those given to every workload), never others'; an entry may federate with a trust
// domain whose bundle has not arrived, and gets it when it does; a bundle that leaves is
// taken out of the Views that held it.
func TestFederatedBundlesPerCaller(t *testing.T) {
	c, _, _ := newTestCache(t)
	other := spiffeid.RequireTrustDomainFromString("other.org")
	third := spiffeid.RequireTrustDomainFromString("third.org")
	fed := mkEntry(t, "e1", "spiffe://example.org/fed", 1, "unix:uid:1000")
	fed.FederatesWith = []spiffeid.TrustDomain{other, spiffeid.RequireTrustDomainFromString("later.org")}
	c.load([]entry.Entry{fed, mkEntry(t, "e2", "spiffe://example.org/plain", 1, "unix:uid:1001")})
	subFed, _ := c.subscribe(sels(t, "unix:uid:1000"), nil, nil, nil)
	defer subFed.Close()
	subPlain, _ := c.subscribe(sels(t, "unix:uid:1001"), nil, nil, nil)
	defer subPlain.Close()
	if got := bundleTDs(latest(subFed)); !slices.Equal(got, []string{"example.org"}) {
		t.Fatalf("before any federated bundle: %v", got)
	}
	latest(subPlain)

	bOther := &workload.Bundle{TrustDomain: other, Sequence: 1}
	bThird := &workload.Bundle{TrustDomain: third, Sequence: 1}
	c.setFederation(federation.Snapshot{Bundles: map[spiffeid.TrustDomain]*workload.Bundle{other: bOther, third: bThird}})
	if got := bundleTDs(latest(subFed)); !slices.Equal(got, []string{"example.org", "other.org"}) {
		t.Fatalf("federating caller: %v, want its own and other.org only", got)
	}
	if v := latest(subPlain); v != nil {
		t.Fatalf("a caller federating with nothing got a new View: %v", bundleTDs(v))
	}

	// later.org arrives; third.org goes to every workload.
	later := spiffeid.RequireTrustDomainFromString("later.org")
	c.setFederation(federation.Snapshot{
		Bundles: map[spiffeid.TrustDomain]*workload.Bundle{other: bOther, third: bThird, later: {TrustDomain: later}},
		ToAll:   []spiffeid.TrustDomain{third},
	})
	if got := bundleTDs(latest(subFed)); !slices.Equal(got, []string{"example.org", "later.org", "other.org", "third.org"}) {
		t.Fatalf("after later.org arrived: %v", got)
	}
	if got := bundleTDs(latest(subPlain)); !slices.Equal(got, []string{"example.org", "third.org"}) {
		t.Fatalf("to_all_workloads: %v", got)
	}

	// The entry stops federating with other.org.
	upd := fed
	upd.FederatesWith = []spiffeid.TrustDomain{later}
	upd.Revision = 2
	c.apply(store.Change{Op: store.OpUpdate, Entry: upd, Old: fed})
	if got := bundleTDs(latest(subFed)); !slices.Equal(got, []string{"example.org", "later.org", "third.org"}) {
		t.Fatalf("after the entry dropped other.org: %v", got)
	}
	// Every federation ends.
	c.setFederation(federation.Snapshot{})
	if got := bundleTDs(latest(subFed)); !slices.Equal(got, []string{"example.org"}) {
		t.Fatalf("after the federations ended: %v", got)
	}
}
