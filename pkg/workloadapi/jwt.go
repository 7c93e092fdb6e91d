package workloadapi

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/svidd/svidd/pkg/workload"
)

// emptyJWKS is the JWT bundle of a trust domain that publishes no JWT keys: "keys" must be
// present, and empty means no JWT-SVID of that trust domain is valid.
var emptyJWKS = []byte(`{"keys":[]}`)

// FetchJWTSVID mints a JWT-SVID for the requested audience: for spiffe_id when given, else
// one for each identity the caller holds, default first.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (_ *workloadpb.JWTSVIDResponse, err error) {
	defer func() { s.record(KindJWTSVID, err) }()
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if err := checkAudiences(req.GetAudience()); err != nil {
		return nil, err
	}
	var id spiffeid.ID
	if raw := req.GetSpiffeId(); raw != "" {
		if len(raw) > MaxSPIFFEIDLength {
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id is %d bytes, at most %d allowed", len(raw), MaxSPIFFEIDLength)
		}
		if id, err = spiffeid.FromString(raw); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid spiffe_id %q: %v", truncate(raw, 64), err)
		}
	}
	if s.jwt == nil {
		return nil, status.Error(codes.Unimplemented, "this agent does not issue JWT-SVIDs")
	}
	p, log, err := s.peer(ctx, s.callLog(ctx, "FetchJWTSVID"))
	if err != nil {
		return nil, err
	}
	svids, err := s.jwt.FetchJWTSVIDs(ctx, p, id, req.GetAudience())
	switch {
	case err == nil && len(svids) == 0:
		// The client fails on an empty list; the contract says this cannot happen.
		log.Error("jwt fetcher returned no JWT-SVIDs and no error")
		return nil, errNoIdentity
	case err == nil:
	case ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, workload.ErrNotEntitled):
		log.Debug("caller is not entitled to a JWT-SVID", "spiffe_id", id)
		if id.IsZero() {
			return nil, errNoIdentity
		}
		return nil, status.Errorf(codes.PermissionDenied, "no identity %s issued", id)
	default:
		if !errors.Is(err, workload.ErrUnavailable) {
			log.Warn("fetching JWT-SVIDs failed", "error", err)
		}
		return nil, status.Error(codes.Unavailable, "JWT-SVIDs unavailable")
	}
	resp := &workloadpb.JWTSVIDResponse{Svids: make([]*workloadpb.JWTSVID, 0, len(svids))}
	for _, svid := range svids {
		resp.Svids = append(resp.Svids, &workloadpb.JWTSVID{SpiffeId: svid.ID.String(), Svid: svid.Token})
	}
	s.metrics.ResponseSent(KindJWTSVID, len(resp.Svids))
	log.Debug("sent JWT-SVIDs", "svids", len(resp.Svids), "audience", len(req.GetAudience()))
	return resp, nil
}

// checkAudiences enforces that at least one audience is requested, and the limits.
func checkAudiences(aud []string) error {
	switch {
	case len(aud) == 0:
		return status.Error(codes.InvalidArgument, "audience must be specified")
	case len(aud) > MaxAudiences:
		return status.Errorf(codes.InvalidArgument, "%d audiences, at most %d allowed", len(aud), MaxAudiences)
	}
	for _, a := range aud {
		if err := checkAudience(a); err != nil {
			return err
		}
	}
	return nil
}

func checkAudience(a string) error {
	switch {
	case a == "":
		return status.Error(codes.InvalidArgument, "audience must not be empty")
	case len(a) > MaxAudienceLength:
		return status.Errorf(codes.InvalidArgument, "audience %q is %d bytes, at most %d allowed", truncate(a, 64), len(a), MaxAudienceLength)
	}
	return nil
}

// FetchJWTBundles streams the JWT bundles (JWK Sets) of every trust domain in the caller's
// View.
func (s *Server) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	return serveStream(s, KindJWTBundles, "FetchJWTBundles", stream, true, jwtBundlesResponse)
}

// jwtBundlesResponse translates a non-empty View. Every trust domain gets an entry, its own
// one included as the spec requires, even when it has no JWT keys: go-spiffe's client rejects
// the whole response if one entry is not a JWK Set, so never an empty value.
func jwtBundlesResponse(v *workload.View) (*workloadpb.JWTBundlesResponse, int) {
	resp := &workloadpb.JWTBundlesResponse{Bundles: make(map[string][]byte, len(v.Bundles))}
	for _, b := range v.Bundles {
		resp.Bundles[b.TrustDomain.IDString()] = jwks(b)
	}
	return resp, len(resp.Bundles)
}

// jwks returns b's JWK Set: the agent's precomputed one, else one built from the keys.
func jwks(b *workload.Bundle) []byte {
	switch {
	case len(b.JWKS) > 0:
		return b.JWKS
	case len(b.JWTAuthorities) == 0:
		return emptyJWKS
	}
	data, err := jwtbundle.FromJWTAuthorities(b.TrustDomain, b.JWTAuthorities).Marshal()
	if err != nil {
		// Only an unsupported key type fails; publish no key rather than a broken document.
		return emptyJWKS
	}
	return data
}

// ValidateJWTSVID validates a JWT-SVID against the JWT authorities of the trust domains the
// caller trusts (its View's bundles) and the caller's audience.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (_ *workloadpb.ValidateJWTSVIDResponse, err error) {
	defer func() { s.record(KindValidateJWTSVID, err) }()
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	aud, token := req.GetAudience(), req.GetSvid()
	switch {
	case aud == "":
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	case token == "":
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	case len(token) > MaxTokenLength:
		return nil, status.Errorf(codes.InvalidArgument, "svid is %d bytes, at most %d allowed", len(token), MaxTokenLength)
	}
	if err := checkAudience(aud); err != nil {
		return nil, err
	}

	sub, log, err := s.watch(ctx, s.callLog(ctx, "ValidateJWTSVID"), workload.NeedBundles)
	if err != nil {
		return nil, err
	}
	// Only the bundles are used: a Partial View (see workload.View) holds them as the
	// complete one does, so there is no need to wait for it.
	v := sub.Latest()
	sub.Close()
	if v.Empty() {
		log.Debug("caller has no identity")
		return nil, errNoIdentity
	}

	set := jwtbundle.NewSet()
	for _, b := range v.Bundles {
		set.Add(jwtbundle.FromJWTAuthorities(b.TrustDomain, b.JWTAuthorities))
	}
	svid, err := jwtsvid.ParseAndValidate(token, set, []string{aud})
	if err != nil {
		log.Debug("JWT-SVID rejected", "error", err)
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %s", truncate(err.Error(), 512))
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		// JSON-decoded claims always convert; keep the promise of a valid response anyway.
		return nil, status.Errorf(codes.InvalidArgument, "JWT-SVID claims cannot be represented: %s", truncate(err.Error(), 128))
	}
	s.metrics.ResponseSent(KindValidateJWTSVID, 1)
	log.Debug("validated JWT-SVID", "spiffe_id", svid.ID)
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}
