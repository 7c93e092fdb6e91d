package workloadapi

import (
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/svidd/svidd/pkg/workload"
)

// FetchX509SVID streams every X509-SVID the caller holds, default first, with the bundles.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	return serveStream(s, KindX509SVID, "FetchX509SVID", stream, false, s.sharedX509SVIDResponse)
}

// FetchX509Bundles streams the X.509 bundles of every trust domain in the caller's View.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	return serveStream(s, KindX509Bundles, "FetchX509Bundles", stream, true, sharedX509BundlesResponse)
}

// x509SVIDResponse translates a non-empty View. Each SVID carries its own trust domain's
// bundle; every other trust domain's bundle is federated. No hints: entries have none, and
// an empty hint is exempt from the uniqueness rule.
func (s *Server) x509SVIDResponse(v *workload.View) (*workloadpb.X509SVIDResponse, int) {
	resp := &workloadpb.X509SVIDResponse{Svids: make([]*workloadpb.X509SVID, 0, len(v.SVIDs))}
	for _, svid := range v.SVIDs {
		var bundle []byte
		if b := v.BundleFor(svid.ID.TrustDomain()); b != nil {
			bundle = b.DER
		}
		resp.Svids = append(resp.Svids, &workloadpb.X509SVID{
			SpiffeId:    svid.ID.String(),
			X509Svid:    svid.CertChainDER,
			X509SvidKey: svid.KeyDER,
			Bundle:      bundle,
		})
	}
	for _, b := range v.Bundles {
		if b.TrustDomain == s.td {
			continue
		}
		if resp.FederatedBundles == nil {
			resp.FederatedBundles = make(map[string][]byte, len(v.Bundles))
		}
		resp.FederatedBundles[b.TrustDomain.IDString()] = b.DER
	}
	return resp, len(resp.Svids)
}

// x509BundlesResponse translates a non-empty View: one entry per trust domain, keyed by its
// SPIFFE ID as the spec asks, never merged.
func x509BundlesResponse(v *workload.View) (*workloadpb.X509BundlesResponse, int) {
	resp := &workloadpb.X509BundlesResponse{Bundles: make(map[string][]byte, len(v.Bundles))}
	for _, b := range v.Bundles {
		resp.Bundles[b.TrustDomain.IDString()] = b.DER
	}
	return resp, len(resp.Bundles)
}

// Responses are built once per View and shared, read-only, by every stream holding it (a View
// goes to every stream of a caller group); gRPC only reads a message it sends. The keys say
// what a response depends on besides the View.
type (
	x509SVIDKey    struct{ td spiffeid.TrustDomain }
	x509BundlesKey struct{}
	memoResponse   struct {
		resp any
		n    int
	}
)

func (s *Server) sharedX509SVIDResponse(v *workload.View) (*workloadpb.X509SVIDResponse, int) {
	m := v.Memo(x509SVIDKey{s.td}, func() any {
		resp, n := s.x509SVIDResponse(v)
		return memoResponse{resp, n}
	}).(memoResponse)
	return m.resp.(*workloadpb.X509SVIDResponse), m.n
}

func sharedX509BundlesResponse(v *workload.View) (*workloadpb.X509BundlesResponse, int) {
	m := v.Memo(x509BundlesKey{}, func() any {
		resp, n := x509BundlesResponse(v)
		return memoResponse{resp, n}
	}).(memoResponse)
	return m.resp.(*workloadpb.X509BundlesResponse), m.n
}
