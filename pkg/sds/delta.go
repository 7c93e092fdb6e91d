package sds

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
)

// DeltaSecrets serves incremental SDS: only Secrets whose version the client does not hold are
// sent, and a Secret the client holds that leaves the caller's View (entry deleted, federated
// bundle dropped) is sent in removed_resources. Only delta can take a Secret away from Envoy
// without a restart.
func (s *Server) DeltaSecrets(stream secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	ctx := stream.Context()
	s.metrics.StreamOpened(KindDelta)
	defer s.metrics.StreamClosed(KindDelta)

	acct := admission.AccountFrom(ctx)
	st := &deltaStream{s: s, stream: stream, acct: acct, log: newStreamLog(s.log, "DeltaSecrets", acct)}
	return serve(ctx, stream.Recv, &st.pusher, st.onRequest, st.onView, st.subscription)
}

// deltaStream is one DeltaSecrets stream's state, guarded by pusher.mu: the handler
// goroutine (requests) and the pusher (View updates) both change it.
type deltaStream struct {
	pusher
	s      *Server
	stream secretv3.SecretDiscoveryService_DeltaSecretsServer
	acct   *admission.Account // the caller's budget: subscribed and held names are charged to it
	log    *streamLog
	sub    *workload.Subscription
	view   *workload.View

	started    bool
	subscribed map[string]struct{} // explicit names, without "*"
	wildcard   bool
	// held is what the client holds, name → version: what it said it had when it connected,
	// plus everything sent since (including versions it NACKed, so they are not re-sent).
	held      map[string]string
	lastNonce string // "" until the stream has sent a response
	// openedAt is when the first request arrived; the first response reports the wait.
	openedAt time.Time
}

func (st *deltaStream) subscription() (*workload.Subscription, *streamLog) { return st.sub, st.log }

func (st *deltaStream) onView(v *workload.View) error {
	st.view = v
	return st.push()
}

func (st *deltaStream) onRequest(ctx context.Context, req *discoveryv3.DeltaDiscoveryRequest) error {
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return err
	}
	if err := checkNames("resource_names_subscribe", req.GetResourceNamesSubscribe()); err != nil {
		return err
	}
	if err := checkNames("resource_names_unsubscribe", req.GetResourceNamesUnsubscribe()); err != nil {
		return err
	}
	initial := req.GetInitialResourceVersions()
	if len(initial) > MaxResourceNames {
		return status.Errorf(codes.InvalidArgument, "initial_resource_versions: %d names, at most %d allowed", len(initial), MaxResourceNames)
	}
	for n, v := range initial {
		if err := checkName("initial_resource_versions", n); err != nil {
			return err
		}
		if err := checkName("initial_resource_versions", v); err != nil {
			return err
		}
	}

	if !st.started {
		st.openedAt = time.Now()
		st.log.setNode(req.GetNode())
		sub, err := st.s.watch(ctx, st.log, req.GetResourceNamesSubscribe()...)
		if err != nil {
			return err
		}
		st.sub = sub
		st.view, st.seq = sub.LatestSeq()
		st.subscribed = make(map[string]struct{}, len(req.GetResourceNamesSubscribe()))
		st.held = make(map[string]string, len(initial))
		// Reconnecting after an agent restart: don't resend what the client already has.
		maps.Copy(st.held, initial)
		// Legacy wildcard: a first request that subscribes to nothing.
		st.wildcard = len(req.GetResourceNamesSubscribe()) == 0
		if l := st.log.at(slog.LevelDebug); l != nil {
			l.Debug("sds stream opened", "names", len(req.GetResourceNamesSubscribe()), "initial_versions", len(initial))
		}
	}
	st.started = true

	// Subscriptions apply whatever the nonce says: each delta request is a change, and
	// dropping one would lose it for good.
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == wildcardName {
			st.wildcard = true
			continue
		}
		st.subscribed[n] = struct{}{}
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == wildcardName {
			st.wildcard = false
			// The client forgets what it held only through the wildcard.
			for h := range st.held {
				if _, ok := st.subscribed[h]; !ok {
					delete(st.held, h)
				}
			}
			continue
		}
		delete(st.subscribed, n)
		// The client drops an unsubscribed resource; subscribing again must resend it.
		delete(st.held, n)
	}
	if len(st.subscribed) > MaxResourceNames {
		return status.Errorf(codes.InvalidArgument, "stream subscribes to more than %d names", MaxResourceNames)
	}
	// A refusal ends the stream, so what was applied above is dropped with it.
	if err := charge(st.acct, st.view, st.stateBytes()); err != nil {
		return err
	}

	nonce := req.GetResponseNonce()
	switch {
	case st.lastNonce == "" || nonce == "":
		// Nothing of ours to acknowledge (a nonce from before an agent restart included).
	case nonce != st.lastNonce:
		st.s.metrics.StaleRequest(KindDelta)
		if l := st.log.at(slog.LevelDebug); l != nil {
			l.Debug("stale nonce in sds request", "nonce", truncate(nonce), "last_nonce", st.lastNonce)
		}
	case req.GetErrorDetail() != nil:
		ed := req.GetErrorDetail()
		st.s.metrics.NACK(KindDelta)
		if l := st.log.at(slog.LevelWarn); l != nil {
			st.log.limited(l, slog.LevelWarn, "envoy rejected secrets", "nonce", truncate(nonce),
				"code", codes.Code(ed.GetCode()), "error", truncate(ed.GetMessage()))
		}
		// held keeps the rejected versions, so push below does not send them again.
	default:
		st.s.metrics.ACK(KindDelta)
	}
	return st.push()
}

// stateBytes is what the stream keeps for its client: the names it subscribes to and the
// name → version pairs it holds (some of which the client claimed when it connected).
func (st *deltaStream) stateBytes() int64 {
	n := int64(len(st.subscribed)+len(st.held)) * perNameBytes
	for s := range st.subscribed {
		n += int64(len(s))
	}
	for s, v := range st.held {
		n += int64(len(s) + len(v))
	}
	return n
}

// push sends what the client lacks: Secrets it does not hold at their current version, and
// the removal of those it holds that the View no longer has.
func (st *deltaStream) push() error {
	if !st.started {
		return nil
	}
	names := slices.Sorted(maps.Keys(st.subscribed))
	rs := st.s.resolveAll(st.view, names, st.wildcard)

	var changed []resource
	for _, r := range rs {
		if v, ok := st.held[r.name]; !ok || v != r.version {
			changed = append(changed, r)
		}
	}
	var removed []string
	// A Partial View lacks SVIDs that are still being minted, not ones the caller lost:
	// removals wait for the complete View.
	if !st.view.Partial && len(st.held) > len(rs)-len(changed) {
		present := make(map[string]struct{}, len(rs))
		for _, r := range rs {
			present[r.name] = struct{}{}
		}
		for n := range st.held {
			if _, ok := present[n]; !ok {
				removed = append(removed, n)
			}
		}
		slices.Sort(removed)
	}
	if len(changed) == 0 && len(removed) == 0 {
		return nil
	}

	tok := st.s.token()
	parts := make([][]byte, 1, len(changed)+1)
	for _, r := range changed {
		b, err := r.encoded(st.view, deltaEncoding)
		if err != nil {
			if l := st.log.at(slog.LevelError); l != nil {
				st.log.limited(l, slog.LevelError, "building sds response failed", "error", err)
			}
			return status.Error(codes.Internal, "building response failed")
		}
		parts = append(parts, b)
	}
	h := make([]byte, 0, 2*len(tok)+len(SecretTypeURL)+8)
	h = appendString(h, deltaSystemVersionField, tok)
	h = appendString(h, deltaTypeURLField, SecretTypeURL)
	h = appendString(h, deltaNonceField, tok)
	for _, n := range removed {
		h = protowire.AppendTag(h, deltaRemovedField, protowire.BytesType)
		h = protowire.AppendString(h, n)
	}
	parts[0] = h
	if err := st.stream.SendMsg(wire.NewMessage(parts...)); err != nil {
		return err
	}
	if st.lastNonce == "" {
		st.s.metrics.FirstResponse(KindDelta, time.Since(st.openedAt))
	}
	st.lastNonce = tok
	for _, r := range changed {
		st.held[r.name] = r.version
	}
	for _, n := range removed {
		delete(st.held, n)
	}
	st.s.metrics.ResponseSent(KindDelta, len(changed)+len(removed))
	if l := st.log.at(slog.LevelDebug); l != nil {
		l.Debug("sent secrets", "nonce", tok, "resources", len(changed), "removed", len(removed))
	}
	return nil
}
