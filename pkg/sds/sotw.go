package sds

import (
	"context"
	"log/slog"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/pkg/workload"
)

// StreamSecrets serves state-of-the-world SDS: every response carries every requested Secret
// that exists, with a fresh version_info and nonce.
func (s *Server) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	ctx := stream.Context()
	s.metrics.StreamOpened(KindStream)
	defer s.metrics.StreamClosed(KindStream)

	st := &sotwStream{s: s, stream: stream, log: newStreamLog(s.log, "StreamSecrets")}
	defer st.close()

	// The first request is read on the handler's goroutine, which grows its stack to answer it
	// anyway (decoding Envoy's node, attesting, encoding the response). The receiving
	// goroutine started after it only decodes the small requests that follow (ACKs, name
	// changes), so its stack stays small: with thousands of streams, growing and copying two
	// deep stacks per stream was a fifth of the CPU (issue 6).
	first, err := stream.Recv()
	if err != nil {
		return recvErr(ctx, err)
	}
	if err := st.onRequest(ctx, first); err != nil {
		return err
	}
	reqs := make(chan *discoveryv3.DiscoveryRequest)
	errs := make(chan error, 1)
	go recvLoop(ctx, stream.Recv, reqs, errs)

	var updates <-chan *workload.View
	if st.sub != nil {
		updates = st.sub.Updates()
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case err := <-errs:
			return recvErr(ctx, err)
		case req := <-reqs:
			if err := st.onRequest(ctx, req); err != nil {
				return err
			}
			if updates == nil && st.sub != nil {
				updates = st.sub.Updates()
			}
		case v := <-updates:
			if err := st.onView(v); err != nil {
				return err
			}
		}
	}
}

// sotwStream is one StreamSecrets stream's state; only its loop touches it.
type sotwStream struct {
	s      *Server
	stream secretv3.SecretDiscoveryService_StreamSecretsServer
	log    *streamLog
	sub    *workload.Subscription
	view   *workload.View

	started  bool     // the first request has been handled
	names    []string // requested names, deduplicated, in request order, without "*"
	wildcard bool
	// lastNonce is the nonce of the last response sent, "" until the stream sends one: until
	// then a request's nonce (carried over from before an agent restart) is not checked.
	lastNonce string
	// sent holds name → version of the last response.
	sent map[string]string
}

func (st *sotwStream) close() {
	if st.sub != nil {
		st.sub.Close()
		if l := st.log.at(slog.LevelDebug); l != nil {
			l.Debug("sds stream closed")
		}
	}
}

func (st *sotwStream) onRequest(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return err
	}
	if err := checkNames("resource_names", req.GetResourceNames()); err != nil {
		return err
	}
	if !st.started {
		// Envoy sends node only on a stream's first request.
		st.log.setNode(req.GetNode())
		sub, err := st.s.watch(ctx, st.log)
		if err != nil {
			return err
		}
		st.sub = sub
		st.view = initialView(sub)
		if l := st.log.at(slog.LevelDebug); l != nil {
			l.Debug("sds stream opened", "names", len(req.GetResourceNames()))
		}
	}

	nonce := req.GetResponseNonce()
	if st.lastNonce != "" && nonce != "" && nonce != st.lastNonce {
		// It answers an older response; a newer request is on its way and supersedes it.
		st.s.metrics.StaleRequest(KindStream)
		if l := st.log.at(slog.LevelDebug); l != nil {
			l.Debug("ignoring stale sds request", "nonce", truncate(nonce), "last_nonce", st.lastNonce)
		}
		return nil
	}
	acking := st.lastNonce != "" && nonce == st.lastNonce

	names, wildcard := requestedNames(req.GetResourceNames(), !st.started || st.wildcard)
	changed := !st.started || wildcard != st.wildcard || !slices.Equal(names, st.names)
	st.started = true
	st.names, st.wildcard = names, wildcard

	if ed := req.GetErrorDetail(); ed != nil {
		st.s.metrics.NACK(KindStream)
		if l := st.log.at(slog.LevelWarn); l != nil {
			l.Warn("envoy rejected secrets", "nonce", truncate(nonce), "version", truncate(req.GetVersionInfo()),
				"code", codes.Code(ed.GetCode()), "error", truncate(ed.GetMessage()))
		}
		if acking {
			// Re-sending what was just rejected would be rejected again; the next View
			// change brings something new.
			return nil
		}
		// A first request carrying a NACK from before an agent restart: answer it.
	} else if acking {
		st.s.metrics.ACK(KindStream)
	}
	if !changed && st.lastNonce != "" {
		return nil
	}
	return st.respond(st.s.resolveAll(st.view, st.names, st.wildcard))
}

func (st *sotwStream) onView(v *workload.View) error {
	st.view = v
	if !st.started {
		return nil
	}
	rs := st.s.resolveAll(v, st.names, st.wildcard)
	for _, r := range rs {
		if ver, ok := st.sent[r.name]; !ok || ver != r.version {
			return st.respond(rs)
		}
	}
	// Nothing requested is new or changed. A resource that vanished needs no push: in state
	// of the world a missing Secret is not a deletion, and Envoy keeps the one it has.
	return nil
}

// respond sends rs, unless it is empty: Envoy rejects an SDS update that lacks the resource
// it asked for, so an empty response would only produce a NACK.
func (st *sotwStream) respond(rs []resource) error {
	if len(rs) == 0 {
		return nil
	}
	resp, err := st.s.buildResponse(st.view, rs)
	if err != nil {
		if l := st.log.at(slog.LevelError); l != nil {
			l.Error("building sds response failed", "error", err)
		}
		return status.Error(codes.Internal, "building response failed")
	}
	if err := st.stream.Send(resp); err != nil {
		return err
	}
	st.lastNonce = resp.Nonce
	if st.sent == nil {
		st.sent = make(map[string]string, len(rs))
	}
	clear(st.sent)
	for _, r := range rs {
		st.sent[r.name] = r.version
	}
	st.s.metrics.ResponseSent(KindStream, len(rs))
	if l := st.log.at(slog.LevelDebug); l != nil {
		l.Debug("sent secrets", "nonce", resp.Nonce, "resources", len(rs))
	}
	return nil
}

// buildResponse makes a state-of-the-world response carrying rs, resolved against v. Only
// the version and nonce are the response's own: the resources are v's shared encodings.
func (s *Server) buildResponse(v *workload.View, rs []resource) (*discoveryv3.DiscoveryResponse, error) {
	tok := s.token()
	resp := &discoveryv3.DiscoveryResponse{
		VersionInfo: tok,
		Nonce:       tok,
		TypeUrl:     SecretTypeURL,
		Resources:   make([]*anypb.Any, 0, len(rs)),
	}
	for _, r := range rs {
		a, err := r.encoded(v)
		if err != nil {
			return nil, err
		}
		resp.Resources = append(resp.Resources, a)
	}
	return resp, nil
}

// requestedNames deduplicates names, keeping request order, and reports wildcard interest:
// an explicit "*", or no names while the stream is (or starts) in legacy wildcard mode. Once a
// stream has asked for names, an empty list means it wants nothing (xDS).
func requestedNames(names []string, wildcardByDefault bool) ([]string, bool) {
	wildcard := len(names) == 0 && wildcardByDefault
	out := make([]string, 0, len(names))
	var seen map[string]struct{} // only for long lists: Envoy asks for one name per stream
	if len(names) > 16 {
		seen = make(map[string]struct{}, len(names))
	}
	for _, n := range names {
		if n == wildcardName {
			wildcard = true
			continue
		}
		if seen != nil {
			if _, dup := seen[n]; dup {
				continue
			}
			seen[n] = struct{}{}
		} else if slices.Contains(out, n) {
			continue
		}
		out = append(out, n)
	}
	return out, wildcard
}

// initialView takes the View Watch left in the channel, so the first request is answered
// without waiting.
func initialView(sub *workload.Subscription) *workload.View {
	select {
	case v := <-sub.Updates():
		return v
	default:
		return sub.Latest()
	}
}
