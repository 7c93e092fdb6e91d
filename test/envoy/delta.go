package envoy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// DeltaResource is one added or updated secret in a delta response.
type DeltaResource struct {
	Name    string
	Version string
	Secret  *tlsv3.Secret
}

// DeltaResponse is one decoded and validated DeltaSecrets response.
type DeltaResponse struct {
	SystemVersionInfo string
	Nonce             string
	Resources         []DeltaResource
	Removed           []string
	Raw               *discoveryv3.DeltaDiscoveryResponse
}

// Get returns the secret named name, or nil.
func (r *DeltaResponse) Get(name string) *tlsv3.Secret {
	for _, res := range r.Resources {
		if res.Name == name {
			return res.Secret
		}
	}
	return nil
}

// decodeDelta checks a delta response as Envoy does: the Secret inside each resource must carry
// the resource's name (Envoy's SDS API rejects "Unexpected SDS secret"), no name twice, and no
// name both updated and removed.
func decodeDelta(m *discoveryv3.DeltaDiscoveryResponse) (*DeltaResponse, error) {
	if m.GetTypeUrl() != SecretTypeURL {
		return nil, fmt.Errorf("%w: response type %q, want %q", ErrInvalid, m.GetTypeUrl(), SecretTypeURL)
	}
	r := &DeltaResponse{SystemVersionInfo: m.GetSystemVersionInfo(), Nonce: m.GetNonce(), Raw: m}
	seen := make(map[string]bool)
	for _, res := range m.GetResources() {
		if res.GetName() == "" {
			return nil, fmt.Errorf("%w: resource without a name", ErrInvalid)
		}
		if seen[res.GetName()] {
			return nil, fmt.Errorf("%w: resource %q appears twice in one response", ErrInvalid, res.GetName())
		}
		seen[res.GetName()] = true
		s, err := decodeSecret(res.GetResource())
		if err != nil {
			return nil, fmt.Errorf("resource %q: %w", res.GetName(), err)
		}
		if s.GetName() != res.GetName() {
			return nil, fmt.Errorf("%w: resource %q holds secret %q", ErrInvalid, res.GetName(), s.GetName())
		}
		r.Resources = append(r.Resources, DeltaResource{Name: res.GetName(), Version: res.GetVersion(), Secret: s})
	}
	for _, name := range m.GetRemovedResources() {
		if seen[name] {
			return nil, fmt.Errorf("%w: resource %q both updated and removed", ErrInvalid, name)
		}
		seen[name] = true
		r.Removed = append(r.Removed, name)
	}
	return r, nil
}

// Delta is one DeltaSecrets (incremental) stream, answering as Envoy does: an ACK is the
// response_nonce alone, a NACK adds error_detail.
type Delta struct {
	stream grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
	pump   *pump[discoveryv3.DeltaDiscoveryResponse]
	closer closer
	// answers ACKs and NACKs (its methods ACK, NACK and NACKLast are the stream's).
	answers[DeltaResponse]

	mu         sync.Mutex // guards the fields below and serialises Send
	subscribed map[string]bool
	versions   map[string]string // accepted resource versions, what a new stream would send
	nonce      string
}

// NewDelta opens a DeltaSecrets stream and sends the first request: node, type_url, the names
// to subscribe to and initial_resource_versions (what a reconnecting Envoy already holds).
// The stream lives until ctx ends or Close. Give it a ctx without a deadline you mean to
// measure: gRPC sends the deadline to the agent as grpc-timeout, and the stream then ends with
// DeadlineExceeded, racing ctx; bound waits with Recv's ctx or RecvWithin instead.
func NewDelta(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, subscribe []string, initialVersions map[string]string, opts ...Option) (*Delta, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).DeltaSecrets(sctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening DeltaSecrets: %w", err)
	}
	d := &Delta{
		stream:     stream,
		closer:     closer{cancel: cancel, stop: make(chan struct{})},
		subscribed: make(map[string]bool),
		versions:   maps.Clone(initialVersions),
	}
	d.answers = answers[DeltaResponse]{mu: &d.mu, manual: buildOptions(opts).manualACK,
		ack:  func(r *DeltaResponse) error { d.apply(r); return d.sendACK() },
		nack: d.sendNACK}
	if d.versions == nil {
		d.versions = make(map[string]string)
	}
	for _, n := range subscribe {
		d.subscribed[n] = true
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node:                    node,
		TypeUrl:                 SecretTypeURL,
		ResourceNamesSubscribe:  slices.Clone(subscribe),
		InitialResourceVersions: maps.Clone(initialVersions),
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("sending first DeltaSecrets request: %w", err)
	}
	d.pump = startPump(stream.Recv, d.closer.stop)
	return d, nil
}

// Recv returns the next response, decoded and validated, and ACKs it (or NACKs it if NACK
// armed it, or leaves it to ACK/NACKLast under ManualACK). An invalid response is NACKed and
// returned as an error wrapping ErrInvalid.
func (d *Delta) Recv(ctx context.Context) (*DeltaResponse, error) {
	m, err := d.pump.next(ctx)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nonce = m.GetNonce()
	return d.answer(decodeDelta(m))
}

// RecvWithin is Recv with a deadline d; it returns (nil, nil) if nothing arrived in time.
func (d *Delta) RecvWithin(ctx context.Context, dur time.Duration) (*DeltaResponse, error) {
	return within(ctx, dur, d.Recv)
}

func (d *Delta) apply(r *DeltaResponse) {
	for _, res := range r.Resources {
		d.versions[res.Name] = res.Version
	}
	for _, n := range r.Removed {
		delete(d.versions, n)
	}
}

func (d *Delta) sendACK() error {
	return d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResponseNonce: d.nonce})
}

func (d *Delta) sendNACK(detail string) error {
	return d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{
		TypeUrl:       SecretTypeURL,
		ResponseNonce: d.nonce,
		ErrorDetail:   &status.Status{Code: int32(codes.Internal), Message: detail},
	})
}

// Subscribe adds names to the subscription.
func (d *Delta) Subscribe(names ...string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range names {
		d.subscribed[n] = true
	}
	if err := d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNamesSubscribe: slices.Clone(names)}); err != nil {
		return fmt.Errorf("sending DeltaSecrets subscribe: %w", err)
	}
	return nil
}

// Unsubscribe removes names from the subscription and forgets their versions, as Envoy does
// when a secret config is no longer used.
func (d *Delta) Unsubscribe(names ...string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range names {
		delete(d.subscribed, n)
		delete(d.versions, n)
	}
	if err := d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNamesUnsubscribe: slices.Clone(names)}); err != nil {
		return fmt.Errorf("sending DeltaSecrets unsubscribe: %w", err)
	}
	return nil
}

// Subscribed returns the names currently subscribed to, sorted.
func (d *Delta) Subscribed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.subscribed))
}

// ResourceVersions returns the accepted version of every resource held: what a reconnecting
// Envoy sends as initial_resource_versions.
func (d *Delta) ResourceVersions() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.versions)
}

// Close ends the stream and waits for its receiving goroutine. Idempotent.
func (d *Delta) Close() {
	d.closer.close(d.pump.done)
}
