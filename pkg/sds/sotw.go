package sds

import (
	"context"
	"log/slog"
	"slices"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
)

// StreamSecrets serves state-of-the-world SDS: every response carries every requested Secret
// that exists, with a fresh version_info and nonce.
func (s *Server) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	ctx := stream.Context()
	s.metrics.StreamOpened(KindStream)
	defer s.metrics.StreamClosed(KindStream)

	acct := admission.AccountFrom(ctx)
	st := &sotwStream{s: s, stream: stream, acct: acct, log: newStreamLog(s.log, "StreamSecrets", acct)}
	return serve(ctx, stream.Recv, &st.pusher, st.onRequest, st.onView, st.subscription)
}

// sotwStream is one StreamSecrets stream's state, guarded by pusher.mu: the handler goroutine
// (requests) and the pusher (View updates) both change it.
type sotwStream struct {
	pusher
	s      *Server
	stream secretv3.SecretDiscoveryService_StreamSecretsServer
	acct   *admission.Account // the caller's budget: the names are charged to it
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
	// openedAt is when the first request arrived; the first response reports the wait.
	openedAt time.Time
}

func (st *sotwStream) subscription() (*workload.Subscription, *streamLog) { return st.sub, st.log }

func (st *sotwStream) onRequest(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return err
	}
	if err := checkNames("resource_names", req.GetResourceNames()); err != nil {
		return err
	}
	if !st.started {
		st.openedAt = time.Now()
		// Envoy sends node only on a stream's first request.
		st.log.setNode(req.GetNode())
		sub, err := st.s.watch(ctx, st.log, req.GetResourceNames()...)
		if err != nil {
			return err
		}
		st.sub = sub
		st.view, st.seq = sub.LatestSeq()
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
	if err := charge(st.acct, st.view, namesBytes(names)); err != nil {
		return err
	}
	changed := !st.started || wildcard != st.wildcard || !slices.Equal(names, st.names)
	st.started = true
	st.names, st.wildcard = names, wildcard

	if ed := req.GetErrorDetail(); ed != nil {
		st.s.metrics.NACK(KindStream)
		if l := st.log.at(slog.LevelWarn); l != nil {
			st.log.limited(l, slog.LevelWarn, "envoy rejected secrets", "nonce", truncate(nonce), "version", truncate(req.GetVersionInfo()),
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
	msg, tok, err := st.s.buildResponse(st.view, rs)
	if err != nil {
		if l := st.log.at(slog.LevelError); l != nil {
			st.log.limited(l, slog.LevelError, "building sds response failed", "error", err)
		}
		return status.Error(codes.Internal, "building response failed")
	}
	if err := st.stream.SendMsg(msg); err != nil {
		return err
	}
	if st.lastNonce == "" {
		st.s.metrics.FirstResponse(KindStream, time.Since(st.openedAt))
	}
	st.lastNonce = tok
	if st.sent == nil {
		st.sent = make(map[string]string, len(rs))
	}
	clear(st.sent)
	for _, r := range rs {
		st.sent[r.name] = r.version
	}
	st.s.metrics.ResponseSent(KindStream, len(rs))
	if l := st.log.at(slog.LevelDebug); l != nil {
		l.Debug("sent secrets", "nonce", tok, "resources", len(rs))
	}
	return nil
}

// buildResponse makes a state-of-the-world response carrying rs, resolved against v, and
// returns it with its version and nonce (one token). Only those and the type are the
// response's own bytes: the resources are v's shared encodings.
func (s *Server) buildResponse(v *workload.View, rs []resource) (*wire.Message, string, error) {
	tok := s.token()
	parts := make([][]byte, 1, len(rs)+1)
	for _, r := range rs {
		b, err := r.encoded(v, sotwEncoding)
		if err != nil {
			return nil, "", err
		}
		parts = append(parts, b)
	}
	h := make([]byte, 0, 2*len(tok)+len(SecretTypeURL)+8)
	h = appendString(h, respVersionInfoField, tok)
	h = appendString(h, respTypeURLField, SecretTypeURL)
	h = appendString(h, respNonceField, tok)
	parts[0] = h
	return wire.NewMessage(parts...), tok, nil
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
