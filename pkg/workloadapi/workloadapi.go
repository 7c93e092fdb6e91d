package workloadapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
)

// HeaderKey and HeaderValue are the metadata every Workload API request must carry. The
// header proves the request was made on purpose by a Workload API client: a browser or a
// confused proxy cannot be made to add it (SSRF defence).
const (
	HeaderKey   = "workload.spiffe.io"
	HeaderValue = "true"
)

// Request limits. A request beyond them fails with InvalidArgument: it is not something a
// retry fixes.
const (
	MaxAudiences      = 32
	MaxAudienceLength = 1024
	// MaxTokenLength bounds a JWT-SVID to validate; ours are well under 2 KiB.
	MaxTokenLength = 16 << 10
	// MaxSPIFFEIDLength is the longest SPIFFE ID the spec requires us to support.
	MaxSPIFFEIDLength = 2048
)

// Config configures a Server.
type Config struct {
	// Watcher subscribes a caller to its View (the agent). Required.
	Watcher workload.Watcher
	// JWT mints JWT-SVIDs (the agent). Optional: when nil, FetchJWTSVID answers
	// Unimplemented and the rest of the API works.
	JWT workload.JWTFetcher
	// TrustDomain is the agent's own trust domain: its bundle is each SVID's bundle, every
	// other bundle is federated. Required.
	TrustDomain spiffeid.TrustDomain
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Metrics defaults to NopMetrics.
	Metrics Metrics
	// PeerFunc returns the caller of an RPC; it defaults to peercred.FromContext.
	PeerFunc func(ctx context.Context) (*peercred.Peer, bool)
}

// Server implements workloadpb.SpiffeWorkloadAPIServer. The WIT-SVID RPCs come from the
// embedded Unimplemented server.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer

	watcher  workload.Watcher
	jwt      workload.JWTFetcher
	td       spiffeid.TrustDomain
	log      *slog.Logger
	metrics  Metrics
	peerFunc func(ctx context.Context) (*peercred.Peer, bool)
}

var _ workloadpb.SpiffeWorkloadAPIServer = (*Server)(nil)

// New validates cfg and returns a Server. It starts nothing.
func New(cfg Config) (*Server, error) {
	if cfg.Watcher == nil {
		return nil, errors.New("workloadapi: watcher is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("workloadapi: trust domain is required")
	}
	s := &Server{
		watcher:  cfg.Watcher,
		jwt:      cfg.JWT,
		td:       cfg.TrustDomain,
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		peerFunc: cfg.PeerFunc,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "workloadapi")
	if s.metrics == nil {
		s.metrics = NopMetrics{}
	}
	if s.peerFunc == nil {
		s.peerFunc = peercred.FromContext
	}
	return s, nil
}

// Register registers the SPIFFE Workload API service on g.
func (s *Server) Register(g *grpc.Server) {
	workloadpb.RegisterSpiffeWorkloadAPIServer(g, s)
}

// checkHeader enforces the Workload Endpoint's mandatory metadata. The value is compared
// exactly: the spec makes it case sensitive.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(HeaderKey); len(v) != 1 || v[0] != HeaderValue {
		return status.Errorf(codes.InvalidArgument, "security header missing from request: %q metadata must be %q", HeaderKey, HeaderValue)
	}
	return nil
}

// peer identifies the caller and adds it to log. Errors are gRPC statuses.
func (s *Server) peer(ctx context.Context, log *callLog) (*peercred.Peer, *callLog, error) {
	if err := ctx.Err(); err != nil {
		return nil, log, status.FromContextError(err).Err()
	}
	p, ok := s.peerFunc(ctx)
	if !ok || p == nil {
		log.Warn("workload api request without peer credentials")
		return nil, log, status.Error(codes.PermissionDenied, "caller could not be identified")
	}
	log.setPeer(p)
	return p, log, nil
}

// watch identifies the caller and subscribes it to its View. Errors are gRPC statuses; the
// detail is logged, not returned.
func (s *Server) watch(ctx context.Context, log *callLog, need workload.Need) (*workload.Subscription, *callLog, error) {
	p, log, err := s.peer(ctx, log)
	if err != nil {
		return nil, log, err
	}
	sub, err := s.watcher.Watch(ctx, p, need)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, log, status.FromContextError(ctxErr).Err()
		}
		if errors.Is(err, workload.ErrNotEntitled) {
			// The watcher refused the caller for good and said why in its own log.
			return nil, log, errNoIdentity
		}
		log.Warn("watching caller's identities failed", "error", err)
		return nil, log, status.Error(codes.Unavailable, "identities unavailable")
	}
	return sub, log, nil
}

// errNoIdentity is what a caller entitled to nothing gets: go-spiffe's client retries it with
// backoff, so the caller picks up an identity registered later.
var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// record reports a call's outcome to the metrics.
func (s *Server) record(kind Kind, err error) {
	if err == nil {
		return
	}
	if code := status.Code(err); code != codes.Canceled {
		s.metrics.RequestFailed(kind, code)
	}
}

// sender is the part of a server stream a streaming RPC uses. Responses go out pre-encoded
// through SendMsg (pkg/wire): the server must be created with wire.ServerOption().
type sender interface {
	Context() context.Context
	SendMsg(m any) error
}

// encodedKey memoizes a response's wire encoding on the View it was built from: a response
// memoized on a View is the same message for every stream holding it, so it is marshalled
// once, not once per stream (one View reaches every stream of a caller group).
type encodedKey struct{ resp any }

func encodedResponse(v *workload.View, resp proto.Message) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	r := v.Memo(encodedKey{resp}, func() any {
		// Deterministic: bundle responses are maps, and equal contents must encode equally
		// for serveStream to tell that a new View changes nothing.
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
		return result{b, err}
	}).(result)
	return r.b, r.err
}

// serveStream runs one streaming RPC: check the header, watch the caller, then send build(v)
// for the first View and again for each later View whose response differs from the last one
// sent. An empty View ends the stream with PermissionDenied. build returns the response and
// how many items (SVIDs or bundles) it carries. A Partial View is skipped unless partialOK
// (build only uses bundles, which a Partial View holds as the complete one does): a response
// built from SVIDs must carry the full set, default first, so it waits for the complete View
// that follows.
func serveStream[M proto.Message](s *Server, kind Kind, rpc string, stream sender, partialOK bool, build func(*workload.View) (M, int)) (err error) {
	ctx := stream.Context()
	s.metrics.StreamOpened(kind)
	defer s.metrics.StreamClosed(kind)
	defer func() { s.record(kind, err) }()

	if err := checkHeader(ctx); err != nil {
		return err
	}
	need := workload.NeedAll // the full set of SVIDs, default first
	if partialOK {
		need = workload.NeedBundles // answered without waiting for SVIDs to be minted
	}
	sub, log, err := s.watch(ctx, s.callLog(ctx, rpc), need)
	if err != nil {
		return err
	}
	defer sub.Close()
	log.Debug("workload api stream opened")
	defer log.Debug("workload api stream closed")

	// This handler's goroutine waits anyway (on ctx too), so the subscription's callback just
	// wakes it; a wake-up may cover several Publishes: only the newest View matters.
	wake := make(chan struct{}, 1)
	v, seq := sub.LatestSeq()
	sub.OnPublish(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}, seq)
	var last []byte
	sent := false
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			case <-wake:
				v, _ = sub.LatestSeq()
			}
		}
		if v.Partial && !partialOK {
			// Only an SDS stream's need makes a Partial View, but this stream may share
			// that caller's group: the complete View is on its way.
			continue
		}
		if v.Empty() {
			log.Debug("caller has no identity")
			return errNoIdentity
		}
		resp, n := build(v)
		b, err := encodedResponse(v, resp)
		if err != nil {
			log.Error("encoding workload api response failed", "error", err)
			return status.Error(codes.Internal, "encoding response failed")
		}
		// The whole response is compared rather than versions: Views change rarely,
		// and one that changes nothing this RPC carries is not sent again.
		if sent && bytes.Equal(last, b) {
			continue
		}
		if err := stream.SendMsg(wire.NewMessage(b)); err != nil {
			return err
		}
		last, sent = b, true
		s.metrics.ResponseSent(kind, n)
		if log.Enabled(slog.LevelDebug) {
			log.Debug("sent workload api response", "items", n)
		}
	}
}

// truncate keeps error messages and logs small whatever a client sends.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
