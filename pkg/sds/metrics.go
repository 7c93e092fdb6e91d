package sds

import "time"

// Kind names the RPC a metric event comes from; the set is fixed, so it is safe as a label.
type Kind string

// The three SDS RPCs.
const (
	KindStream Kind = "stream" // StreamSecrets, state of the world
	KindDelta  Kind = "delta"  // DeltaSecrets, incremental
	KindFetch  Kind = "fetch"  // FetchSecrets, unary
)

// Metrics receives the server's events. Implementations must be safe for concurrent use and
// must not block: they are called from every stream's loop.
type Metrics interface {
	// StreamOpened and StreamClosed bracket every StreamSecrets and DeltaSecrets call,
	// whatever its outcome.
	StreamOpened(kind Kind)
	StreamClosed(kind Kind)
	// ResponseSent counts a response and how many resources it carried (removals included
	// for delta).
	ResponseSent(kind Kind, resources int)
	// ACK and NACK count client acknowledgements of a response this stream sent.
	ACK(kind Kind)
	NACK(kind Kind)
	// StaleRequest counts requests ignored because they answered an older response.
	StaleRequest(kind Kind)
	// FirstResponse reports how long a stream waited for its first response, from its first
	// request: the agent's part of Envoy's time to first secret (a listener stays closed until
	// its certificate arrives). It includes any wait for an SVID to be minted or an entry to
	// appear.
	FirstResponse(kind Kind, d time.Duration)
}

// NopMetrics discards every event; it is the default.
type NopMetrics struct{}

func (NopMetrics) StreamOpened(Kind)                 {}
func (NopMetrics) StreamClosed(Kind)                 {}
func (NopMetrics) ResponseSent(Kind, int)            {}
func (NopMetrics) ACK(Kind)                          {}
func (NopMetrics) NACK(Kind)                         {}
func (NopMetrics) StaleRequest(Kind)                 {}
func (NopMetrics) FirstResponse(Kind, time.Duration) {}

var _ Metrics = NopMetrics{}
