package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/test/envoy"
)

// TestFederationTwoTrustDomains runs two svidd instances, a.test and b.test, federated over
// real bundle endpoints: a.test serves https_spiffe (with an SVID of its own CA), b.test
// serves https_web (with a certificate of a web CA the test makes for 127.0.0.1, trusted by
// a.test through SSL_CERT_FILE). Entries that federate with a trust domain whose bundle has
// not arrived yet are accepted and get it when it comes. go-spiffe workloads complete mTLS
// across the trust domains; both CAs rotate (30s lifetime) and each side holds the other's
// new CA before the first SVID it signs is served; dropping the federation from a.test's
// config sends removed_resources for spiffe://b.test on a delta stream.
func TestFederationTwoTrustDomains(t *testing.T) {
	requireRoot(t)
	waitsInParallel(t)
	dir := proctest.ShortDir(t)
	web := newWebPKI(t, dir)
	const (
		caConf  = "ca {\n  ca_ttl = \"30s\"\n  svid_ttl = \"5s\"\n}\n"
		serverA = "spiffe://a.test/server"
		clientB = "spiffe://b.test/client"
		watchA  = "spiffe://a.test/watcher"
		watchB  = "spiffe://b.test/watcher"
	)
	fedConf := func(endpoint string) string {
		return "federation {\n  min_refresh_interval = \"1s\"\n  bundle_endpoint {\n" + endpoint + "    refresh_hint = \"1s\"\n  }\n}\n"
	}
	confA := testListeners + "agent {\n  trust_domain = \"a.test\"\n}\n" + caConf +
		fedConf("    address = \"127.0.0.1:0\"\n    profile = \"https_spiffe\"\n")
	a := startAgent(t, withConfig(confA), withEnv("SSL_CERT_FILE="+web.caFile))
	addrA := a.loggedAddr("bundle endpoint serving")
	// Entries for a trust domain whose bundle svidd does not have yet are fine (spire#7146).
	a.createEntry(serverA, "-selector", "unix:uid:1001", "-federatesWith", "spiffe://b.test")
	a.createEntry(watchA, "-selector", "unix:uid:0", "-federatesWith", "b.test")

	// b.test bootstraps a.test's https_spiffe endpoint with a.test's bundle, as an operator
	// would copy it over.
	bootA := filepath.Join(dir, "a.test.json")
	if err := os.WriteFile(bootA, []byte(a.mustSvidctl("bundle", "show", "-format", "spiffe")), 0o644); err != nil {
		t.Fatal(err)
	}
	confB := testListeners + "agent {\n  trust_domain = \"b.test\"\n}\n" + caConf +
		fedConf(fmt.Sprintf("    address = \"127.0.0.1:0\"\n    profile = \"https_web\"\n    cert_file = %q\n    key_file = %q\n", web.certFile, web.keyFile)) +
		fmt.Sprintf("federates_with \"a.test\" {\n  bundle_endpoint_url = \"https://%s\"\n  profile = \"https_spiffe\"\n  endpoint_spiffe_id = \"spiffe://a.test/svidd/bundle-endpoint\"\n  bundle_file = %q\n}\n", addrA, bootA)
	b := startAgent(t, withConfig(confB))
	addrB := b.loggedAddr("bundle endpoint serving")
	b.createEntry(clientB, "-selector", "unix:uid:1002", "-federatesWith", "spiffe://a.test")
	b.createEntry(watchB, "-selector", "unix:uid:0", "-federatesWith", "a.test")

	// Both sides watch: their own SVID (whose issuer tells which CA signs) and the other
	// trust domain's bundle, on delta streams.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 4)
	obsA := watchFederated(ctx, t, a, watchA, "spiffe://b.test", errc)
	obsB := watchFederated(ctx, t, b, watchB, "spiffe://a.test", errc)

	// a.test federates with b.test from a reload: federates_with applies without a restart.
	withFedB := confA + fmt.Sprintf("federates_with \"b.test\" {\n  bundle_endpoint_url = \"https://%s\"\n  profile = \"https_web\"\n}\n", addrB)
	reloadConfig(t, a, withFedB, 1)

	for _, o := range []*fedObserver{obsA, obsB} {
		o.waitFor(t, errc, 20*time.Second, "the federated bundle", func() bool { return len(o.roots) > 0 })
	}
	federatedAt := time.Now()
	crossDomainMTLS(t, a, b, serverA, clientB)

	// Both CAs rotate (prepared at 15s, active at 25s of their 30s life). Wait until each side
	// has served SVIDs from a CA first seen after the federation was up.
	for _, o := range []*fedObserver{obsA, obsB} {
		o.waitFor(t, errc, 60*time.Second, "an SVID from a rotated CA", func() bool {
			for _, at := range o.issuers {
				if at.After(federatedAt) {
					return true
				}
			}
			return false
		})
	}
	// The promise: the fetching side held each new CA before the foreign side served the first
	// SVID it signed (both times on this test's clock).
	for _, pair := range []struct {
		name              string
		foreign, fetching *fedObserver
	}{{"b.test's CA at a.test", obsB, obsA}, {"a.test's CA at b.test", obsA, obsB}} {
		pair.foreign.mu.Lock()
		pair.fetching.mu.Lock()
		checked := 0
		for aki, servedAt := range pair.foreign.issuers {
			if !servedAt.After(federatedAt) {
				continue
			}
			checked++
			got, ok := pair.fetching.roots[aki]
			if !ok || got.After(servedAt) {
				t.Errorf("%s %s: first SVID served at %s, bundle with it received at %v (ok=%v): the new CA must arrive first",
					pair.name, aki[:8], servedAt.Format(time.StampMilli), got.Format(time.StampMilli), ok)
			} else {
				t.Logf("%s %s: in the federated bundle %s before its first SVID", pair.name, aki[:8], servedAt.Sub(got).Round(time.Millisecond))
			}
		}
		pair.fetching.mu.Unlock()
		pair.foreign.mu.Unlock()
		if checked == 0 {
			t.Errorf("%s: no rotated CA observed", pair.name)
		}
	}
	crossDomainMTLS(t, a, b, serverA, clientB)

	// The operator sees the federation.
	var list []struct {
		TrustDomain string `json:"trust_domain"`
		HasBundle   bool   `json:"has_bundle"`
		Source      string `json:"source"`
		LastError   string `json:"last_error"`
	}
	if err := json.Unmarshal([]byte(b.mustSvidctl("bundle", "list", "-output", "json")), &list); err != nil || len(list) != 1 ||
		list[0].TrustDomain != "a.test" || !list[0].HasBundle || list[0].Source != "endpoint" {
		t.Fatalf("b.test bundle list = %+v, %v", list, err)
	}

	// a.test ends the federation: its delta stream is told to drop b.test's bundle.
	reloadConfig(t, a, confA, 2)
	obsA.waitFor(t, errc, 10*time.Second, "removed_resources for spiffe://b.test", func() bool { return obsA.removed })
	if out := a.mustSvidctl("bundle", "list", "-output", "json"); strings.Contains(out, "b.test") {
		t.Fatalf("a.test still lists b.test after the federation ended: %s", out)
	}

	// svidctl bundle delete also takes a bundle away from Envoy (b.test's federation with
	// a.test is still configured, so the next refresh fetches it again).
	b.mustSvidctl("bundle", "delete", "-id", "spiffe://a.test")
	obsB.waitFor(t, errc, 10*time.Second, "removed_resources for spiffe://a.test", func() bool { return obsB.removed })
}

// fedObserver records what one delta stream received: when each root of the foreign trust
// domain first arrived (by subject key ID), when each issuer of the caller's own SVID was first
// served (by authority key ID), and whether the foreign bundle was removed.
type fedObserver struct {
	mu      sync.Mutex
	roots   map[string]time.Time
	issuers map[string]time.Time
	removed bool
}

func (o *fedObserver) waitFor(t *testing.T, errc <-chan error, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); ; {
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func watchFederated(ctx context.Context, t *testing.T, a *agent, own, foreign string, errc chan<- error) *fedObserver {
	t.Helper()
	conn, err := envoy.Dial(ctx, a.api)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d, err := envoy.NewDelta(ctx, conn, envoy.NewNode("e2e-federation"), []string{own, foreign}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	o := &fedObserver{roots: map[string]time.Time{}, issuers: map[string]time.Time{}}
	go func() {
		for {
			r, err := d.Recv(ctx)
			if err != nil {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("%s delta stream: %w", own, err)
				}
				return
			}
			now := time.Now()
			o.mu.Lock()
			if sec := r.Get(foreign); sec != nil {
				roots, err := envoy.TrustedCA(sec)
				if err != nil {
					errc <- err
				}
				for _, c := range roots {
					if k := fmt.Sprintf("%x", c.SubjectKeyId); o.roots[k].IsZero() {
						o.roots[k] = now
					}
				}
			}
			if sec := r.Get(own); sec != nil {
				certs, _, err := envoy.CertAndKey(sec)
				if err != nil {
					errc <- err
				} else if k := fmt.Sprintf("%x", certs[0].AuthorityKeyId); o.issuers[k].IsZero() {
					o.issuers[k] = now
				}
			}
			if slices.Contains(r.Removed, foreign) {
				o.removed = true
			}
			o.mu.Unlock()
		}
	}()
	return o
}

// crossDomainMTLS: a go-spiffe server in a.test (uid 1001) and a go-spiffe client in b.test
// (uid 1002), each with an X509Source from its own svidd, complete an mTLS exchange, each
// authorizing the other's SPIFFE ID from the other trust domain.
func crossDomainMTLS(t *testing.T, a, b *agent, serverID, clientID string) {
	t.Helper()
	srv := startAs(t, 1001, 1001, nil, bins.spiffeclient, "-socket", a.api, "-timeout", "30s", "serve", "-authorize", clientID)
	var addr struct {
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal([]byte(srv.next(t, 20*time.Second)), &addr); err != nil {
		t.Fatal(err)
	}
	cli := startAs(t, 1002, 1002, nil, bins.spiffeclient, "-socket", b.api, "-timeout", "30s", "dial", "-addr", addr.Addr, "-authorize", serverID)
	if got := cli.next(t, 20*time.Second); !strings.Contains(got, "pong to ping") {
		t.Fatalf("client got %q", got)
	}
	if got := srv.next(t, 10*time.Second); !strings.Contains(got, "served") {
		t.Fatalf("server said %q", got)
	}
}

// reloadConfig rewrites a's config file and sends SIGHUP; n counts the reloads so far.
func reloadConfig(t *testing.T, a *agent, hcl string, n int) {
	t.Helper()
	if err := os.WriteFile(a.config, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); strings.Count(a.logs.String(), "configuration reloaded") < n; {
		if time.Now().After(deadline) {
			t.Fatalf("reload %d not applied:\n%s", n, a.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// webPKI is a small Web PKI for an https_web bundle endpoint on 127.0.0.1.
type webPKI struct{ caFile, certFile, keyFile string }

func newWebPKI(t *testing.T, dir string) webPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "svidd test web CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	w := webPKI{caFile: filepath.Join(dir, "webca.pem"), certFile: filepath.Join(dir, "web.pem"), keyFile: filepath.Join(dir, "web.key")}
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{w.caFile, "CERTIFICATE", caDER}, {w.certFile, "CERTIFICATE", der}, {w.keyFile, "PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return w
}
