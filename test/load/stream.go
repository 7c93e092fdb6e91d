package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/svidd/svidd/test/envoy"
)

// sdsStream is the load tool's StreamSecrets stream. It behaves as Envoy's SDS client does —
// node on the first request, every response decoded and validated before it is applied
// (test/envoy's checks), then ACKed with its version and nonce, or NACKed — on the goroutine
// that calls recv, the way Envoy's event loop serves a stream without a thread of its own.
// The e2e tests' client (envoy.SotW) adds a goroutine and a channel hand-off per stream to
// make Recv honour a context; with thousands of streams that was a large share of the load
// generator's CPU, which the agent shares on two cores.
type sdsStream struct {
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	cancel context.CancelFunc
	names  []string
	// accepted is the version of the last response applied: what a NACK carries.
	accepted string
}

// openSDS opens a stream on conn and sends the first request. The stream ends when ctx ends
// or close is called (which may be called from any goroutine, e.g. a timer).
func openSDS(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, names []string) (*sdsStream, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(sctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening StreamSecrets: %w", err)
	}
	s := &sdsStream{stream: stream, cancel: cancel, names: names}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: names, TypeUrl: envoy.SecretTypeURL}); err != nil {
		cancel()
		return nil, fmt.Errorf("sending first StreamSecrets request: %w", err)
	}
	return s, nil
}

// recv waits for the next response, validates it and answers it: an ACK for a valid one (which
// is returned), a NACK for an invalid one (returned as an error wrapping envoy.ErrInvalid;
// the stream goes on). at is when the response was received and validated, i.e. when Envoy
// would apply it: the ACK that follows is not part of the agent's latency.
func (s *sdsStream) recv() (resp *envoy.Response, at time.Time, err error) {
	m, err := s.stream.Recv()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("receiving SDS response: %w", err)
	}
	resp, verr := envoy.Decode(m, s.names)
	at = time.Now()
	ack := &discoveryv3.DiscoveryRequest{ResourceNames: s.names, TypeUrl: envoy.SecretTypeURL, ResponseNonce: m.GetNonce()}
	if verr != nil {
		ack.VersionInfo = s.accepted
		ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: verr.Error()}
	} else {
		s.accepted = m.GetVersionInfo()
		ack.VersionInfo = s.accepted
	}
	if err := s.stream.Send(ack); err != nil && !errors.Is(err, context.Canceled) {
		return nil, at, fmt.Errorf("answering SDS response: %w", err)
	}
	if verr != nil {
		return nil, at, verr
	}
	return resp, at, nil
}

func (s *sdsStream) close() { s.cancel() }
