package workloadtest

import (
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/workload"
)

// The trust domains and SPIFFE IDs of the shared fixture.
var (
	ExampleTD = spiffeid.RequireTrustDomainFromString("example.org")
	OtherTD   = spiffeid.RequireTrustDomainFromString("other.org")
)

const (
	IDWeb = "spiffe://example.org/web"
	IDDB  = "spiffe://example.org/db"
)

// Fixture holds the certificates most front-end tests share: a caller's two SVIDs, its own
// trust domain's bundle and a federated one. It is immutable: tests that need other
// certificates mint their own.
type Fixture struct {
	CA, Fed        *CA // example.org (JWT key "k1"), other.org ("fed1")
	Web, DB        *workload.SVID
	Own, Federated *workload.Bundle // sequence numbers 1 and 7
}

var (
	fixtureOnce sync.Once
	fixture     *Fixture
)

// SharedFixture returns the process's one Fixture, made on first use: key generation is the
// slow part of these tests.
func SharedFixture(t testing.TB) *Fixture {
	fixtureOnce.Do(func() {
		ca, fed := NewCA(t, ExampleTD, "k1"), NewCA(t, OtherTD, "fed1")
		fixture = &Fixture{
			CA: ca, Fed: fed,
			Web: ca.Mint(t, IDWeb), DB: ca.Mint(t, IDDB),
			Own: ca.Bundle(t, 1), Federated: fed.Bundle(t, 7),
		}
	})
	return fixture
}

// View is the caller's usual View: the agent orders SVIDs by SPIFFE ID, so db comes first.
func (f *Fixture) View() *workload.View {
	return &workload.View{SVIDs: []*workload.SVID{f.DB, f.Web}, Bundles: []*workload.Bundle{f.Own, f.Federated}}
}
