package sds

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// wantTLS checks a TlsCertificate Secret: the chain is the SVID's, it parses as an X509-SVID
// whose key matches, and it verifies against the bundle the agent serves.
func wantTLS(t *testing.T, sec *tlsv3.Secret, sv *workload.SVID, ca *testCA) {
	t.Helper()
	tc := sec.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q: want a TlsCertificate, got %T", sec.Name, sec.Type)
	}
	chain, key := tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()
	if !bytes.Equal(chain, sv.CertChainPEM) || !bytes.Equal(key, sv.KeyPEM) {
		t.Fatalf("secret %q does not carry the SVID's PEM", sec.Name)
	}
	parsed, err := x509svid.Parse(chain, key) // checks the key matches the leaf
	if err != nil {
		t.Fatalf("secret %q: %v", sec.Name, err)
	}
	if parsed.ID != sv.ID {
		t.Fatalf("secret %q holds %s, want %s", sec.Name, parsed.ID, sv.ID)
	}
	bundle := x509bundle.FromX509Authorities(ca.TD, []*x509.Certificate{ca.Cert})
	if _, _, err := x509svid.Verify(parsed.Certificates, bundle); err != nil {
		t.Fatalf("secret %q does not verify against its bundle: %v", sec.Name, err)
	}
}

// wantCA checks a trusted_ca validation context holding b.
func wantCA(t *testing.T, sec *tlsv3.Secret, b *workload.Bundle) {
	t.Helper()
	pemBytes := sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
	if !bytes.Equal(pemBytes, b.PEM) {
		t.Fatalf("secret %q: trusted_ca is not the %s bundle", sec.Name, b.TrustDomain)
	}
	if _, err := x509bundle.Parse(b.TrustDomain, pemBytes); err != nil {
		t.Fatalf("secret %q: %v", sec.Name, err)
	}
}

func wantNames(t *testing.T, got map[string]*tlsv3.Secret, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d secrets %v, want %v", len(got), keys(got), want)
	}
	for _, n := range want {
		if _, ok := got[n]; !ok {
			t.Fatalf("got %v, want %v", keys(got), want)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestStreamSecretsNames(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name  string
		names []string
		cfg   func(*Config)
		check func(t *testing.T, got map[string]*tlsv3.Secret)
	}{
		{"spiffe id", []string{idWeb}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, idWeb)
			wantTLS(t, got[idWeb], f.Web, f.CA)
		}},
		{"two spiffe ids", []string{idWeb, idDB}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, idWeb, idDB)
			wantTLS(t, got[idWeb], f.Web, f.CA)
			wantTLS(t, got[idDB], f.DB, f.CA)
		}},
		{"same name twice", []string{idWeb, idWeb}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, idWeb)
		}},
		{"known and unknown", []string{"spiffe://example.org/api", idWeb, "file-root:system"}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, idWeb)
		}},
		{"own trust domain", []string{"spiffe://example.org"}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, "spiffe://example.org")
			wantCA(t, got["spiffe://example.org"], f.Own)
		}},
		{"federated trust domain", []string{"spiffe://other.org"}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, "spiffe://other.org")
			wantCA(t, got["spiffe://other.org"], f.Federated)
		}},
		{"ROOTCA", []string{"ROOTCA"}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, "ROOTCA")
			wantCA(t, got["ROOTCA"], f.Own)
		}},
		{"default is the first SVID", []string{"default"}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, "default")
			wantTLS(t, got["default"], f.DB, f.CA)
		}},
		{"ALL", []string{"ALL"}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, "ALL")
			wantSPIFFEValidator(t, got["ALL"], f.Own, f.Federated)
		}},
		{"custom special names", []string{"svid", "root", "everyone", "default"}, func(c *Config) {
			c.DefaultSVIDName, c.DefaultBundleName, c.DefaultAllBundlesName = "svid", "root", "everyone"
		}, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, "svid", "root", "everyone")
			wantTLS(t, got["svid"], f.DB, f.CA)
			wantCA(t, got["root"], f.Own)
			wantSPIFFEValidator(t, got["everyone"], f.Own, f.Federated)
		}},
		{"wildcard", nil, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, idWeb, idDB, "spiffe://example.org", "spiffe://other.org")
			wantTLS(t, got[idWeb], f.Web, f.CA)
			wantTLS(t, got[idDB], f.DB, f.CA)
			wantCA(t, got["spiffe://example.org"], f.Own)
			wantCA(t, got["spiffe://other.org"], f.Federated)
		}},
		{"explicit wildcard and a name", []string{"*", "ROOTCA", idWeb}, nil, func(t *testing.T, got map[string]*tlsv3.Secret) {
			wantNames(t, got, idWeb, idDB, "spiffe://example.org", "spiffe://other.org", "ROOTCA")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workloadtest.NewWatcher(f.View())
			c := openSotw(t, startServer(t, w, tt.cfg))
			c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: tt.names})
			_, got := c.recv()
			tt.check(t, got)
		})
	}
}

func wantSPIFFEValidator(t *testing.T, sec *tlsv3.Secret, bundles ...*workload.Bundle) {
	t.Helper()
	cvc := sec.GetValidationContext().GetCustomValidatorConfig()
	if cvc.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("secret %q: custom validator %q", sec.Name, cvc.GetName())
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cvc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.TrustDomains) != len(bundles) {
		t.Fatalf("validator has %d trust domains, want %d", len(cfg.TrustDomains), len(bundles))
	}
	for i, b := range bundles {
		td := cfg.TrustDomains[i]
		if td.Name != b.TrustDomain.Name() || strings.HasPrefix(td.Name, "spiffe://") {
			t.Errorf("trust domain %d named %q, want %q", i, td.Name, b.TrustDomain.Name())
		}
		if !bytes.Equal(td.GetTrustBundle().GetInlineBytes(), b.PEM) {
			t.Errorf("trust domain %q: wrong bundle", td.Name)
		}
	}
}

func TestStreamUnknownNameIsPushedWhenItAppears(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(&workload.View{}) // entitled to nothing yet
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb, "ROOTCA"}})
	c.none() // an empty response would be NACKed by Envoy; the stream stays open

	// Someone else's SVID appearing changes nothing for this caller.
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB}, Bundles: []*workload.Bundle{f.Federated}})
	c.none()

	w.Publish(f.View())
	_, got := c.recv()
	wantNames(t, got, idWeb, "ROOTCA")
	wantTLS(t, got[idWeb], f.Web, f.CA)
}

func TestStreamACKAndViewUpdates(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	r1, _ := c.recv()

	c.ack(r1, idWeb)
	c.none()

	// A new View whose requested resources have the same versions: nothing to say.
	api := f.CA.Mint(t, "spiffe://example.org/api")
	w.Publish(&workload.View{SVIDs: []*workload.SVID{api, f.DB, f.Web}, Bundles: []*workload.Bundle{f.Own, f.Fed.Bundle(t, 8)}})
	c.none()

	// Rotation: a new serial for the requested SVID is pushed without a request.
	web2 := f.CA.Mint(t, idWeb)
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB, web2}, Bundles: []*workload.Bundle{f.Own}})
	r2, got := c.recv()
	wantNames(t, got, idWeb)
	wantTLS(t, got[idWeb], web2, f.CA)
	if r2.VersionInfo == r1.VersionInfo || r2.Nonce == r1.Nonce {
		t.Errorf("version/nonce reused: %s/%s then %s/%s", r1.VersionInfo, r1.Nonce, r2.VersionInfo, r2.Nonce)
	}
	c.ack(r2, idWeb)
	c.none()

	// The SVID leaving the View is not a deletion in state of the world: nothing is sent.
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB}, Bundles: []*workload.Bundle{f.Own}})
	c.none()
	if n := w.Watches(); n != 1 {
		t.Errorf("Watch called %d times for one stream, want 1", n)
	}
}

func TestStreamNACKIsNotAnsweredWithTheSameSecrets(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{"ROOTCA"}})
	r1, _ := c.recv()

	nack := &discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA"}, ResponseNonce: r1.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "Failed to load trusted CA"}}
	c.send(nack)
	c.none()
	// Same View again: still nothing.
	w.Publish(f.View())
	c.none()

	// Even a NACK that changes the names is not answered, but the names are remembered...
	nack.ResourceNames = []string{"ROOTCA", idWeb}
	c.send(nack)
	c.none()
	// ...so the next View sends them, since one was never sent.
	w.Publish(f.View())
	r2, got := c.recv()
	wantNames(t, got, "ROOTCA", idWeb)
	c.ack(r2, "ROOTCA", idWeb)
	c.none()

	// A new bundle is something new: pushed.
	own2 := f.CA.Bundle(t, 2)
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB, f.Web}, Bundles: []*workload.Bundle{own2}})
	_, got = c.recv()
	wantNames(t, got, "ROOTCA", idWeb)
	wantCA(t, got["ROOTCA"], own2)
}

func TestStreamNamesChangeAnsweredAtOnce(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	r1, _ := c.recv()

	// Envoy (with ADS) adds a name in its ACK: every requested resource comes back.
	c.ack(r1, idWeb, "ALL")
	r2, got := c.recv()
	wantNames(t, got, idWeb, "ALL")

	// A name that does not exist: nothing can be sent yet.
	c.ack(r2, "spiffe://example.org/api")
	c.none()
	api := f.CA.Mint(t, "spiffe://example.org/api")
	w.Publish(&workload.View{SVIDs: []*workload.SVID{api}, Bundles: []*workload.Bundle{f.Own}})
	_, got = c.recv()
	wantNames(t, got, "spiffe://example.org/api")
}

func TestStreamStaleNonceIgnored(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	r1, _ := c.recv()
	web2 := f.CA.Mint(t, idWeb)
	w.Publish(&workload.View{SVIDs: []*workload.SVID{web2}, Bundles: []*workload.Bundle{f.Own}})
	r2, _ := c.recv()

	// The ACK of r1 arrives after r2 was sent, asking for other names: it is superseded.
	c.ack(r1, idWeb, idDB, "ROOTCA")
	c.none()
	// The current one is honoured.
	c.ack(r2, idWeb, "ROOTCA")
	_, got := c.recv()
	wantNames(t, got, idWeb, "ROOTCA")
}

func TestStreamReconnectWithOldNonceIsAnswered(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		req  *discoveryv3.DiscoveryRequest
	}{
		{"old version and nonce", &discoveryv3.DiscoveryRequest{Node: testNode, VersionInfo: "lc3r9-17", ResponseNonce: "lc3r9-17", ResourceNames: []string{idWeb}}},
		{"old NACK", &discoveryv3.DiscoveryRequest{Node: testNode, VersionInfo: "lc3r9-16", ResponseNonce: "lc3r9-17", ResourceNames: []string{idWeb},
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.Internal), Message: "old rejection"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workloadtest.NewWatcher(f.View())
			c := openSotw(t, startServer(t, w, nil))
			c.send(tt.req)
			r, got := c.recv()
			wantNames(t, got, idWeb)
			if r.Nonce == tt.req.ResponseNonce {
				t.Errorf("nonce %q reused", r.Nonce)
			}
		})
	}
}

func TestStreamWildcardFollowsView(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(&workload.View{})
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode})
	c.none()
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}})
	r, got := c.recv()
	wantNames(t, got, idWeb, "spiffe://example.org")
	c.ack(r)
	c.none()
	w.Publish(f.View())
	_, got = c.recv()
	wantNames(t, got, idWeb, idDB, "spiffe://example.org", "spiffe://other.org")
}

func TestStreamErrors(t *testing.T) {
	f := newFixture(t)
	many := make([]string, MaxResourceNames+1)
	for i := range many {
		many[i] = fmt.Sprintf("spiffe://example.org/w%d", i)
	}
	tests := []struct {
		name    string
		req     *discoveryv3.DiscoveryRequest
		cfg     func(*Config)
		watcher func(*workloadtest.Watcher)
		code    codes.Code
	}{
		{name: "too many names", req: &discoveryv3.DiscoveryRequest{ResourceNames: many}, code: codes.InvalidArgument},
		{name: "name too long", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{"spiffe://example.org/" + strings.Repeat("a", MaxNameLength)}}, code: codes.InvalidArgument},
		{name: "wrong type_url", req: &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", ResourceNames: []string{idWeb}}, code: codes.InvalidArgument},
		{name: "no peer", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{idWeb}}, code: codes.PermissionDenied,
			cfg: func(c *Config) { c.PeerFunc = nil }}, // the default reads peercred AuthInfo, which this test server does not attach
		{name: "watch fails", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{idWeb}}, code: codes.Unavailable,
			watcher: func(w *workloadtest.Watcher) { w.SetErr(errors.New("attesting pid 4242: process gone")) }},
		{name: "caller refused for good", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{idWeb}}, code: codes.PermissionDenied,
			watcher: func(w *workloadtest.Watcher) { w.SetErr(fmt.Errorf("%w: exec'd", workload.ErrNotEntitled)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workloadtest.NewWatcher(f.View())
			if tt.watcher != nil {
				tt.watcher(w)
			}
			c := openSotw(t, startServer(t, w, tt.cfg))
			c.send(tt.req)
			err := c.err()
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want %v", err, tt.code)
			}
			if tt.code == codes.Unavailable && strings.Contains(err.Error(), "process gone") {
				t.Errorf("internal detail leaked to the client: %v", err)
			}
		})
	}
}

func TestStreamInvalidRequestAfterValidOne(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	r, _ := c.recv()
	c.send(&discoveryv3.DiscoveryRequest{ResponseNonce: r.Nonce, TypeUrl: "type.googleapis.com/wrong"})
	if err := c.err(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
}

func TestStreamClientCloseEndsCleanly(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	c.recv()
	if err := c.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	// io.EOF is how a client sees a handler that returned nil.
	if err := c.err(); !errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want a clean end (EOF)", err)
	}
}
