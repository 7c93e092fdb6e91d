package test

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/svidd/svidd/test/envoy"
)

// TestStatusShowsHeldIdentities: svidctl status lists the CA and each identity held with the
// number of streams holding it.
func TestStatusShowsHeldIdentities(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/status"
	a.createEntry(id, "-selector", "unix:uid:0")
	s1 := dialAgentNames(t, a, []string{id})
	s2 := dialAgentNames(t, a, []string{id, tdID})
	ctx := ctxFor(t, time.Minute)
	for _, s := range []*envoy.SotW{s1, s2} {
		if _, err := s.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var st struct {
		TrustDomain string `json:"trust_domain"`
		Streams     int    `json:"streams"`
		Authorities []struct {
			State string `json:"state"`
		} `json:"authorities"`
		Identities []struct {
			SPIFFEID string    `json:"spiffe_id"`
			Streams  int       `json:"streams"`
			NotAfter time.Time `json:"not_after"`
			RotateAt time.Time `json:"rotate_at"`
		} `json:"identities"`
	}
	if err := json.Unmarshal([]byte(a.mustSvidctl("status", "-output", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.TrustDomain != "example.org" || st.Streams != 2 || len(st.Authorities) != 1 || st.Authorities[0].State != "active" {
		t.Fatalf("status = %+v", st)
	}
	if len(st.Identities) != 1 || st.Identities[0].SPIFFEID != id || st.Identities[0].Streams != 2 || !st.Identities[0].RotateAt.Before(st.Identities[0].NotAfter) {
		t.Fatalf("identities = %+v, want %s held by 2 streams", st.Identities, id)
	}
	out := a.mustSvidctl("status")
	for _, want := range []string{"example.org", id, "active", "█", "in "} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

// TestForcedCARotationPushesBundleBeforeNewSVIDs: `ca prepare` publishes the next CA to every
// open stream; after `ca activate`, newly minted SVIDs chain to it and verify against the
// bundle the stream already holds.
func TestForcedCARotationPushesBundleBeforeNewSVIDs(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/rot"
	entryID := a.createEntry(id, "-selector", "unix:uid:0")
	s := dialAgentNames(t, a, []string{id, tdID})
	ctx := ctxFor(t, time.Minute)
	first, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := envoy.TrustedCA(first.Get(tdID))
	if err != nil || len(roots) != 1 {
		t.Fatalf("initial bundle: %d roots, %v", len(roots), err)
	}

	a.mustSvidctl("ca", "prepare")
	r, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundle2, err := envoy.TrustedCA(r.Get(tdID))
	if err != nil || len(bundle2) != 2 {
		t.Fatalf("after prepare: %d roots, %v; want the next CA published", len(bundle2), err)
	}
	if _, err := a.svidctl("ca", "prepare"); err == nil {
		t.Fatal("a second prepare succeeded; want a clear refusal")
	}

	a.mustSvidctl("ca", "activate")
	a.mustSvidctl("entry", "update", "-entryID", entryID, "-dns", "rot.local") // force a re-mint
	for {
		r, err = s.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r.Get(id) != nil {
			break
		}
	}
	svid := verifySVIDFromSecrets(t, r, id, bundle2)
	if svid.CheckSignatureFrom(roots[0]) == nil {
		t.Fatal("after activate the SVID is still signed by the first CA")
	}
	if out := a.mustSvidctl("ca", "show"); !strings.Contains(out, "prepared") && !strings.Contains(out, "old") {
		t.Fatalf("ca show after activate:\n%s", out)
	}
}

// TestSIGHUPReloadsEntries: a new entry block reaches an open stream on SIGHUP, without the
// stream reconnecting; a broken file changes nothing.
func TestSIGHUPReloadsEntries(t *testing.T) {
	const id = "spiffe://example.org/hup"
	a := startAgent(t, withConfig("# empty\n"))
	s := dialAgentNames(t, a, []string{id})
	ctx := ctxFor(t, time.Minute)
	if r, err := s.RecvWithin(ctx, 300*time.Millisecond); r != nil || err != nil {
		t.Fatalf("before reload: %v %v", r, err)
	}

	// A file with a mistake: reported, nothing changes, the agent keeps running.
	if err := os.WriteFile(a.config, []byte("entry \"hup\" {\n  spiffe_id = \"spiffe://example.org/hup\"\n  selectors = [\"unix:uid:zero\"]\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, a, "configuration not applied")
	if r, err := s.RecvWithin(ctx, 300*time.Millisecond); r != nil || err != nil {
		t.Fatalf("after a bad reload: %v %v", r, err)
	}

	if err := os.WriteFile(a.config, []byte("agent {\n  log_level = \"warn\"\n}\nentry \"hup\" {\n  spiffe_id = \"spiffe://example.org/hup\"\n  selectors = [\"unix:uid:0\"]\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leafOf(t, r, id)
	if s.Sent() == 0 {
		t.Fatal("client sent nothing")
	}
	waitLog(t, a, "configuration reloaded")
	if es := a.entries(); len(es) != 1 || es[0].Name != "hup" {
		t.Fatalf("entries after reload: %+v", es)
	}
}

func waitLog(t *testing.T, a *agent, substr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.logs.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", substr, a.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verifySVIDFromSecrets checks the SVID named id in r with go-spiffe against roots and returns
// its leaf.
func verifySVIDFromSecrets(t *testing.T, r *envoy.Response, id string, roots []*x509.Certificate) *x509.Certificate {
	t.Helper()
	certs, _, err := envoy.CertAndKey(r.Get(id))
	if err != nil {
		t.Fatal(err)
	}
	var raw [][]byte
	for _, c := range certs {
		raw = append(raw, c.Raw)
	}
	got, _, err := x509svid.ParseAndVerify(raw, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		t.Fatalf("SVID does not verify against the bundle the stream holds: %v", err)
	}
	if got.String() != id {
		t.Fatalf("SVID for %s, want %s", got, id)
	}
	return certs[0]
}
