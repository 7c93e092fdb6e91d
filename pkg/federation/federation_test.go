package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

var (
	ownTD   = workloadtest.ExampleTD
	otherTD = workloadtest.OtherTD
)

func TestBundleDocuments(t *testing.T) {
	ca := workloadtest.NewCA(t, otherTD, "kid-1")
	wb := ca.Bundle(t, 9)
	sb, err := FromWorkload(wb, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Marshal(sb)
	if string(doc) != string(again) {
		t.Fatalf("Marshal is not deterministic:\n%s\n%s", doc, again)
	}
	back, err := ParseBundle(otherTD, FormatSPIFFE, doc)
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := back.SequenceNumber(); seq != 9 {
		t.Errorf("sequence %d, want 9", seq)
	}
	if hint, _ := back.RefreshHint(); hint != 30*time.Second {
		t.Errorf("refresh hint %s, want 30s", hint)
	}
	w := ToWorkload(back, 9)
	if len(w.X509Authorities) != 1 || !w.X509Authorities[0].Equal(ca.Cert) || w.JWTAuthorities["kid-1"] == nil || len(w.JWKS) == 0 || string(w.PEM) != string(wb.PEM) {
		t.Fatalf("ToWorkload lost something: %+v", w)
	}

	// An empty bundle (every SVID of the trust domain invalid) still has "keys".
	empty, err := Marshal(spiffebundle.New(otherTD))
	if err != nil || string(empty) != `{"keys":[]}` {
		t.Fatalf("empty bundle = %s, %v", empty, err)
	}
	if _, err := ParseBundle(otherTD, FormatSPIFFE, empty); err != nil {
		t.Fatalf("empty bundle does not parse back: %v", err)
	}

	if b, err := ParseBundleAnyFormat(otherTD, wb.PEM); err != nil || len(b.X509Authorities()) != 1 {
		t.Fatalf("PEM bundle: %v", err)
	}
	for name, in := range map[string]struct{ format, data string }{
		"not JSON":       {FormatSPIFFE, "nope"},
		"no keys":        {FormatSPIFFE, `{"spiffe_sequence":1}`},
		"no PEM":         {FormatPEM, "nope"},
		"private key":    {FormatPEM, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
		"trailing junk":  {FormatPEM, string(wb.PEM) + "junk"},
		"unknown format": {"der", string(wb.DER)},
	} {
		if _, err := ParseBundle(otherTD, in.format, []byte(in.data)); !errors.Is(err, ErrInvalidBundle) {
			t.Errorf("%s: err = %v, want ErrInvalidBundle", name, err)
		}
	}
}

// newManager returns a Manager over a real SQLite store in dir, recording its Snapshots.
func newManager(t *testing.T, dir string, own *workload.Bundle) (*Manager, *store.SQLite, *snapshots) {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "svidd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	snaps := &snapshots{}
	m, err := NewManager(ManagerConfig{
		TrustDomain: ownTD,
		Store:       st,
		OwnBundle:   func() *workload.Bundle { return own },
		OnChange:    snaps.add,
		MinRefresh:  20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return m, st, snaps
}

type snapshots struct {
	mu   sync.Mutex
	last Snapshot
	n    int
}

func (s *snapshots) add(v Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.n = v, s.n+1
}

func (s *snapshots) get() (Snapshot, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.n
}

func spiffeDoc(t *testing.T, ca *workloadtest.CA, seq uint64) []byte {
	t.Helper()
	sb, err := FromWorkload(ca.Bundle(t, seq), 0)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestManagerSequenceRules: spiffe_sequence never goes back, keys never change under the same
// sequence, a PEM bundle (no sequence) still gets a new version, svidd's own trust domain is
// refused, and nothing refused is stored.
func TestManagerSequenceRules(t *testing.T) {
	ctx := context.Background()
	m, st, snaps := newManager(t, t.TempDir(), nil)
	ca1, ca2 := workloadtest.NewCA(t, otherTD, "k1"), workloadtest.NewCA(t, otherTD, "k2")
	if err := m.Set(ctx, otherTD, FormatSPIFFE, spiffeDoc(t, ca1, 5)); err != nil {
		t.Fatal(err)
	}
	s, _ := snaps.get()
	if b := s.Bundles[otherTD]; b == nil || b.Sequence != 5 || !b.X509Authorities[0].Equal(ca1.Cert) {
		t.Fatalf("snapshot after set: %+v", s)
	}
	for name, doc := range map[string][]byte{
		"lower sequence":            spiffeDoc(t, ca2, 4),
		"same sequence, other keys": spiffeDoc(t, ca2, 5),
	} {
		if err := m.Set(ctx, otherTD, FormatSPIFFE, doc); !errors.Is(err, ErrInvalidBundle) {
			t.Errorf("%s: err = %v, want ErrInvalidBundle", name, err)
		}
	}
	if row, err := st.GetBundle(ctx, otherTD); err != nil || row.Sequence != 5 {
		t.Fatalf("stored after refusals: %+v, %v; want sequence 5 kept", row, err)
	}
	_, n := snaps.get()
	if err := m.Set(ctx, otherTD, FormatSPIFFE, spiffeDoc(t, ca1, 5)); err != nil {
		t.Fatalf("the same bundle again: %v", err)
	}
	if _, n2 := snaps.get(); n2 != n {
		t.Error("setting the same bundle again published a new snapshot")
	}
	if err := m.Set(ctx, otherTD, FormatSPIFFE, spiffeDoc(t, ca2, 6)); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(ctx, otherTD, FormatPEM, ca1.Bundle(t, 0).PEM); err != nil {
		t.Fatal(err)
	}
	s, _ = snaps.get()
	if b := s.Bundles[otherTD]; b.Sequence != 7 || !b.X509Authorities[0].Equal(ca1.Cert) || len(b.JWTAuthorities) != 0 {
		t.Fatalf("after a PEM set: version %d, want 7 with the PEM's root and no JWT key", b.Sequence)
	}
	if err := m.Set(ctx, ownTD, FormatPEM, ca1.Bundle(t, 0).PEM); !errors.Is(err, ErrInvalidBundle) {
		t.Errorf("setting the own trust domain: %v, want ErrInvalidBundle", err)
	}
	if err := m.Delete(ctx, otherTD); err != nil {
		t.Fatal(err)
	}
	if s, _ := snaps.get(); len(s.Bundles) != 0 {
		t.Fatalf("snapshot after delete holds %v", s.Bundles)
	}
	if err := m.Delete(ctx, otherTD); !errors.Is(err, store.ErrBundleNotFound) {
		t.Fatalf("second delete: %v, want ErrBundleNotFound", err)
	}
}

// TestManagerRestartAndEndOfFederation: a bundle from a bundle_file survives a restart (a new
// Manager on the same store); dropping the relationship deletes it, but a bundle set by hand
// stays; to_all_workloads is in the Snapshot.
func TestManagerRestartAndEndOfFederation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	third := spiffeid.RequireTrustDomainFromString("third.test")
	caO, caT := workloadtest.NewCA(t, otherTD, "o"), workloadtest.NewCA(t, third, "t")
	file := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(file, caO.Bundle(t, 0).PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	m, st, _ := newManager(t, dir, nil)
	if err := m.Load(ctx); err != nil {
		t.Fatal(err)
	}
	bad := []Relationship{{TrustDomain: otherTD, BundleFile: filepath.Join(dir, "missing.pem")}}
	if err := m.Configure(ctx, bad); err == nil {
		t.Fatal("Configure with a missing bundle_file succeeded")
	}
	if err := m.Configure(ctx, []Relationship{{TrustDomain: otherTD, BundleFile: file, ToAllWorkloads: true}}); err != nil {
		t.Fatal(err)
	}
	if err := m.Set(ctx, third, FormatPEM, caT.Bundle(t, 0).PEM); err != nil {
		t.Fatal(err)
	}
	st.Close()

	m2, _, snaps := newManager(t, dir, nil)
	if err := m2.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Configure(ctx, []Relationship{{TrustDomain: otherTD, BundleFile: file, ToAllWorkloads: true}}); err != nil {
		t.Fatal(err)
	}
	s, _ := snaps.get()
	if b := s.Bundles[otherTD]; b == nil || !b.X509Authorities[0].Equal(caO.Cert) || s.Bundles[third] == nil {
		t.Fatalf("after restart: %+v", s.Bundles)
	}
	if len(s.ToAll) != 1 || s.ToAll[0] != otherTD {
		t.Fatalf("ToAll = %v, want [other.org]", s.ToAll)
	}
	if err := m2.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	s, _ = snaps.get()
	if s.Bundles[otherTD] != nil || s.Bundles[third] == nil || len(s.ToAll) != 0 {
		t.Fatalf("after the federation ended: bundles %v, to all %v; want only the hand-set third.test", s.Bundles, s.ToAll)
	}
}

// fakeMinter mints endpoint SVIDs with a test CA.
type fakeMinter struct {
	ca    *workloadtest.CA
	t     *testing.T
	mints atomic.Int32
}

func (f *fakeMinter) MintX509SVID(id spiffeid.ID, _ time.Duration, _ []string) (*workload.SVID, error) {
	f.mints.Add(1)
	return f.ca.Mint(f.t, id.String()), nil
}

// TestEndpointAndFetchHTTPSSPIFFE: a Manager bootstrapped with the foreign trust domain's
// bundle fetches it from an https_spiffe endpoint (authenticated by its SPIFFE ID), then picks
// up a rotation at the refresh hint; an endpoint presenting another SPIFFE ID is refused.
func TestEndpointAndFetchHTTPSSPIFFE(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	foreign := workloadtest.NewCA(t, otherTD, "f1")
	var current atomic.Pointer[workload.Bundle]
	current.Store(foreign.Bundle(t, 1))
	e, err := NewEndpoint(EndpointConfig{
		TrustDomain: otherTD, Profile: ProfileHTTPSSPIFFE, RefreshHint: time.Second,
		Bundle: current.Load, Minter: &fakeMinter{ca: foreign, t: t},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.Serve(ctx, ln) }()

	m, _, snaps := newManager(t, t.TempDir(), nil)
	if err := m.Set(ctx, otherTD, FormatPEM, foreign.Bundle(t, 0).PEM); err != nil {
		t.Fatal(err)
	}
	url := "https://" + ln.Addr().String()
	if err := m.Configure(ctx, []Relationship{{TrustDomain: otherTD, URL: url, Profile: ProfileHTTPSSPIFFE, EndpointID: EndpointID(otherTD)}}); err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	waitSnap := func(what string, ok func(*workload.Bundle) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			s, _ := snaps.get()
			if b := s.Bundles[otherTD]; b != nil && ok(b) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s; status %+v", what, m.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitSnap("bundle from the endpoint", func(b *workload.Bundle) bool { return len(b.JWTAuthorities) == 1 })

	// The foreign trust domain publishes a second CA: it arrives within a refresh hint or two.
	next := workloadtest.NewCA(t, otherTD, "f2")
	rotated := foreign.Bundle(t, 2)
	rotated.X509Authorities = append(rotated.X509Authorities, next.Cert)
	current.Store(rotated)
	waitSnap("rotated bundle", func(b *workload.Bundle) bool { return len(b.X509Authorities) == 2 })
	if st := m.Status(); len(st) != 1 || st[0].LastError != "" || st[0].Source != store.BundleFromEndpoint {
		t.Fatalf("status %+v", st)
	}

	// An endpoint that presents another SPIFFE ID is not trusted.
	wrong := spiffeid.RequireFromPath(otherTD, "/not-the-endpoint")
	if err := m.Configure(ctx, []Relationship{{TrustDomain: otherTD, URL: url, Profile: ProfileHTTPSSPIFFE, EndpointID: wrong}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if st := m.Status(); len(st) == 1 && st[0].LastError != "" {
			t.Logf("refused: %s", st[0].LastError)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an endpoint with the wrong SPIFFE ID was not refused")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
}

// TestEndpointHTTPSWeb: the https_web endpoint serves the bundle document over its
// certificate files and picks up a renewed certificate without a restart; only GET is served.
func TestEndpointHTTPSWeb(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	caCert, caKey := webCA(t)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeServerCert(t, caCert, caKey, certFile, keyFile, 2)
	own := workloadtest.NewCA(t, ownTD, "own")
	e, err := NewEndpoint(EndpointConfig{
		TrustDomain: ownTD, Profile: ProfileHTTPSWeb, RefreshHint: 5 * time.Minute,
		Bundle: func() *workload.Bundle { return own.Bundle(t, 3) }, CertFile: certFile, KeyFile: keyFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.Serve(ctx, ln)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	get := func(method string) (*http.Response, []byte, *x509.Certificate) {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		req, _ := http.NewRequest(method, "https://"+ln.Addr().String()+"/", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body, resp.TLS.PeerCertificates[0]
	}
	resp, body, leaf := get(http.MethodGet)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || leaf.SerialNumber.Int64() != 2 {
		t.Fatalf("GET: %s %q serial %d", resp.Status, resp.Header.Get("Content-Type"), leaf.SerialNumber)
	}
	b, err := ParseBundle(ownTD, FormatSPIFFE, body)
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := b.SequenceNumber(); seq != 3 || len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("served bundle: %s", body)
	}
	if hint, _ := b.RefreshHint(); hint != 5*time.Minute {
		t.Fatalf("refresh hint %s", hint)
	}
	if resp, _, _ := get(http.MethodPost); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %s", resp.Status)
	}

	// A broken file keeps the last good certificate; a renewed one is picked up.
	time.Sleep(1100 * time.Millisecond)
	if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, leaf := get(http.MethodGet); leaf.SerialNumber.Int64() != 2 {
		t.Fatalf("after a broken cert file the endpoint served serial %d", leaf.SerialNumber)
	}
	time.Sleep(1100 * time.Millisecond)
	writeServerCert(t, caCert, caKey, certFile, keyFile, 3)
	if _, _, leaf := get(http.MethodGet); leaf.SerialNumber.Int64() != 3 {
		t.Fatalf("after renewal the endpoint served serial %d, want 3", leaf.SerialNumber)
	}
}

func webCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "web CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func writeServerCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certFile, keyFile string, serial int64) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	// Key first, then certificate, each by rename: a reader never sees half a file.
	for _, f := range []struct {
		path string
		blk  *pem.Block
	}{{keyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: kder}}, {certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der}}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.blk), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestManagerShared: what a host takes from the fleet's shared bundles keeps its source. A
// bundle set by hand on another host is held whatever the relationships, and stays when a
// relationship ends; a fetched one only for a relationship with an endpoint. Either obeys the
// sequence rules, and SharedRemoved drops a bundle as Delete does.
func TestManagerShared(t *testing.T) {
	ctx := context.Background()
	m, _, snaps := newManager(t, t.TempDir(), nil)
	third := spiffeid.RequireTrustDomainFromString("third.test")
	fourth := spiffeid.RequireTrustDomainFromString("fourth.test")
	caO, caT, caF := workloadtest.NewCA(t, otherTD, "o"), workloadtest.NewCA(t, third, "t"), workloadtest.NewCA(t, fourth, "f")
	if err := m.Configure(ctx, []Relationship{{TrustDomain: otherTD, URL: "https://127.0.0.1:1/", Profile: ProfileHTTPSWeb}}); err != nil {
		t.Fatal(err)
	}
	source := func(td spiffeid.TrustDomain) store.BundleSource {
		for _, s := range m.Status() {
			if s.TrustDomain == td && s.HasBundle {
				return s.Source
			}
		}
		return ""
	}
	if err := m.Shared(ctx, otherTD, spiffeDoc(t, caO, 5), store.BundleManual); err != nil || source(otherTD) != store.BundleManual {
		t.Fatalf("manual bundle of a trust domain with an endpoint: %v, source %q", err, source(otherTD))
	}
	if err := m.Shared(ctx, third, spiffeDoc(t, caT, 1), store.BundleManual); err != nil || source(third) != store.BundleManual {
		t.Fatalf("manual bundle without a relationship: %v, source %q", err, source(third))
	}
	if err := m.Shared(ctx, fourth, spiffeDoc(t, caF, 1), store.BundleFromEndpoint); err != nil || source(fourth) != "" {
		t.Fatalf("fetched bundle without a relationship: %v, source %q; want ignored", err, source(fourth))
	}
	if err := m.Shared(ctx, otherTD, spiffeDoc(t, caO, 4), store.BundleManual); !errors.Is(err, ErrInvalidBundle) {
		t.Fatalf("shared manual bundle with a lower sequence: %v, want ErrInvalidBundle", err)
	}
	if err := m.Shared(ctx, otherTD, spiffeDoc(t, caO, 6), store.BundleFromEndpoint); err != nil || source(otherTD) != store.BundleFromEndpoint {
		t.Fatalf("fetched bundle after a manual one: %v, source %q; want the fetched one, as on one host", err, source(otherTD))
	}
	if err := m.Configure(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if source(otherTD) != "" || source(third) != store.BundleManual {
		t.Fatalf("after the relationship ended: other.org %q, third.test %q; want only the hand-set one kept", source(otherTD), source(third))
	}
	if err := m.SharedRemoved(ctx, third); err != nil {
		t.Fatal(err)
	}
	if s, _ := snaps.get(); len(s.Bundles) != 0 {
		t.Fatalf("after SharedRemoved: %v", s.Bundles)
	}
}
