// Package workloadapi serves the SPIFFE Workload API (SpiffeWorkloadAPI, the X509-SVID and
// JWT-SVID profiles) over a caller's View stream, on the same gRPC server and peer credentials
// as SDS.
//
// Like pkg/sds, the server never mints, attests or queries the store: each streaming RPC calls
// Watcher.Watch once and translates the Views it receives; FetchJWTSVID asks the JWTFetcher,
// which attests the caller and checks its entitlement. The rules the spec makes MUST:
//
//   - every RPC carries the metadata "workload.spiffe.io: true", else InvalidArgument (which
//     clients do not retry);
//   - a caller with no identity (an empty View) gets PermissionDenied, which clients retry with
//     backoff; a stream whose caller loses its last identity ends the same way;
//   - every stream response carries the full set: all SVIDs (the default, i.e. the View's
//     first, first) or all bundles, and the first is sent as soon as the stream opens;
//   - later responses are sent only when what would be sent differs from the last one, so a
//     View change that does not touch a stream's content (a JWT key change on the X.509
//     streams, an SVID rotation on the bundle streams) sends nothing.
//
// The WIT-SVID profile is not served: its RPCs answer Unimplemented, which go-spiffe's client
// treats as "not supported" and does not retry.
package workloadapi
