package ca

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/testpki"
)

func newStepCAUpstream(t *testing.T, s *testpki.StepCA) *StepCA {
	t.Helper()
	u, err := NewStepCA(StepCAConfig{URL: s.URL, RootFile: s.RootFile, Provisioner: s.Provisioner, ProvisionerKeyFile: s.KeyFile, PasswordFile: s.PasswordFile})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestUpstreamStepCA runs a real step-ca (the pinned version, built once into a cache) and
// gets host CAs from it through the JWK provisioner: the chain is leaf, host CA (named after
// the host, pathLen 0), step-ca's intermediate; the bundle is step-ca's root; a rotation gets
// a fresh key from step-ca again. A wrong password is refused at construction.
func TestUpstreamStepCA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	s := testpki.StartStepCA(t, t.TempDir(), 10*time.Second)
	u := newStepCAUpstream(t, s) // decrypting the key takes a while: read the clock after
	clk := &fakeClock{t: time.Now()}
	c := newTestCA(t, t.TempDir(), clk, withUpstream(u, "host-step"), func(cfg *Config) {
		cfg.CATTL, cfg.SVIDTTL = time.Hour, 5*time.Minute
	})
	if !bytes.Equal(c.Bundle().PEM, testpki.CertPEM(s.Root.Cert)) {
		t.Fatal("bundle is not step-ca's root")
	}
	sv, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sv.Certificates) != 3 {
		t.Fatalf("chain of %d certificates, want leaf, host CA, step-ca intermediate", len(sv.Certificates))
	}
	host := sv.Certificates[1]
	if host.Subject.CommonName != "host-step" || !host.IsCA || !host.MaxPathLenZero || host.URIs[0].String() != "spiffe://example.org" {
		t.Fatalf("host CA: subject %s, isCA %v, pathLen0 %v, URIs %v", host.Subject, host.IsCA, host.MaxPathLenZero, host.URIs)
	}
	if got := host.NotAfter.Sub(host.NotBefore); got < 50*time.Minute || got > 70*time.Minute {
		t.Fatalf("host CA lifetime %s, want about the 1h asked", got)
	}
	verify(t, sv, c.Bundle(), time.Now())
	if err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(s.Logs(), "/1.0/sign"); n < 2 {
		t.Fatalf("step-ca logged %d sign requests, want 2:\n%s", n, s.Logs())
	}

	testpki.Write(t, s.PasswordFile, []byte("wrong"), 0o600)
	_, err = NewStepCA(StepCAConfig{URL: s.URL, RootFile: s.RootFile, Provisioner: s.Provisioner, ProvisionerKeyFile: s.KeyFile, PasswordFile: s.PasswordFile})
	mustContain(t, err, "decrypting provisioner key", "password.txt")
}
