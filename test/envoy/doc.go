// Package envoy is the tests' Envoy: an SDS v3 client built on go-control-plane's generated
// types that behaves as Envoy's SDS subscription does, so end-to-end tests can hold svidd to
// what a real Envoy would accept. There is no Envoy binary on our machines; this is the stand-in.
//
// What it does as Envoy does:
//   - sends node only on the first request of a stream (xds_protocol.rst: "Only the first
//     request on a stream is guaranteed to carry the node identifier");
//   - ACKs with the received version_info and response_nonce, NACKs with the previously
//     accepted version_info, the nonce and error_detail;
//   - rejects (NACKs) a response with a duplicate name, an undecodable resource or a Secret
//     that fails the generated ValidateAll, or whose name does not match what it was sent as;
//   - after the stream breaks, redials with jittered exponential backoff (500ms base, 30s cap)
//     and starts the new stream carrying the last version_info and nonce (Reconnecting).
//
// It is stricter than Envoy where svidd's design promises more: private keys must be PKCS#8
// and certificates inline PEM, as DESIGN.md says the agent sends them.
package envoy
