package sds

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

var (
	tdExample = spiffeid.RequireTrustDomainFromString("example.org")
	tdOther   = spiffeid.RequireTrustDomainFromString("other.org")
)

// testCA is the test CA shared with the Workload API's tests.
type testCA = workloadtest.CA

// fixture holds the certificates most tests share: two SVIDs of the caller and two bundles.
type fixture struct {
	ca, fed        *testCA
	web, db        *workload.SVID
	own, federated *workload.Bundle
}

const (
	idWeb = "spiffe://example.org/web"
	idDB  = "spiffe://example.org/db"
)

var (
	fixtureOnce sync.Once
	sharedFix   *fixture
)

// newFixture returns shared, immutable certificates (key generation is the slow part of
// these tests).
func newFixture(t testing.TB) *fixture {
	fixtureOnce.Do(func() {
		ca, fed := workloadtest.NewCA(t, tdExample, "k1"), workloadtest.NewCA(t, tdOther, "fed1")
		sharedFix = &fixture{
			ca: ca, fed: fed,
			web: ca.Mint(t, idWeb), db: ca.Mint(t, idDB),
			own: ca.Bundle(t, 1), federated: fed.Bundle(t, 7),
		}
	})
	return sharedFix
}

// view is the caller's usual View: the agent orders SVIDs by SPIFFE ID, so db comes first.
func (f *fixture) view() *workload.View {
	return &workload.View{SVIDs: []*workload.SVID{f.db, f.web}, Bundles: []*workload.Bundle{f.own, f.federated}}
}

var testPeer = peercred.NewPeer(4242, 1000, 1000, -1)

func fixedPeer(context.Context) (*peercred.Peer, bool) { return testPeer, true }

// startServer serves SDS on a Unix socket in a short temp dir and returns a client. At
// cleanup it checks every stream handler closed its subscription.
func startServer(t *testing.T, w *workloadtest.Watcher, mod func(*Config)) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	cfg := Config{Watcher: w, TrustDomain: tdExample, PeerFunc: fixedPeer}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(wire.ServerOption())
	srv.Register(g)
	served := make(chan error, 1)
	go func() { served <- g.Serve(ln) }()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for w.Open() > 0 {
			if time.Now().After(deadline) {
				t.Errorf("%d subscriptions left open after the server stopped", w.Open())
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

var testNode = &corev3.Node{
	Id:      "sidecar~10.0.0.1~web",
	Cluster: "web",
	UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
		Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 34, Patch: 2},
	}},
	UserAgentName: "envoy",
}

const (
	waitLong  = 5 * time.Second
	waitQuiet = 200 * time.Millisecond
)

// sotwClient plays Envoy on one StreamSecrets stream.
type sotwClient struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	resps  chan *discoveryv3.DiscoveryResponse
	done   chan error
	cancel context.CancelFunc
}

func openSotw(t *testing.T, c secretv3.SecretDiscoveryServiceClient) *sotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.StreamSecrets(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	sc := &sotwClient{t: t, stream: stream, resps: make(chan *discoveryv3.DiscoveryResponse, 16), done: make(chan error, 1), cancel: cancel}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				sc.done <- err
				return
			}
			sc.resps <- r
		}
	}()
	t.Cleanup(cancel)
	return sc
}

func (c *sotwClient) send(req *discoveryv3.DiscoveryRequest) {
	c.t.Helper()
	if req.TypeUrl == "" {
		req.TypeUrl = SecretTypeURL
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv waits for the next response and checks it as Envoy's validation would.
func (c *sotwClient) recv() (*discoveryv3.DiscoveryResponse, map[string]*tlsv3.Secret) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		if r.TypeUrl != SecretTypeURL {
			c.t.Errorf("response type_url %q", r.TypeUrl)
		}
		if r.VersionInfo == "" || r.Nonce == "" {
			c.t.Errorf("response without version_info or nonce: %q %q", r.VersionInfo, r.Nonce)
		}
		return r, checkSecrets(c.t, r.Resources)
	case err := <-c.done:
		c.t.Fatalf("stream ended while waiting for a response: %v", err)
	case <-time.After(waitLong):
		c.t.Fatal("no response")
	}
	return nil, nil
}

// none asserts that nothing arrives for a while.
func (c *sotwClient) none() {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected response with %d resources (nonce %s)", len(r.Resources), r.Nonce)
	case err := <-c.done:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitQuiet):
	}
}

// err waits for the stream to end and returns why.
func (c *sotwClient) err() error {
	c.t.Helper()
	select {
	case err := <-c.done:
		return err
	case r := <-c.resps:
		c.t.Fatalf("response instead of an error: %v", r)
	case <-time.After(waitLong):
		c.t.Fatal("stream did not end")
	}
	return nil
}

// ack acknowledges r as Envoy does.
func (c *sotwClient) ack(r *discoveryv3.DiscoveryResponse, names ...string) {
	c.send(&discoveryv3.DiscoveryRequest{VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: names})
}

// checkSecrets unmarshals every resource, requires it to be a valid Secret and every name to
// be unique, and returns them by name.
func checkSecrets(t testing.TB, resources []*anypb.Any) map[string]*tlsv3.Secret {
	t.Helper()
	out, err := decodeSecrets(resources)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func decodeSecrets(resources []*anypb.Any) (map[string]*tlsv3.Secret, error) {
	out := make(map[string]*tlsv3.Secret, len(resources))
	for _, a := range resources {
		if a.GetTypeUrl() != SecretTypeURL {
			return nil, errors.New("resource type " + a.GetTypeUrl())
		}
		sec := &tlsv3.Secret{}
		if err := proto.Unmarshal(a.GetValue(), sec); err != nil {
			return nil, err
		}
		if err := sec.ValidateAll(); err != nil {
			return nil, err
		}
		if cvc := sec.GetValidationContext().GetCustomValidatorConfig(); cvc != nil {
			cfg := &tlsv3.SPIFFECertValidatorConfig{}
			if err := cvc.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				return nil, err
			}
			if err := cfg.ValidateAll(); err != nil {
				return nil, err
			}
		}
		if _, dup := out[sec.Name]; dup {
			return nil, errors.New("secret " + sec.Name + " twice in one response")
		}
		out[sec.Name] = sec
	}
	return out, nil
}
