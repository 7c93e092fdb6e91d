package sds

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// deltaClient plays Envoy on one DeltaSecrets stream.
type deltaClient struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	resps  chan *discoveryv3.DeltaDiscoveryResponse
	done   chan error
}

func openDelta(t *testing.T, c secretv3.SecretDiscoveryServiceClient) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dc := &deltaClient{t: t, stream: stream, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 16), done: make(chan error, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				dc.done <- err
				return
			}
			dc.resps <- r
		}
	}()
	return dc
}

func (c *deltaClient) send(req *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	if req.TypeUrl == "" {
		req.TypeUrl = SecretTypeURL
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv returns the next response, its Secrets by name and each one's version.
func (c *deltaClient) recv() (*discoveryv3.DeltaDiscoveryResponse, map[string]*tlsv3.Secret, map[string]string) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		if r.TypeUrl != SecretTypeURL || r.Nonce == "" || r.SystemVersionInfo == "" {
			c.t.Errorf("response type_url %q nonce %q system_version_info %q", r.TypeUrl, r.Nonce, r.SystemVersionInfo)
		}
		anys := make([]*anypb.Any, 0, len(r.Resources))
		versions := map[string]string{}
		for _, res := range r.Resources {
			anys = append(anys, res.Resource)
			versions[res.Name] = res.Version
		}
		secrets := checkSecrets(c.t, anys)
		for name := range versions {
			if secrets[name] == nil {
				c.t.Errorf("resource %q wraps a secret with another name", name)
			}
		}
		if len(r.Resources) == 0 && len(r.RemovedResources) == 0 {
			c.t.Error("empty delta response (Envoy mishandles them, envoy#24373)")
		}
		return r, secrets, versions
	case err := <-c.done:
		c.t.Fatalf("stream ended while waiting for a response: %v", err)
	case <-time.After(waitLong):
		c.t.Fatal("no response")
	}
	return nil, nil, nil
}

func (c *deltaClient) none() {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected response: %d resources, removed %v", len(r.Resources), r.RemovedResources)
	case err := <-c.done:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitQuiet):
	}
}

func (c *deltaClient) ack(r *discoveryv3.DeltaDiscoveryResponse) {
	c.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: r.Nonce})
}

func TestDeltaSubscribeRotateRemove(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openDelta(t, startServer(t, w, nil))
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{idWeb, "ROOTCA"}})
	r, got, versions := c.recv()
	wantNames(t, got, idWeb, "ROOTCA")
	wantTLS(t, got[idWeb], f.Web, f.CA)
	wantCA(t, got["ROOTCA"], f.Own)
	if versions[idWeb] != f.Web.Serial || versions["ROOTCA"] != "1" {
		t.Errorf("versions %v, want the serial and the bundle sequence", versions)
	}
	c.ack(r)
	c.none()

	// Rotation sends only what changed.
	web2 := f.CA.Mint(t, idWeb)
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB, web2}, Bundles: []*workload.Bundle{f.Own}})
	r, got, _ = c.recv()
	wantNames(t, got, idWeb)
	wantTLS(t, got[idWeb], web2, f.CA)
	c.ack(r)

	// The entry is deleted: the client is told to drop the secret.
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB}, Bundles: []*workload.Bundle{f.Own}})
	r, got, _ = c.recv()
	wantNames(t, got)
	if !slices.Equal(r.RemovedResources, []string{idWeb}) {
		t.Fatalf("removed %v, want [%s]", r.RemovedResources, idWeb)
	}
	c.ack(r)
	c.none()

	// It comes back: still subscribed, so it is sent.
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB, web2}, Bundles: []*workload.Bundle{f.Own}})
	_, got, _ = c.recv()
	wantNames(t, got, idWeb)
}

func TestDeltaInitialResourceVersions(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name        string
		initial     map[string]string
		subscribe   []string
		wantSent    []string
		wantRemoved []string // nil: no response at all when wantSent is empty too
	}{
		{
			name:      "client is up to date",
			initial:   map[string]string{idWeb: f.Web.Serial, "ROOTCA": "1"},
			subscribe: []string{idWeb, "ROOTCA"},
		},
		{
			name:      "only the stale one is sent",
			initial:   map[string]string{idWeb: f.Web.Serial, "ROOTCA": "0", idDB: "minted-before-restart"},
			subscribe: []string{idWeb, "ROOTCA", idDB},
			wantSent:  []string{"ROOTCA", idDB},
		},
		{
			name:        "a held secret the caller lost is removed",
			initial:     map[string]string{idWeb: f.Web.Serial, "spiffe://example.org/gone": "abc"},
			subscribe:   []string{idWeb, "spiffe://example.org/gone"},
			wantRemoved: []string{"spiffe://example.org/gone"},
		},
		{
			name:      "no initial versions",
			subscribe: []string{idWeb},
			wantSent:  []string{idWeb},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workloadtest.NewWatcher(f.View())
			c := openDelta(t, startServer(t, w, nil))
			c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: tt.subscribe,
				InitialResourceVersions: tt.initial, ResponseNonce: "from-before-restart"})
			if len(tt.wantSent) == 0 && len(tt.wantRemoved) == 0 {
				c.none()
				return
			}
			r, got, _ := c.recv()
			wantNames(t, got, tt.wantSent...)
			if !slices.Equal(r.RemovedResources, tt.wantRemoved) {
				t.Errorf("removed %v, want %v", r.RemovedResources, tt.wantRemoved)
			}
		})
	}
}

func TestDeltaUnsubscribeAndResubscribe(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openDelta(t, startServer(t, w, nil))
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{idWeb, idDB}})
	r, _, _ := c.recv()
	c.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: r.Nonce, ResourceNamesUnsubscribe: []string{idWeb}})
	c.none()
	// Rotating what nobody asks for any more sends nothing.
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB, f.CA.Mint(t, idWeb)}, Bundles: []*workload.Bundle{f.Own}})
	c.none()
	// Subscribing again sends it, even though the client had this name before.
	c.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{idWeb}})
	_, got, _ := c.recv()
	wantNames(t, got, idWeb)
}

func TestDeltaNACKIsNotAnsweredWithTheSameSecrets(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openDelta(t, startServer(t, w, nil))
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{"ALL"}})
	r, _, _ := c.recv()
	c.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: r.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "unknown validator"}})
	c.none()
	w.Publish(f.View())
	c.none()
	// A federated bundle rotating changes ALL.
	w.Publish(&workload.View{SVIDs: f.View().SVIDs, Bundles: []*workload.Bundle{f.Own, f.Fed.Bundle(t, 8)}})
	_, got, versions := c.recv()
	wantNames(t, got, "ALL")
	if versions["ALL"] != "example.org=1,other.org=8" {
		t.Errorf("ALL version %q", versions["ALL"])
	}
}

func TestDeltaWildcard(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(&workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own, f.Federated}})
	c := openDelta(t, startServer(t, w, nil))
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode})
	r, got, _ := c.recv()
	wantNames(t, got, idWeb, "spiffe://example.org", "spiffe://other.org")
	c.ack(r)
	// A new entry: only the new SVID is sent. A federation dropped: removed.
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.DB, f.Web}, Bundles: []*workload.Bundle{f.Own}})
	r, got, _ = c.recv()
	wantNames(t, got, idDB)
	if !slices.Equal(r.RemovedResources, []string{"spiffe://other.org"}) {
		t.Errorf("removed %v", r.RemovedResources)
	}
}

func TestDeltaUnknownNameIsPushedWhenItAppears(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(&workload.View{})
	c := openDelta(t, startServer(t, w, nil))
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{"default"}})
	c.none()
	w.Publish(&workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}})
	_, got, _ := c.recv()
	wantNames(t, got, "default")
	wantTLS(t, got["default"], f.Web, f.CA)
}

func TestDeltaErrors(t *testing.T) {
	f := newFixture(t)
	many := make([]string, MaxResourceNames+1)
	for i := range many {
		many[i] = fmt.Sprintf("spiffe://example.org/w%d", i)
	}
	tests := []struct {
		name string
		reqs []*discoveryv3.DeltaDiscoveryRequest
	}{
		{"wrong type_url", []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener"}}},
		{"too many names", []*discoveryv3.DeltaDiscoveryRequest{{ResourceNamesSubscribe: many}}},
		{"name too long", []*discoveryv3.DeltaDiscoveryRequest{{ResourceNamesUnsubscribe: []string{strings.Repeat("a", MaxNameLength+1)}}}},
		{"too many subscriptions over time", []*discoveryv3.DeltaDiscoveryRequest{
			{ResourceNamesSubscribe: many[:MaxResourceNames/2+1]},
			{ResourceNamesSubscribe: many[MaxResourceNames/2+1 : MaxResourceNames+1]},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := openDelta(t, startServer(t, workloadtest.NewWatcher(f.View()), nil))
			for _, req := range tt.reqs {
				c.send(req)
			}
			select {
			case err := <-c.done:
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("got %v, want InvalidArgument", err)
				}
			case <-time.After(waitLong):
				t.Fatal("stream not ended")
			}
		})
	}
}

// TestDeltaFederatedBundleDroppedAndEmpty: a federated trust domain's bundle is served by its
// ID and inside ALL; a bundle without X.509 authorities (JWT keys only, or revoked) is never
// sent as a validation context (Envoy rejects an empty trusted_ca) and leaves ALL; when the
// federation ends, the delta stream is told to remove it.
func TestDeltaFederatedBundleDroppedAndEmpty(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openDelta(t, startServer(t, w, nil))
	fedID := f.Federated.TrustDomain.IDString()
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{fedID, "ALL"}})
	r, got, _ := c.recv()
	wantNames(t, got, fedID, "ALL")
	wantCA(t, got[fedID], f.Federated)
	if tds := got["ALL"].GetValidationContext().GetCustomValidatorConfig(); tds == nil {
		t.Fatal("ALL is not a SPIFFE validator config")
	}
	c.ack(r)

	// The foreign trust domain now publishes JWT keys only.
	jwtOnly := *f.Federated
	jwtOnly.X509Authorities, jwtOnly.PEM, jwtOnly.DER = nil, nil, nil
	jwtOnly.Sequence++
	w.Publish(&workload.View{SVIDs: f.View().SVIDs, Bundles: []*workload.Bundle{f.Own, &jwtOnly}})
	r, got, _ = c.recv()
	if !slices.Equal(r.RemovedResources, []string{fedID}) {
		t.Fatalf("removed %v, want [%s]: a bundle without X.509 roots must not stay a validation context", r.RemovedResources, fedID)
	}
	wantNames(t, got, "ALL")
	var v tlsv3.SPIFFECertValidatorConfig
	if err := got["ALL"].GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&v); err != nil {
		t.Fatal(err)
	}
	if len(v.TrustDomains) != 1 || v.TrustDomains[0].Name != "example.org" {
		t.Fatalf("ALL holds %v, want only example.org", v.TrustDomains)
	}
	c.ack(r)

	// It has roots again, then the federation is dropped.
	w.Publish(f.View())
	r, got, _ = c.recv()
	wantNames(t, got, fedID, "ALL")
	c.ack(r)
	w.Publish(&workload.View{SVIDs: f.View().SVIDs, Bundles: []*workload.Bundle{f.Own}})
	r, got, _ = c.recv()
	if !slices.Equal(r.RemovedResources, []string{fedID}) {
		t.Fatalf("removed %v, want [%s]", r.RemovedResources, fedID)
	}
	wantNames(t, got, "ALL")
	c.ack(r)
	c.none()
}
