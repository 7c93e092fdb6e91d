// Package telemetry is svidd's Prometheus instrumentation and its HTTP endpoints: a metrics
// scrape handler over a private registry, liveness and readiness probes, and a small HTTP
// server with timeouts and graceful shutdown used for both.
//
// Core packages do not import Prometheus: they emit events through small interfaces with a
// no-op default (sds.Metrics, the Workload API's equivalent, hooks in the agent), and Metrics
// implements them. No metric carries a SPIFFE ID, pid, uid or entry ID as a label; every label
// takes values from a small fixed set, so the number of series does not grow with workloads.
//
// # Metrics
//
// Front-ends (labels: service = sds | workloadapi; kind = the RPC: for SDS stream | delta |
// fetch, for the Workload API x509_svid | x509_bundles | jwt_svid | jwt_bundles |
// validate_jwt_svid):
//
//	svidd_api_streams_open                  gauge    streams open now (streaming RPCs only; unary calls count in responses)
//	svidd_api_streams_opened_total          counter  streams opened since start
//	svidd_api_responses_total               counter  responses sent
//	svidd_api_response_resources_total      counter  resources carried by responses (delta removals included)
//	svidd_api_acks_total                    counter  responses the client accepted (ACK)
//	svidd_api_nacks_total                   counter  responses the client rejected (NACK): a secret Envoy could not use
//	svidd_api_stale_requests_total          counter  requests ignored because they answered an older response
//	svidd_api_request_errors_total          counter  calls ended with an error status; extra label code = the gRPC code (PermissionDenied, Unavailable, …)
//	svidd_api_first_response_seconds        histogram  a stream's first request → its first response: the agent's part of Envoy's time to first secret (SDS streams: kind stream | delta)
//
// Agent:
//
//	svidd_agent_attestation_duration_seconds  histogram  time to attest a caller (peer credentials → selectors); label result = ok | error
//	svidd_agent_push_latency_seconds          histogram  change observed (entry written, SVID due, bundle changed) → new View published to every affected stream
//	svidd_agent_entries                       gauge      registration entries known to the agent
//	svidd_agent_svids                         gauge      X509-SVIDs held in the agent's cache
//	svidd_agent_admission_refusals_total      counter    connections and streams refused by the per-uid limits; label reason = connection_rate | open_connections | stream_rate | open_streams | too_many_uids | bytes | unentitled_bytes
//	svidd_agent_log_lines_suppressed_total    counter    log lines about callers' requests dropped by the per-stream and per-uid log budgets
//
// SVIDs:
//
//	svidd_svid_x509_mint_duration_seconds         histogram  time to mint an X509-SVID (key generation + signing); label result = ok | error
//	svidd_svid_x509_rotations_total               counter    X509-SVIDs re-minted ahead of expiry and pushed
//	svidd_svid_jwt_mints_total                    counter    JWT-SVIDs minted; label result = ok | error
//	svidd_svid_soonest_not_after_timestamp_seconds gauge     NotAfter (Unix seconds) of the cached X509-SVID that expires first; 0 if none
//
// CA and trust bundle:
//
//	svidd_ca_not_after_timestamp_seconds  gauge    NotAfter (Unix seconds) of the active CA certificate
//	svidd_ca_rotations_total              counter  CA rotation steps applied; label step = prepare | activate | prune | replace-expired | other
//	svidd_bundle_changes_total            counter  trust bundle changes published to workloads
//	svidd_ca_upstream_failures_total      counter  failed upstream signings of a CA (retried with backoff)
//	svidd_federation_bundle_refreshes_total counter fetches of foreign bundles from their bundle endpoints; label result = ok | error
//
// Fleet registry (only with store "etcd"):
//
//	svidd_registry_reachable                      gauge  1 when etcd answers, 0 while the host serves its local copy
//	svidd_registry_state_since_timestamp_seconds  gauge  when reachable last changed (Unix seconds)
//
// Process and runtime (standard collectors): go_* (Go runtime: goroutines, GC, memory),
// process_* (CPU, resident memory, open file descriptors, start time) and go_build_info.
//
// The gauges sampled from agent state (entries, SVIDs, soonest NotAfter, CA NotAfter) are
// meant to be set from an OnGather hook, so they are exact at every scrape.
//
// Every series with a fixed label set exists from the first scrape at 0 (result and step
// values, SDS and Workload API kinds), so rate() and alerts work before the first event.
//
// # What to alert on
//
// An SVID or CA about to expire (svidd_svid_soonest_not_after_timestamp_seconds - time(),
// svidd_ca_not_after_timestamp_seconds - time()): rotation is stuck. Upstream failures
// (svidd_ca_upstream_failures_total): the next CA cannot be signed. Any mint error. NACKs:
// Envoy refused a secret. A slow push p99: rotations reach Envoy late.
//
// # HTTP
//
// HealthHandler answers /live (200 while the process serves HTTP) and /ready (200 when the
// agent's readiness check passes, 503 with the reason otherwise). Serve and ServeMetrics run
// an http.Server on a listener the caller created, with read/write/idle timeouts, until the
// context is done, then shut it down gracefully.
package telemetry
