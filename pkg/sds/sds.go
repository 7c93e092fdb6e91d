package sds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
)

// SecretTypeURL is the only resource type this server serves.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Request limits. A request beyond them fails the stream with InvalidArgument: it is not
// something a retry fixes.
const (
	// MaxResourceNames bounds the names in one request and the names one stream subscribes
	// to; Envoy asks for one name per stream, ADS for a handful.
	MaxResourceNames = 1024
	// MaxNameLength is the longest SPIFFE ID the spec requires us to support (2048 bytes).
	MaxNameLength = 2048
)

// wildcardName subscribes to everything (xDS "*").
const wildcardName = "*"

// Default special names, as in SPIRE so Envoy configs carry over.
const (
	DefaultSVIDName       = "default"
	DefaultBundleName     = "ROOTCA"
	DefaultAllBundlesName = "ALL"
)

// Config configures a Server.
type Config struct {
	// Watcher subscribes a caller to its View (the agent). Required.
	Watcher workload.Watcher
	// TrustDomain is the agent's own trust domain: DefaultBundleName is its bundle. Required.
	TrustDomain spiffeid.TrustDomain
	// DefaultSVIDName, DefaultBundleName and DefaultAllBundlesName are the special names;
	// empty means "default", "ROOTCA" and "ALL". They must differ from each other, from "*"
	// and must not look like SPIFFE IDs.
	DefaultSVIDName       string
	DefaultBundleName     string
	DefaultAllBundlesName string
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Metrics defaults to NopMetrics.
	Metrics Metrics
	// PeerFunc returns the caller of an RPC; it defaults to peercred.FromContext.
	PeerFunc func(ctx context.Context) (*peercred.Peer, bool)
}

// Server implements secretv3.SecretDiscoveryServiceServer.
type Server struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer

	watcher  workload.Watcher
	td       spiffeid.TrustDomain
	svidName string
	rootName string
	allName  string
	log      *slog.Logger
	metrics  Metrics
	peerFunc func(ctx context.Context) (*peercred.Peer, bool)

	// tokenPrefix makes nonces and versions unique across agent restarts (Envoy carries the
	// old ones over when it reconnects); tokenSeq makes them unique within this process.
	tokenPrefix string
	tokenSeq    atomic.Uint64
}

var _ secretv3.SecretDiscoveryServiceServer = (*Server)(nil)

// New validates cfg and returns a Server. It starts nothing.
func New(cfg Config) (*Server, error) {
	if cfg.Watcher == nil {
		return nil, errors.New("sds: watcher is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("sds: trust domain is required")
	}
	s := &Server{
		watcher:     cfg.Watcher,
		td:          cfg.TrustDomain,
		svidName:    orDefault(cfg.DefaultSVIDName, DefaultSVIDName),
		rootName:    orDefault(cfg.DefaultBundleName, DefaultBundleName),
		allName:     orDefault(cfg.DefaultAllBundlesName, DefaultAllBundlesName),
		log:         cfg.Logger,
		metrics:     cfg.Metrics,
		peerFunc:    cfg.PeerFunc,
		tokenPrefix: strconv.FormatInt(time.Now().UnixNano(), 36) + "-",
	}
	names := map[string]string{}
	for _, n := range []struct{ key, val string }{
		{"default SVID name", s.svidName},
		{"default bundle name", s.rootName},
		{"default all-bundles name", s.allName},
	} {
		switch {
		case n.val == wildcardName:
			return nil, fmt.Errorf("sds: %s %q is the xDS wildcard", n.key, n.val)
		case strings.HasPrefix(n.val, "spiffe://"):
			return nil, fmt.Errorf("sds: %s %q looks like a SPIFFE ID", n.key, n.val)
		case len(n.val) > MaxNameLength:
			return nil, fmt.Errorf("sds: %s is longer than %d bytes", n.key, MaxNameLength)
		}
		if other, ok := names[n.val]; ok {
			return nil, fmt.Errorf("sds: %s and %s are both %q", other, n.key, n.val)
		}
		names[n.val] = n.key
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "sds")
	if s.metrics == nil {
		s.metrics = NopMetrics{}
	}
	if s.peerFunc == nil {
		s.peerFunc = peercred.FromContext
	}
	return s, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Register registers the SDS service on g.
func (s *Server) Register(g *grpc.Server) {
	secretv3.RegisterSecretDiscoveryServiceServer(g, s)
}

// token returns a fresh string used as both version_info and nonce of one response.
func (s *Server) token() string {
	return s.tokenPrefix + strconv.FormatUint(s.tokenSeq.Add(1), 36)
}

// watch identifies the caller and subscribes it to its View. Errors are gRPC statuses; the
// detail is logged, not returned. The caller is added to log. names are the resource names of
// the stream's first request: when they say exactly which SVIDs the stream serves (see
// need), Watch is told so and returns once those are ready, possibly with a Partial View.
func (s *Server) watch(ctx context.Context, log *streamLog, names ...string) (*workload.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	p, ok := s.peerFunc(ctx)
	if !ok || p == nil {
		if l := log.at(slog.LevelWarn); l != nil {
			log.limited(l, slog.LevelWarn, "sds request without peer credentials")
		}
		return nil, status.Error(codes.PermissionDenied, "caller could not be identified")
	}
	log.setPeer(p)
	sub, err := s.watcher.Watch(ctx, p, s.need(names))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, status.FromContextError(ctxErr).Err()
		}
		if errors.Is(err, workload.ErrNotEntitled) {
			// The watcher refused the caller for good and said why in its own log.
			return nil, status.Error(codes.PermissionDenied, "no identity for this connection")
		}
		if l := log.at(slog.LevelWarn); l != nil {
			log.limited(l, slog.LevelWarn, "watching caller's identities failed", "error", err)
		}
		return nil, status.Error(codes.Unavailable, "identities unavailable")
	}
	return sub, nil
}

// need turns a first request's names into what Watch must have ready before the stream
// answers: the SVIDs named, when every name is an SVID's SPIFFE ID or a bundle name (a trust
// domain ID, the default bundle or all-bundles name; a stream asking only for bundles needs
// no SVID). Anything else (the default SVID, the wildcard, no names, a name that is neither)
// needs the complete View: the default is only known once every SVID is minted, and the
// others may need any of them.
func (s *Server) need(names []string) workload.Need {
	if len(names) == 0 {
		return workload.NeedAll
	}
	ids := make([]spiffeid.ID, 0, len(names))
	for _, n := range names {
		switch n {
		case s.rootName, s.allName:
			continue
		case s.svidName, wildcardName:
			return workload.NeedAll
		}
		id, err := spiffeid.FromString(n)
		if err != nil {
			return workload.NeedAll
		}
		if id.Path() == "" {
			continue // a trust domain's bundle
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return workload.NeedIDs(ids...)
}

// checkTypeURL accepts the Secret type and, leniently, an empty one: the service implies it.
func checkTypeURL(typeURL string) error {
	if typeURL != "" && typeURL != SecretTypeURL {
		return status.Errorf(codes.InvalidArgument, "unsupported type_url %q: this server only serves %s", truncate(typeURL), SecretTypeURL)
	}
	return nil
}

// checkNames enforces the request limits on one list of names.
func checkNames(field string, names []string) error {
	if len(names) > MaxResourceNames {
		return status.Errorf(codes.InvalidArgument, "%s: %d names, at most %d allowed", field, len(names), MaxResourceNames)
	}
	for _, n := range names {
		if err := checkName(field, n); err != nil {
			return err
		}
	}
	return nil
}

func checkName(field, n string) error {
	if len(n) > MaxNameLength {
		return status.Errorf(codes.InvalidArgument, "%s: name %q is %d bytes, at most %d allowed", field, truncate(n), len(n), MaxNameLength)
	}
	return nil
}

// perNameBytes is what keeping one name costs a stream besides the name's bytes: the string
// header, a slice or map slot, allocation rounding (a slot of a map of strings is 16-32
// bytes, plus its share of the table kept under the load factor).
const perNameBytes = 64

// namesBytes is what a stream holding names is charged (admission.Account.Set).
func namesBytes(names []string) int64 {
	n := int64(len(names)) * perNameBytes
	for _, s := range names {
		n += int64(len(s))
	}
	return n
}

// charge sets what a stream holds for its caller to state bytes, plus the stream itself
// while the caller is entitled to nothing (v is the stream's View): past the uid's budget
// it returns ResourceExhausted, and the stream must end without keeping what it was about
// to keep. A caller entitled to nothing may only wait for an entry with a small budget.
func charge(acct *admission.Account, v *workload.View, state int64) error {
	entitled := !v.Empty()
	if !entitled {
		state += admission.UnentitledStreamBytes
	}
	return acct.Set(state, entitled)
}

// truncate keeps error messages and logs small whatever a client sends.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// recvErr maps the error that ended a stream's Recv to the handler's result: a client that
// closes its side cleanly ends the RPC cleanly.
func recvErr(ctx context.Context, err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return status.FromContextError(ctxErr).Err()
	}
	return err
}
