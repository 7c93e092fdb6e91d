package sds

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
}

// NopMetrics discards every event; it is the default.
type NopMetrics struct{}

func (NopMetrics) StreamOpened(Kind)      {}
func (NopMetrics) StreamClosed(Kind)      {}
func (NopMetrics) ResponseSent(Kind, int) {}
func (NopMetrics) ACK(Kind)               {}
func (NopMetrics) NACK(Kind)              {}
func (NopMetrics) StaleRequest(Kind)      {}

var _ Metrics = NopMetrics{}
