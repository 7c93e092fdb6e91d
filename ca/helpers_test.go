package ca

import (
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/svidd/svidd/pkg/workload"
)

var (
	td     = spiffeid.RequireTrustDomainFromString("example.org")
	t0     = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	wlID   = spiffeid.RequireFromString("spiffe://example.org/backend")
	testCA = 6 * time.Hour
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = t
}

// newTestCA opens (or creates) a CA in dir with CATTL 6h, SVID TTL 1h and a fake clock.
func newTestCA(t testing.TB, dir string, clk *fakeClock, mod ...func(*Config)) *CA {
	t.Helper()
	cfg := Config{TrustDomain: td, Dir: dir, CATTL: testCA, SVIDTTL: time.Hour, Clock: clk.Now}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// verify checks svid with go-spiffe against b (decoded from its PEM, so the encoding is
// tested too) at time at, and returns the root it chains to.
func verify(t *testing.T, svid *workload.SVID, b *workload.Bundle, at time.Time) *x509.Certificate {
	t.Helper()
	xb, err := x509bundle.Parse(b.TrustDomain, b.PEM)
	if err != nil {
		t.Fatalf("parsing bundle PEM: %v", err)
	}
	raw, err := x509bundle.ParseRaw(b.TrustDomain, b.DER)
	if err != nil {
		t.Fatalf("parsing bundle DER: %v", err)
	}
	if !raw.Equal(xb) {
		t.Fatalf("bundle PEM and DER differ")
	}
	certs, err := x509.ParseCertificates(svid.CertChainDER)
	if err != nil {
		t.Fatalf("parsing chain DER: %v", err)
	}
	var rawCerts [][]byte
	for _, c := range certs {
		rawCerts = append(rawCerts, c.Raw)
	}
	id, chains, err := x509svid.ParseAndVerify(rawCerts, xb, x509svid.WithTime(at))
	if err != nil {
		t.Fatalf("ParseAndVerify: %v", err)
	}
	if id != svid.ID {
		t.Fatalf("verified ID %s, want %s", id, svid.ID)
	}
	if _, err := x509svid.Parse(svid.CertChainPEM, svid.KeyPEM); err != nil {
		t.Fatalf("x509svid.Parse(PEM): %v", err)
	}
	if _, err := x509svid.ParseRaw(svid.CertChainDER, svid.KeyDER); err != nil {
		t.Fatalf("x509svid.ParseRaw(DER): %v", err)
	}
	chain := chains[0]
	return chain[len(chain)-1]
}

func skis(c *CA) map[State][]string {
	out := map[State][]string{}
	for _, a := range c.Authorities() {
		out[a.State] = append(out[a.State], a.SKI)
	}
	return out
}

func mustContain(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q does not contain %q", err, s)
		}
	}
}

// x509svidVerifyNow is verify without testing.T, for goroutines.
func x509svidVerifyNow(s *workload.SVID, c *CA, at time.Time) (spiffeid.ID, error) {
	xb, err := x509bundle.Parse(td, c.Bundle().PEM)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, _, err := x509svid.ParseAndVerify([][]byte{s.CertChainDER}, xb, x509svid.WithTime(at))
	return id, err
}
