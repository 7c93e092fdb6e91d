package workloadapi

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// fakeStream drives a streaming handler in process: each response goes to send, which ends
// the call by returning an error. Fuzzing over a real socket would spend its time in the
// kernel.
type fakeStream[Resp any] struct {
	grpc.ServerStream // nil: the handlers use only Context and SendMsg
	ctx               context.Context
	send              func(*Resp) error
}

func (s *fakeStream[Resp]) Context() context.Context { return s.ctx }
func (s *fakeStream[Resp]) Send(r *Resp) error       { return s.send(r) }

// SendMsg decodes what the handler sends (pre-encoded responses, pkg/wire) as a client would.
func (s *fakeStream[Resp]) SendMsg(m any) error {
	r := new(Resp)
	if err := wire.Decode(m, any(r).(proto.Message)); err != nil {
		return err
	}
	return s.send(r)
}

// errStop ends a fuzzed stream after its first response.
var errStop = errors.New("stop")

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

// str returns a string from the pool, or raw fuzz bytes (any length up to the rest).
func (f *fuzzBytes) str(pool []string) string {
	i := f.pick(len(pool) + 2)
	switch {
	case i < len(pool):
		return pool[i]
	case i == len(pool):
		return ""
	}
	n := f.next() * 64
	if n > len(f.b) {
		n = len(f.b)
	}
	s := string(f.b[:n])
	f.b = f.b[n:]
	return s
}

var fuzzAudiences = []string{"svc", "svc-a", strings.Repeat("a", MaxAudienceLength), strings.Repeat("a", MaxAudienceLength+1), "spiffe://example.org/web"}

var fuzzIDs = []string{idWeb, idDB, "spiffe://example.org/api", "spiffe://other.org/x", "spiffe://example.org", "example.org/web",
	"spiffe://EXAMPLE.org/web", "spiffe://example.org/web/", "spiffe:///x", "spiffe://example.org/" + strings.Repeat("a", MaxSPIFFEIDLength)}

func FuzzWorkloadAPI(f *testing.F) {
	fix := newFixture(f)
	api := fix.CA.Mint(f, "spiffe://example.org/api")
	noJWT := *fix.Federated
	noJWT.JWTAuthorities, noJWT.JWKS = nil, nil
	views := []*workload.View{
		{},
		nil,
		fix.View(),
		{SVIDs: []*workload.SVID{fix.Web}, Bundles: []*workload.Bundle{fix.Own}},
		{SVIDs: []*workload.SVID{api, fix.DB}, Bundles: []*workload.Bundle{fix.Own, &noJWT}},
		{SVIDs: []*workload.SVID{fix.DB}, Bundles: []*workload.Bundle{fix.Federated}}, // own bundle missing
		{SVIDs: []*workload.SVID{fix.DB}},
	}
	tokens := []string{
		caSign(f, fix.CA, fix.DB.ID, []string{"svc"}, time.Minute),
		caSign(f, fix.CA, fix.Web.ID, []string{"svc", "svc-a"}, time.Minute),
		caSign(f, fix.CA, fix.DB.ID, []string{"svc"}, -time.Minute),
		caSign(f, fix.Fed, fix.DB.ID, []string{"svc"}, time.Minute),
		"a.b.c", "..", strings.Repeat("x", MaxTokenLength+1),
	}

	for _, seed := range [][]byte{
		{}, {0, 0, 2}, {1, 1, 2}, {2, 1, 2, 1, 0, 0}, {3, 1, 3}, {4, 1, 2, 0, 0, 0},
		{2, 1, 2, 3, 5, 3, 1, 9}, {4, 1, 4, 2, 6, 0}, {0, 2, 2}, {4, 0, 2, 0, 8, 200, 'a', '.', 'b'},
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzBytes{b: data}
		rpc := in.pick(5)
		var md metadata.MD
		switch in.pick(4) {
		case 0:
		case 1, 2:
			md = metadata.Pairs(HeaderKey, HeaderValue)
		case 3:
			md = metadata.Pairs(HeaderKey, in.str([]string{"True", "TRUE", "1", HeaderValue}))
		}
		view := views[in.pick(len(views))]
		w := workloadtest.NewWatcher(view)
		fj := &fakeJWT{w: w, ca: fix.CA}
		switch in.pick(8) {
		case 0:
			w.SetErr(errors.New("attestation failed"))
		case 1:
			fj.err = workload.ErrUnavailable
		}
		s, err := New(Config{Watcher: w, JWT: fj, TrustDomain: tdExample, PeerFunc: fixedPeer})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(metadata.NewIncomingContext(context.Background(), md), 5*time.Second)
		defer cancel()

		var responses int
		switch rpc {
		case 0:
			err = s.FetchX509SVID(&workloadpb.X509SVIDRequest{}, &fakeStream[workloadpb.X509SVIDResponse]{ctx: ctx, send: func(r *workloadpb.X509SVIDResponse) error {
				responses++
				if len(r.Svids) != len(view.SVIDs) {
					t.Errorf("%d SVIDs, View has %d", len(r.Svids), len(view.SVIDs))
				}
				return errStop
			}})
		case 1:
			err = s.FetchX509Bundles(&workloadpb.X509BundlesRequest{}, &fakeStream[workloadpb.X509BundlesResponse]{ctx: ctx, send: func(r *workloadpb.X509BundlesResponse) error {
				responses++
				return errStop
			}})
		case 2:
			err = s.FetchJWTBundles(&workloadpb.JWTBundlesRequest{}, &fakeStream[workloadpb.JWTBundlesResponse]{ctx: ctx, send: func(r *workloadpb.JWTBundlesResponse) error {
				responses++
				for td, b := range r.Bundles {
					if len(b) == 0 {
						t.Errorf("empty JWT bundle for %s", td)
					}
				}
				return errStop
			}})
		case 3:
			req := &workloadpb.JWTSVIDRequest{SpiffeId: in.str(fuzzIDs)}
			for range in.pick(MaxAudiences + 3) {
				req.Audience = append(req.Audience, in.str(fuzzAudiences))
			}
			var resp *workloadpb.JWTSVIDResponse
			resp, err = s.FetchJWTSVID(ctx, req)
			if err == nil {
				responses++
				if len(resp.Svids) == 0 {
					t.Error("FetchJWTSVID succeeded with no SVIDs")
				}
			}
		case 4:
			req := &workloadpb.ValidateJWTSVIDRequest{Audience: in.str(fuzzAudiences), Svid: in.str(tokens)}
			var resp *workloadpb.ValidateJWTSVIDResponse
			resp, err = s.ValidateJWTSVID(ctx, req)
			if err == nil {
				responses++
				if resp.SpiffeId == "" || resp.Claims == nil {
					t.Error("ValidateJWTSVID succeeded without spiffe_id or claims")
				}
			}
		}

		switch code := status.Code(err); {
		case errors.Is(err, errStop), err == nil:
			if responses != 1 {
				t.Fatalf("rpc %d: %d responses", rpc, responses)
			}
			if md.Get(HeaderKey) == nil || md.Get(HeaderKey)[0] != HeaderValue {
				t.Fatalf("rpc %d answered without the header", rpc)
			}
		case code == codes.InvalidArgument, code == codes.PermissionDenied, code == codes.Unavailable:
		default:
			t.Fatalf("rpc %d: unexpected error %v", rpc, err)
		}
		if n := w.Open(); n != 0 {
			t.Fatalf("rpc %d left %d subscriptions open", rpc, n)
		}
	})
}
