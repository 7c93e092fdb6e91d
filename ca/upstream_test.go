package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/testpki"
)

// diskPKI writes a root and an intermediate (pathLen as given) to dir and returns a disk
// upstream over them.
type diskPKI struct {
	root, inter            *testpki.CA
	cert, key, bundle, dir string
}

func newDiskPKI(t *testing.T, interPathLen int) *diskPKI {
	t.Helper()
	dir := t.TempDir()
	p := &diskPKI{dir: dir, cert: filepath.Join(dir, "up.pem"), key: filepath.Join(dir, "up.key"), bundle: filepath.Join(dir, "roots.pem")}
	p.root = testpki.Root(t, "test root", testpki.NoPathLen, 48*time.Hour)
	p.inter = p.root.Intermediate(t, "test upstream intermediate", interPathLen, 24*time.Hour)
	testpki.Write(t, p.cert, testpki.CertPEM(p.inter.Cert), 0o644)
	testpki.Write(t, p.key, p.inter.KeyPEM(t), 0o600)
	testpki.Write(t, p.bundle, testpki.CertPEM(p.root.Cert), 0o644)
	return p
}

func (p *diskPKI) upstream(t *testing.T, clk *fakeClock) *Disk {
	t.Helper()
	d, err := NewDisk(DiskConfig{CertFile: p.cert, KeyFile: p.key, BundleFile: p.bundle, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func withUpstream(u Upstream, node string) func(*Config) {
	return func(c *Config) { c.Upstream, c.NodeName = u, node }
}

// TestUpstreamDiskHostsShareBundle: two hosts under one disk upstream serve byte-identical
// bundles (the upstream root), each SVID carries leaf + host CA + upstream intermediate and
// verifies against the other host's bundle, through rotations that never change the bundle's
// X.509 bytes; the host CA names the host and chains with pathLen room.
func TestUpstreamDiskHostsShareBundle(t *testing.T) {
	p := newDiskPKI(t, testpki.NoPathLen)
	clk := &fakeClock{t: time.Now()}
	a := newTestCA(t, t.TempDir(), clk, withUpstream(p.upstream(t, clk), "host-a"))
	b := newTestCA(t, t.TempDir(), clk, withUpstream(p.upstream(t, clk), "host-b"))
	want := testpki.CertPEM(p.root.Cert)
	for step := range 8 {
		for _, c := range []*CA{a, b} {
			if got := c.Bundle().PEM; !bytes.Equal(got, want) {
				t.Fatalf("step %d: bundle is not the upstream root:\n%s", step, got)
			}
		}
		sa, err := a.MintX509SVID(wlID, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(sa.Certificates) != 3 || !sa.Certificates[2].Equal(p.inter.Cert) {
			t.Fatalf("chain has %d certificates, want leaf, host CA, upstream intermediate", len(sa.Certificates))
		}
		if cn := sa.Certificates[1].Subject.CommonName; cn != "host-a" {
			t.Fatalf("host CA subject CN %q, want host-a", cn)
		}
		if root := verify(t, sa, b.Bundle(), clk.Now()); !root.Equal(p.root.Cert) {
			t.Fatalf("host a's SVID chains to %s", root.Subject)
		}
		clk.Set(clk.Now().Add(testCA / 3))
		for _, c := range []*CA{a, b} {
			if _, err := c.Rotate(clk.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(a.Authorities()); n < 2 {
		t.Fatalf("%d authorities after rotations", n)
	}
	// A restart reloads the upstream-signed state without asking the upstream.
	dir := a.cfg.Dir
	before := a.Bundle().PEM
	r := newTestCA(t, dir, clk, withUpstream(failingUpstream{}, "host-a"))
	if !bytes.Equal(r.Bundle().PEM, before) {
		t.Fatal("bundle changed across a restart")
	}
}

// TestUpstreamPathLenZeroRefused: an upstream intermediate with pathLen 0 can sign a CA, but
// no verifier accepts what that CA signs: it is refused with an error that says so, at
// start, and no CA is created.
func TestUpstreamPathLenZeroRefused(t *testing.T) {
	p := newDiskPKI(t, 0)
	_, err := NewDisk(DiskConfig{CertFile: p.cert, KeyFile: p.key, BundleFile: p.bundle})
	mustContain(t, err, "pathLenConstraint 0", "up.pem")

	// The same through an upstream that does not check (e.g. a remote one): the CA's own
	// check refuses the chain before anything is minted with it.
	good := newDiskPKI(t, testpki.NoPathLen)
	clk := &fakeClock{t: time.Now()}
	d := good.upstream(t, clk)
	testpki.Write(t, good.cert, testpki.CertPEM(p.inter.Cert), 0o644)
	testpki.Write(t, good.key, p.inter.KeyPEM(t), 0o600)
	testpki.Write(t, good.bundle, testpki.CertPEM(p.root.Cert), 0o644)
	d.last = &diskFiles{cert: p.inter.Cert, signer: p.inter.Key, roots: []*x509.Certificate{p.root.Cert}}
	dir := t.TempDir()
	_, err = New(Config{TrustDomain: td, Dir: dir, CATTL: testCA, Clock: clk.Now, Upstream: d, NodeName: "h"})
	mustContain(t, err, "pathLenConstraint 0")
	if _, err := os.Stat(filepath.Join(dir, StateFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a CA state was written for a refused chain: %v", err)
	}
}

// TestUpstreamDiskRereadsFiles: a new upstream intermediate in the files is used at the next
// signing; a broken file afterwards leaves the last good copy in use.
func TestUpstreamDiskRereadsFiles(t *testing.T) {
	p := newDiskPKI(t, testpki.NoPathLen)
	clk := &fakeClock{t: time.Now()}
	c := newTestCA(t, t.TempDir(), clk, withUpstream(p.upstream(t, clk), "h"))
	inter2 := p.root.Intermediate(t, "second intermediate", testpki.NoPathLen, 24*time.Hour)
	testpki.Write(t, p.cert, testpki.CertPEM(inter2.Cert), 0o644)
	testpki.Write(t, p.key, inter2.KeyPEM(t), 0o600)
	if err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	s, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Certificates[2].Equal(inter2.Cert) {
		t.Fatalf("new CA signed by %s, want the replaced intermediate", s.Certificates[1].Issuer)
	}
	testpki.Write(t, p.key, []byte("not a key"), 0o600)
	clk.Set(clk.Now().Add(testCA / 2))
	if _, err := c.Rotate(clk.Now()); err != nil {
		t.Fatalf("rotation with a broken key file (last good copy expected): %v", err)
	}
	if st, _ := c.UpstreamStatus(); st.Failures != 0 {
		t.Fatalf("status %+v", st)
	}
}

type failingUpstream struct{}

func (failingUpstream) Name() string { return "failing" }
func (failingUpstream) SignCA(context.Context, []byte, time.Duration) (*Signed, error) {
	return nil, errors.New("connection refused")
}

// switchable is an upstream that can be turned off.
type switchable struct {
	Upstream
	down  atomic.Bool
	calls atomic.Int32
}

func (s *switchable) SignCA(ctx context.Context, csr []byte, ttl time.Duration) (*Signed, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return nil, errors.New("connection refused")
	}
	return s.Upstream.SignCA(ctx, csr, ttl)
}

// TestUpstreamDownKeepsActiveCA: with the upstream down at prepare time, every failure is
// reported (OnUpstreamError, UpstreamStatus), the active CA keeps signing until it truly
// expires, there is no self-signed fallback (minting fails after expiry), and rotation
// resumes when the upstream is back.
func TestUpstreamDownKeepsActiveCA(t *testing.T) {
	p := newDiskPKI(t, testpki.NoPathLen)
	clk := &fakeClock{t: time.Now()}
	up := &switchable{Upstream: p.upstream(t, clk)}
	var reported atomic.Int32
	c := newTestCA(t, t.TempDir(), clk, withUpstream(up, "h"), func(cfg *Config) {
		cfg.OnUpstreamError = func(error) { reported.Add(1) }
	})
	first := c.Authorities()[0]
	up.down.Store(true)
	clk.Set(first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) / 2))
	for range 3 {
		if _, err := c.Rotate(clk.Now()); err == nil {
			t.Fatal("rotation succeeded with the upstream down")
		}
	}
	st, ok := c.UpstreamStatus()
	if !ok || st.Name != "disk" || st.Failures != 3 || reported.Load() != 3 || st.LastError == "" {
		t.Fatalf("status %+v, reported %d; want 3 failures", st, reported.Load())
	}
	// Just before expiry the old CA still signs, clamped to its NotAfter.
	clk.Set(first.NotAfter.Add(-time.Minute))
	s, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !s.NotAfter.Equal(first.NotAfter) {
		t.Fatalf("SVID NotAfter %s, want clamped to the CA's %s", s.NotAfter, first.NotAfter)
	}
	clk.Set(first.NotAfter.Add(time.Second))
	if _, err := c.Rotate(clk.Now()); err == nil {
		t.Fatal("rotation after expiry succeeded with the upstream down")
	}
	if _, err := c.MintX509SVID(wlID, 0, nil); !errors.Is(err, ErrCAExpired) {
		t.Fatalf("mint after expiry with the upstream down: %v, want ErrCAExpired (never a self-signed fallback)", err)
	}
	for _, a := range c.Authorities() {
		if a.Certificate.CheckSignatureFrom(a.Certificate) == nil {
			t.Fatal("a self-signed CA appeared")
		}
	}
	up.down.Store(false)
	if _, err := c.Rotate(clk.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MintX509SVID(wlID, 0, nil); err != nil {
		t.Fatalf("mint after the upstream came back: %v", err)
	}
	if st, _ := c.UpstreamStatus(); st.Failures != 0 || st.LastSuccess.IsZero() {
		t.Fatalf("status after recovery %+v", st)
	}
}

// TestUpstreamReplacesSelfSigned: a host that ran self-signed and is then given an upstream
// switches to an upstream-signed CA at once; the old root stays in the bundle until it expires.
func TestUpstreamReplacesSelfSigned(t *testing.T) {
	p := newDiskPKI(t, testpki.NoPathLen)
	clk := &fakeClock{t: time.Now()}
	dir := t.TempDir()
	old := newTestCA(t, dir, clk).Authorities()[0]
	c := newTestCA(t, dir, clk, withUpstream(p.upstream(t, clk), "h"))
	s, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Certificates) != 3 {
		t.Fatalf("SVID chain %d certificates; want upstream-signed", len(s.Certificates))
	}
	want := append(testpki.CertPEM(old.Certificate), testpki.CertPEM(p.root.Cert)...)
	if !bytes.Equal(c.Bundle().PEM, want) {
		t.Fatal("bundle is not the old root plus the upstream root")
	}
}

func TestBackoff(t *testing.T) {
	var b backoff
	prev := time.Duration(0)
	for i := range 30 {
		d := b.next()
		hi := min(backoffMax, backoffMin<<min(i, 20))
		if d < hi/2 || d > hi {
			t.Fatalf("retry %d: %s outside [%s, %s]", i, d, hi/2, hi)
		}
		prev = d
	}
	if prev < backoffMax/2 {
		t.Fatalf("backoff did not reach its cap: %s", prev)
	}
	b.reset()
	if d := b.next(); d > backoffMin {
		t.Fatalf("after reset: %s", d)
	}
}

// TestUpstreamURINameConstraint records what Go's crypto/x509 (and so go-spiffe) does with a
// URI name constraint an operator puts on the upstream intermediate: SVIDs of the trust
// domain verify; an SVID of another trust domain signed by a host CA under it does not; but
// Go matches the URI's host like a DNS name, so a subdomain passes (BoringSSL, in Envoy,
// wants the host equal to the constraint unless it starts with a dot). docs/SECURITY.md
// "Trust model" relies on this.
func TestUpstreamURINameConstraint(t *testing.T) {
	p := newDiskPKI(t, testpki.NoPathLen)
	inter := p.root.Intermediate(t, "constrained", testpki.NoPathLen, 24*time.Hour, func(c *x509.Certificate) {
		c.PermittedURIDomains = []string{"example.org"}
		c.PermittedDNSDomainsCritical = true
	})
	testpki.Write(t, p.cert, testpki.CertPEM(inter.Cert), 0o644)
	testpki.Write(t, p.key, inter.KeyPEM(t), 0o600)
	clk := &fakeClock{t: time.Now()}
	c := newTestCA(t, t.TempDir(), clk, withUpstream(p.upstream(t, clk), "h"))
	s, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, c.Bundle(), clk.Now())

	// What a compromised host could try: sign a leaf of another trust domain with its CA.
	act := c.state.Load().find(StateActive)
	roots := x509.NewCertPool()
	roots.AddCert(p.root.Cert)
	for _, tc := range []struct {
		uri  string
		pass bool
	}{
		{"spiffe://example.org/anything", true},
		{"spiffe://other.org/payments", false},
		{"spiffe://sub.example.org/x", true}, // Go: DNS-style suffix match on the URI host
	} {
		leaf := signLeaf(t, act, tc.uri)
		inters := x509.NewCertPool()
		inters.AddCert(act.cert)
		inters.AddCert(inter.Cert)
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if (err == nil) != tc.pass {
			t.Errorf("%s: verify error %v, want pass=%v", tc.uri, err, tc.pass)
		}
	}
}

func signLeaf(t *testing.T, a *authority, uri string) *x509.Certificate {
	t.Helper()
	key, err := generateKey(KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(uri)
	serial, _ := randomSerial()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial, NotBefore: a.cert.NotBefore, NotAfter: a.cert.NotAfter,
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature}, a.cert, key.Public(), a.signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
