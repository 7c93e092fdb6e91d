package workloadapi

import "google.golang.org/grpc/codes"

// Kind names the RPC a metric event comes from; the set is fixed, so it is safe as a label.
type Kind string

// The Workload API RPCs served.
const (
	KindX509SVID        Kind = "x509_svid"         // FetchX509SVID, stream
	KindX509Bundles     Kind = "x509_bundles"      // FetchX509Bundles, stream
	KindJWTSVID         Kind = "jwt_svid"          // FetchJWTSVID, unary
	KindJWTBundles      Kind = "jwt_bundles"       // FetchJWTBundles, stream
	KindValidateJWTSVID Kind = "validate_jwt_svid" // ValidateJWTSVID, unary
)

// Metrics receives the server's events. Implementations must be safe for concurrent use and
// must not block: they are called from every stream's loop.
type Metrics interface {
	// StreamOpened and StreamClosed bracket every streaming call, whatever its outcome.
	StreamOpened(kind Kind)
	StreamClosed(kind Kind)
	// ResponseSent counts a response and how many SVIDs or bundles it carried.
	ResponseSent(kind Kind, items int)
	// RequestFailed counts calls that ended with an error status, by code. A stream the
	// client cancels (codes.Canceled, the normal end of a stream) is not counted.
	RequestFailed(kind Kind, code codes.Code)
}

// NopMetrics discards every event; it is the default.
type NopMetrics struct{}

func (NopMetrics) StreamOpened(Kind)              {}
func (NopMetrics) StreamClosed(Kind)              {}
func (NopMetrics) ResponseSent(Kind, int)         {}
func (NopMetrics) RequestFailed(Kind, codes.Code) {}

var _ Metrics = NopMetrics{}
