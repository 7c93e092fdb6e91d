package sds

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// fakeStream drives a handler in process: requests come from a channel, responses go to a
// checking function. Fuzzing over a real socket would spend its time in the kernel.
type fakeStream[Req, Resp any] struct {
	grpc.ServerStream // nil: the handlers use only Context, Recv and SendMsg
	ctx               context.Context
	reqs              chan *Req
	send              func(*Resp) error
}

func (s *fakeStream[Req, Resp]) Context() context.Context { return s.ctx }
func (s *fakeStream[Req, Resp]) Send(r *Resp) error       { return s.send(r) }

// SendMsg decodes what the handler sends (pre-encoded responses, pkg/wire) as a client would.
func (s *fakeStream[Req, Resp]) SendMsg(m any) error {
	r := new(Resp)
	if err := wire.Decode(m, any(r).(proto.Message)); err != nil {
		return err
	}
	return s.send(r)
}

func (s *fakeStream[Req, Resp]) Recv() (*Req, error) {
	select {
	case r, ok := <-s.reqs:
		if !ok {
			return nil, io.EOF
		}
		return r, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

// fuzzBytes hands out the fuzzer's bytes; past the end it returns zeros.
type fuzzBytes struct{ b []byte }

func (f *fuzzBytes) next() int {
	if len(f.b) == 0 {
		return 0
	}
	v := f.b[0]
	f.b = f.b[1:]
	return int(v)
}

func (f *fuzzBytes) pick(n int) int { return f.next() % n }

var fuzzNames = []string{
	idWeb, idDB, "spiffe://example.org", "spiffe://other.org", "ROOTCA", "default", "ALL", "*",
	"spiffe://example.org/api", "", "file-root:system", "spiffe://", "spiffe:///x", "spiffe://example.org/web/",
}

func fuzzViews(t testing.TB) []*workload.View {
	f := newFixture(t)
	api := f.CA.Mint(t, "spiffe://example.org/api")
	web2 := f.CA.Mint(t, idWeb)
	return []*workload.View{
		{},
		f.View(),
		{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}},
		{SVIDs: []*workload.SVID{api, f.DB, web2}, Bundles: []*workload.Bundle{f.Own, f.Fed.Bundle(t, 8)}},
		{SVIDs: []*workload.SVID{f.DB}, Bundles: []*workload.Bundle{f.Federated}},
		nil,
	}
}

func (f *fuzzBytes) names() []string {
	n := f.pick(5)
	if n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = fuzzNames[f.pick(len(fuzzNames))]
	}
	return out
}

// nonce chooses what a request answers: nothing, the last response, an older one, or one
// this server never sent.
func (f *fuzzBytes) nonce(sent []string) string {
	switch f.pick(4) {
	case 1:
		if len(sent) > 0 {
			return sent[len(sent)-1]
		}
	case 2:
		if len(sent) > 1 {
			return sent[len(sent)-2]
		}
	case 3:
		return "lc3r9-17"
	}
	return ""
}

func (f *fuzzBytes) errorDetail() *rpcstatus.Status {
	if f.pick(4) == 0 {
		return &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}
	}
	return nil
}

func (f *fuzzBytes) typeURL() string {
	switch f.pick(16) {
	case 0:
		return ""
	case 1:
		return "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	}
	return SecretTypeURL
}

// fuzzSeeds are the unit tables' scenarios in the fuzzer's encoding: op 0 sends a request
// (type, names, nonce, NACK), op 1 publishes a View.
var fuzzSeeds = [][]byte{
	{0, 2, 1, 0, 0, 1},                            // one SPIFFE ID
	{0, 2, 0, 0, 1, 0, 2, 1, 0, 1, 1, 1},          // request, then ACK
	{0, 2, 1, 0, 0, 1, 0, 2, 1, 4, 1, 0},          // request, then NACK
	{1, 0, 0, 2, 1, 8, 0, 1, 1, 1, 2},             // unknown name, then it appears
	{0, 2, 0, 0, 1, 1, 3, 0, 2, 1, 1, 2, 1, 1, 1}, // rotation, stale ACK
	{0, 2, 1, 0, 3, 1, 1, 0, 2, 2, 0, 6, 1, 1},    // reconnect with old nonce, names change
	{0, 2, 0, 0, 1, 1, 0, 0, 1, 4, 1, 1},          // wildcard
	{0, 1, 1, 0},                                  // wrong type_url
}

func FuzzStreamRequests(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	views := fuzzViews(f)
	f.Fuzz(func(t *testing.T, data []byte) { fuzzStream(t, views, data) })
}

func fuzzStream(t *testing.T, views []*workload.View, data []byte) {
	in := &fuzzBytes{b: data}
	w := workloadtest.NewWatcher(views[1])
	srv, err := New(Config{Watcher: w, TrustDomain: tdExample, PeerFunc: fixedPeer})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var nonces []string
	seen := map[string]bool{}
	stream := &fakeStream[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]{
		ctx:  ctx,
		reqs: make(chan *discoveryv3.DiscoveryRequest, len(data)+1),
		send: func(r *discoveryv3.DiscoveryResponse) error {
			if len(r.Resources) == 0 {
				t.Error("empty response")
			}
			if _, err := decodeSecrets(r.Resources); err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[r.Nonce] || r.Nonce == "" || r.VersionInfo == "" || r.TypeUrl != SecretTypeURL {
				t.Errorf("bad response header: nonce %q version %q type %q", r.Nonce, r.VersionInfo, r.TypeUrl)
			}
			seen[r.Nonce] = true
			nonces = append(nonces, r.Nonce)
			return nil
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.StreamSecrets(stream) }()

	first := true
	for len(in.b) > 0 {
		switch in.pick(2) {
		case 0:
			req := &discoveryv3.DiscoveryRequest{TypeUrl: in.typeURL(), ResourceNames: in.names()}
			mu.Lock()
			req.ResponseNonce = in.nonce(nonces)
			mu.Unlock()
			req.VersionInfo = req.ResponseNonce
			req.ErrorDetail = in.errorDetail()
			if first {
				req.Node, first = testNode, false
			}
			stream.reqs <- req
		case 1:
			w.Publish(views[in.pick(len(views))])
		}
	}
	close(stream.reqs)
	select {
	case err := <-done:
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("handler: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not return after the client closed")
	}
	if w.Open() != 0 {
		t.Fatal("subscription left open")
	}
}

func FuzzDeltaRequests(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	views := fuzzViews(f)
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDelta(t, views, data) })
}

func fuzzDelta(t *testing.T, views []*workload.View, data []byte) {
	in := &fuzzBytes{b: data}
	w := workloadtest.NewWatcher(views[1])
	srv, err := New(Config{Watcher: w, TrustDomain: tdExample, PeerFunc: fixedPeer})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var nonces []string
	seen := map[string]bool{}
	stream := &fakeStream[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]{
		ctx:  ctx,
		reqs: make(chan *discoveryv3.DeltaDiscoveryRequest, len(data)+1),
		send: func(r *discoveryv3.DeltaDiscoveryResponse) error {
			if len(r.Resources) == 0 && len(r.RemovedResources) == 0 {
				t.Error("empty delta response")
			}
			anys := make([]*anypb.Any, 0, len(r.Resources))
			for _, res := range r.Resources {
				anys = append(anys, res.Resource)
			}
			secrets, err := decodeSecrets(anys)
			if err != nil {
				t.Error(err)
			}
			for _, res := range r.Resources {
				if secrets[res.Name] == nil || res.Version == "" {
					t.Errorf("resource %q (version %q) wraps another secret", res.Name, res.Version)
				}
			}
			for _, n := range r.RemovedResources {
				if secrets[n] != nil {
					t.Errorf("%q both sent and removed", n)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[r.Nonce] || r.Nonce == "" || r.SystemVersionInfo == "" || r.TypeUrl != SecretTypeURL {
				t.Errorf("bad response header: nonce %q version %q type %q", r.Nonce, r.SystemVersionInfo, r.TypeUrl)
			}
			seen[r.Nonce] = true
			nonces = append(nonces, r.Nonce)
			return nil
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.DeltaSecrets(stream) }()

	first := true
	for len(in.b) > 0 {
		switch in.pick(2) {
		case 0:
			req := &discoveryv3.DeltaDiscoveryRequest{
				TypeUrl:                  in.typeURL(),
				ResourceNamesSubscribe:   in.names(),
				ResourceNamesUnsubscribe: in.names(),
			}
			mu.Lock()
			req.ResponseNonce = in.nonce(nonces)
			mu.Unlock()
			req.ErrorDetail = in.errorDetail()
			if first {
				req.Node, first = testNode, false
				if in.pick(2) == 0 {
					req.InitialResourceVersions = map[string]string{}
					for _, n := range in.names() {
						req.InitialResourceVersions[n] = fuzzNames[in.pick(len(fuzzNames))]
					}
				}
			}
			stream.reqs <- req
		case 1:
			w.Publish(views[in.pick(len(views))])
		}
	}
	close(stream.reqs)
	select {
	case err := <-done:
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("handler: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not return after the client closed")
	}
	if w.Open() != 0 {
		t.Fatal("subscription left open")
	}
}
