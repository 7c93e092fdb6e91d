package sds

import (
	"context"
	"errors"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

var (
	tdExample = workloadtest.ExampleTD
	tdOther   = workloadtest.OtherTD
)

const (
	idWeb = workloadtest.IDWeb
	idDB  = workloadtest.IDDB
)

// testCA is the test CA shared with the Workload API's tests.
type testCA = workloadtest.CA

// fixture is the certificates most tests share (workloadtest.SharedFixture).
type fixture = workloadtest.Fixture

func newFixture(t testing.TB) *fixture { return workloadtest.SharedFixture(t) }

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
	addr := workloadtest.Serve(t, w, srv.Register)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
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
	return streamEnd(c.t, c.done, c.resps)
}

// streamEnd waits for a test stream (SotW or Delta) to end and returns why; a response
// instead fails the test.
func streamEnd[R any](t *testing.T, done <-chan error, resps <-chan R) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case r := <-resps:
		t.Fatalf("response instead of an error: %v", r)
	case <-time.After(waitLong):
		t.Fatal("stream did not end")
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
