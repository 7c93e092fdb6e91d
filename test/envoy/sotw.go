package envoy

import (
	"context"
	"fmt"
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

// Option changes how a stream answers responses.
type Option func(*options)

type options struct {
	manualACK bool
}

// ManualACK stops Recv from answering responses: the test calls ACK or NACKLast itself, e.g.
// to hold an ACK back and see that the agent does not wait for it.
func ManualACK() Option { return func(o *options) { o.manualACK = true } }

func buildOptions(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Response is one decoded and validated state-of-the-world SDS response.
type Response struct {
	VersionInfo string
	Nonce       string
	// Secrets in the order the agent sent them; names are unique.
	Secrets []*tlsv3.Secret
	Raw     *discoveryv3.DiscoveryResponse
}

// Get returns the secret named name, or nil.
func (r *Response) Get(name string) *tlsv3.Secret {
	for _, s := range r.Secrets {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// Names returns the secrets' names in response order.
func (r *Response) Names() []string {
	out := make([]string, len(r.Secrets))
	for i, s := range r.Secrets {
		out[i] = s.GetName()
	}
	return out
}

// decodeResponse checks a response as Envoy does before applying it. names is what the stream
// has requested; Envoy opens one stream per secret config and its SDS subscription rejects an
// update carrying nothing ("Missing SDS resources for <name> in onConfigUpdate()"), so an empty
// response to a non-empty request is invalid.
func decodeResponse(m *discoveryv3.DiscoveryResponse, names []string) (*Response, error) {
	if m.GetTypeUrl() != SecretTypeURL {
		return nil, fmt.Errorf("%w: response type %q, want %q", ErrInvalid, m.GetTypeUrl(), SecretTypeURL)
	}
	if len(m.GetResources()) == 0 && len(names) > 0 {
		return nil, fmt.Errorf("%w: Missing SDS resources for %v in onConfigUpdate()", ErrInvalid, names)
	}
	r := &Response{VersionInfo: m.GetVersionInfo(), Nonce: m.GetNonce(), Raw: m}
	seen := make(map[string]bool, len(m.GetResources()))
	for _, a := range m.GetResources() {
		s, err := decodeSecret(a)
		if err != nil {
			return nil, err
		}
		if seen[s.GetName()] {
			// xds_protocol.rst: "It is an error for a server to send a single response that
			// contains the same resource name twice."
			return nil, fmt.Errorf("%w: secret %q appears twice in one response", ErrInvalid, s.GetName())
		}
		seen[s.GetName()] = true
		r.Secrets = append(r.Secrets, s)
	}
	return r, nil
}

// SotW is one StreamSecrets (state of the world) stream, answering as Envoy does. Recv and the
// request-sending methods may be called from different goroutines, but Recv from one at a time.
type SotW struct {
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	pump   *pump[discoveryv3.DiscoveryResponse]
	closer closer
	// answers ACKs and NACKs (its methods ACK, NACK and NACKLast are the stream's).
	answers[Response]

	mu       sync.Mutex // guards the fields below and serialises Send
	names    []string
	accepted string // version_info of the last ACKed response: what a NACK carries
	nonce    string // nonce of the last received response
	sent     int
}

// NewSotW opens a StreamSecrets stream on conn and sends the first request: node, the Secret
// type_url and names.
// The stream lives until ctx ends or Close. Give it a ctx without a deadline you mean to
// measure: gRPC sends the deadline to the agent as grpc-timeout, and the stream then ends with
// DeadlineExceeded, racing ctx; bound waits with Recv's ctx or RecvWithin instead.
func NewSotW(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, names []string, opts ...Option) (*SotW, error) {
	return newSotW(ctx, conn, node, names, "", "", opts...)
}

// newSotW starts a stream whose first request carries version and nonce from a previous
// stream, as Envoy's does after a reconnect (xds_protocol.rst, spire#813).
func newSotW(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, names []string, version, nonce string, opts ...Option) (*SotW, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(sctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening StreamSecrets: %w", err)
	}
	s := &SotW{
		stream:   stream,
		closer:   closer{cancel: cancel, stop: make(chan struct{})},
		names:    slices.Clone(names),
		accepted: version,
		nonce:    nonce,
	}
	s.answers = answers[Response]{mu: &s.mu, manual: buildOptions(opts).manualACK,
		ack:  func(r *Response) error { return s.sendACK(r.VersionInfo) },
		nack: s.sendNACK}
	first := &discoveryv3.DiscoveryRequest{
		VersionInfo:   version,
		Node:          node,
		ResourceNames: slices.Clone(names),
		TypeUrl:       SecretTypeURL,
		ResponseNonce: nonce,
	}
	if err := s.send(first); err != nil {
		cancel()
		return nil, fmt.Errorf("sending first StreamSecrets request: %w", err)
	}
	s.pump = startPump(stream.Recv, s.closer.stop)
	return s, nil
}

func (s *SotW) send(req *discoveryv3.DiscoveryRequest) error {
	// Caller holds s.mu, or s is not shared yet.
	s.sent++
	return s.stream.Send(req)
}

// Recv returns the next response, decoded and validated. An invalid response is NACKed (as
// Envoy does) and returned as an error wrapping ErrInvalid; the stream stays usable. A valid
// one is ACKed, or NACKed if NACK armed it, unless ManualACK. A broken stream's error is
// returned as is (wrapped); ctx's error if ctx ends first.
func (s *SotW) Recv(ctx context.Context) (*Response, error) {
	m, err := s.pump.next(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nonce = m.GetNonce()
	return s.answer(decodeResponse(m, s.names))
}

// RecvWithin is Recv with a deadline d; it returns (nil, nil) if nothing arrived in time.
func (s *SotW) RecvWithin(ctx context.Context, d time.Duration) (*Response, error) {
	return within(ctx, d, s.Recv)
}

func (s *SotW) sendACK(version string) error {
	s.accepted = version
	return s.send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   version,
		ResourceNames: slices.Clone(s.names),
		TypeUrl:       SecretTypeURL,
		ResponseNonce: s.nonce,
	})
}

func (s *SotW) sendNACK(detail string) error {
	return s.send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   s.accepted,
		ResourceNames: slices.Clone(s.names),
		TypeUrl:       SecretTypeURL,
		ResponseNonce: s.nonce,
		// Envoy's gRPC mux reports every rejection with code Internal.
		ErrorDetail: &status.Status{Code: int32(codes.Internal), Message: detail},
	})
}

// SetNames changes the subscription: a new request with names, the last accepted version and
// the last nonce. The agent must answer it at once.
func (s *SotW) SetNames(names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = slices.Clone(names)
	if err := s.send(&discoveryv3.DiscoveryRequest{
		VersionInfo:   s.accepted,
		ResourceNames: slices.Clone(names),
		TypeUrl:       SecretTypeURL,
		ResponseNonce: s.nonce,
	}); err != nil {
		return fmt.Errorf("sending StreamSecrets request: %w", err)
	}
	return nil
}

// Names returns the names currently requested.
func (s *SotW) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.names)
}

// Version returns the version_info of the last accepted (ACKed) response.
func (s *SotW) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Nonce returns the nonce of the last received response.
func (s *SotW) Nonce() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nonce
}

// Sent returns how many requests this stream has sent (first request, ACKs, NACKs, changes).
func (s *SotW) Sent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent
}

// Close ends the stream and waits for its receiving goroutine. Idempotent.
func (s *SotW) Close() {
	s.closer.close(s.pump.done)
}

// Fetch makes one FetchSecrets call and validates the answer. Unlike a stream, an empty
// answer is not an error: it is how a unary fetch says "nothing for you".
func Fetch(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, names []string) (*Response, error) {
	m, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		Node:          node,
		ResourceNames: slices.Clone(names),
		TypeUrl:       SecretTypeURL,
	})
	if err != nil {
		return nil, fmt.Errorf("calling FetchSecrets: %w", err)
	}
	return decodeResponse(m, nil)
}

// Decode checks a state-of-the-world response as Envoy does before applying it (names: what
// the stream requested) and returns it decoded; an invalid one is an error wrapping
// ErrInvalid. For clients that drive their own stream (the load tool).
func Decode(m *discoveryv3.DiscoveryResponse, names []string) (*Response, error) {
	return decodeResponse(m, names)
}
