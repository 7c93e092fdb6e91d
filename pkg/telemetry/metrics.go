package telemetry

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/sds"
	"github.com/svidd/svidd/pkg/workloadapi"
)

const namespace = "svidd"

// Result label values: whether an operation succeeded.
const (
	resultOK    = "ok"
	resultError = "error"
)

// Service label values.
const (
	ServiceSDS         = "sds"
	ServiceWorkloadAPI = "workloadapi"
)

// caSteps are the CA rotation steps counted by name (the ca package's step names); any other
// name is counted as "other" so a typo or a new step can never grow the label set unbounded.
var caSteps = []string{"prepare", "activate", "prune", "replace-expired"}

const caStepOther = "other"

// Config configures Metrics.
type Config struct {
	// Logger receives errors of the scrape handler (a collector failing). Defaults to a
	// discard handler.
	Logger *slog.Logger
}

// Metrics is svidd's Prometheus instrumentation. It owns a private registry, so tests and
// embedders can create several without "duplicate metrics collector registration" panics,
// and nothing a dependency registers globally leaks into the scrape.
//
// Every method is safe for concurrent use and never blocks (atomic updates, no I/O): they are
// called from stream loops and the agent's updater. No label carries a SPIFFE ID, pid, uid or
// entry ID: label values come from small fixed sets, so the number of series is bounded
// whatever the number of workloads.
type Metrics struct {
	log      *slog.Logger
	reg      *prometheus.Registry
	onGather atomic.Pointer[func()]
	registry registryMetrics // registry.go

	// Front-ends (SDS, Workload API), labelled service, kind.
	streamsOpen      *prometheus.GaugeVec
	streamsOpened    *prometheus.CounterVec
	responses        *prometheus.CounterVec
	responseResource *prometheus.CounterVec
	acks             *prometheus.CounterVec
	nacks            *prometheus.CounterVec
	staleRequests    *prometheus.CounterVec
	requestErrors    *prometheus.CounterVec // service, kind, code

	// Agent.
	attestation *prometheus.HistogramVec // result
	pushLatency prometheus.Histogram
	entries     prometheus.Gauge
	svids       prometheus.Gauge
	refusals    *prometheus.CounterVec // reason
	logDropped  prometheus.Counter

	// SVIDs.
	x509Mint      *prometheus.HistogramVec // result
	x509Rotations prometheus.Counter
	jwtMints      *prometheus.CounterVec // result
	soonestSVID   prometheus.Gauge

	// CA and bundle.
	caNotAfter    prometheus.Gauge
	caRotations   *prometheus.CounterVec // step
	bundleChanges prometheus.Counter
	upstreamFails prometheus.Counter
	// federationRefreshes counts fetches from foreign bundle endpoints.
	federationRefreshes *prometheus.CounterVec
	sdsKindMetrics      [3]serviceKind           // stream, delta, fetch: resolved once, no map lookup per event
	firstResponse       *prometheus.HistogramVec // service, kind
	sdsFirst            [3]prometheus.Observer   // firstResponse's SDS children, as sdsKindMetrics
}

// serviceKind holds the children of every front-end family for one (service, kind).
type serviceKind struct {
	open      prometheus.Gauge
	opened    prometheus.Counter
	responses prometheus.Counter
	resources prometheus.Counter
	acks      prometheus.Counter
	nacks     prometheus.Counter
	stale     prometheus.Counter
}

// Buckets. Attestation reads /proc (and may hash a binary), minting generates a key (EC in
// well under a millisecond, RSA-2048 up to a second), a push may include minting.
var (
	attestationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	mintBuckets        = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	pushBuckets        = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	// A first response is usually well under a millisecond of the agent's time; a wait for
	// minting, or for an entry to be created, shows in the upper buckets.
	firstResponseBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// New creates the metrics and their registry, including the Go runtime, process and build
// info collectors. It starts nothing.
func New(cfg Config) *Metrics {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{log: cfg.Logger, reg: prometheus.NewRegistry()}
	sk := []string{"service", "kind"}

	m.streamsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "api", Name: "streams_open",
		Help: "Streams currently open, by service (sds, workloadapi) and kind.",
	}, sk)
	m.streamsOpened = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "streams_opened_total",
		Help: "Streams opened since start, by service and kind.",
	}, sk)
	m.responses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "responses_total",
		Help: "Responses sent, by service and kind.",
	}, sk)
	m.responseResource = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "response_resources_total",
		Help: "Resources carried by responses (delta removals included), by service and kind.",
	}, sk)
	m.acks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "acks_total",
		Help: "Responses acknowledged (ACK) by the client, by service and kind.",
	}, sk)
	m.nacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "nacks_total",
		Help: "Responses rejected (NACK) by the client, by service and kind.",
	}, sk)
	m.staleRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "stale_requests_total",
		Help: "Requests ignored because they answered an older response (stale nonce), by service and kind.",
	}, sk)

	m.requestErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "api", Name: "request_errors_total",
		Help: "Calls that ended with an error status, by service, kind and gRPC code (a client cancelling its stream is not an error).",
	}, []string{"service", "kind", "code"})

	m.attestation = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "agent", Name: "attestation_duration_seconds",
		Help:    "Time to attest a caller (peer credentials to selectors), by result (ok, error).",
		Buckets: attestationBuckets,
	}, []string{"result"})
	m.firstResponse = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "api", Name: "first_response_seconds",
		Help:    "Time from a stream's first request to its first response (the agent's part of Envoy's time to first secret), by service and kind.",
		Buckets: firstResponseBuckets,
	}, sk)
	m.pushLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "agent", Name: "push_latency_seconds",
		Help:    "Time from a change observed (entry written, SVID due, bundle changed) to the new View published to every affected stream.",
		Buckets: pushBuckets,
	})
	m.entries = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "agent", Name: "entries",
		Help: "Registration entries known to the agent.",
	})
	m.svids = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "agent", Name: "svids",
		Help: "X509-SVIDs held in the agent's cache.",
	})

	m.x509Mint = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Subsystem: "svid", Name: "x509_mint_duration_seconds",
		Help:    "Time to mint an X509-SVID (key generation and signing), by result (ok, error).",
		Buckets: mintBuckets,
	}, []string{"result"})
	m.x509Rotations = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "svid", Name: "x509_rotations_total",
		Help: "X509-SVIDs re-minted ahead of expiry and pushed.",
	})
	m.jwtMints = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "svid", Name: "jwt_mints_total",
		Help: "JWT-SVIDs minted, by result (ok, error).",
	}, []string{"result"})
	m.soonestSVID = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "svid", Name: "soonest_not_after_timestamp_seconds",
		Help: "NotAfter (Unix seconds) of the cached X509-SVID that expires first; 0 when none is cached.",
	})

	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "agent", Name: "admission_refusals_total",
		Help: "Connections and streams refused by the per-uid limits (limits {}), by the limit that refused them.",
	}, []string{"reason"})

	m.logDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "agent", Name: "log_lines_suppressed_total",
		Help: "Log lines about callers' requests dropped by the per-stream and per-uid log budgets (a summary line gives the count when logging resumes).",
	})

	m.caNotAfter = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: "ca", Name: "not_after_timestamp_seconds",
		Help: "NotAfter (Unix seconds) of the active CA certificate.",
	})
	m.caRotations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "ca", Name: "rotations_total",
		Help: "CA rotation steps applied, by step (prepare, activate, prune, replace-expired, other).",
	}, []string{"step"})
	m.upstreamFails = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "ca", Name: "upstream_failures_total",
		Help: "Failed attempts to have the upstream (disk, step_ca) sign a CA; each is retried with backoff while the active CA keeps signing.",
	})
	m.bundleChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "bundle", Name: "changes_total",
		Help: "Trust bundle changes published to workloads.",
	})

	m.federationRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: "federation", Name: "bundle_refreshes_total",
		Help: "Fetches of foreign trust domains' bundles from their bundle endpoints, by result (ok, error).",
	}, []string{"result"})

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		m.streamsOpen, m.streamsOpened, m.responses, m.responseResource, m.acks, m.nacks, m.staleRequests, m.requestErrors,
		m.firstResponse,
		m.attestation, m.pushLatency, m.entries, m.svids, m.refusals, m.logDropped,
		m.x509Mint, m.x509Rotations, m.jwtMints, m.soonestSVID,
		m.caNotAfter, m.caRotations, m.bundleChanges, m.upstreamFails, m.federationRefreshes,
	)

	// Create every known series at zero, so rate() and absent-based alerts work from the
	// first scrape rather than from the first event.
	for i, k := range []sds.Kind{sds.KindStream, sds.KindDelta, sds.KindFetch} {
		m.sdsKindMetrics[i] = m.serviceKind(ServiceSDS, string(k))
		if k != sds.KindFetch {
			m.sdsFirst[i] = m.firstResponse.WithLabelValues(ServiceSDS, string(k))
		}
	}
	for _, k := range []workloadapi.Kind{workloadapi.KindX509SVID, workloadapi.KindX509Bundles,
		workloadapi.KindJWTSVID, workloadapi.KindJWTBundles, workloadapi.KindValidateJWTSVID} {
		m.serviceKind(ServiceWorkloadAPI, string(k))
	}
	for _, r := range []string{resultOK, resultError} {
		m.attestation.WithLabelValues(r)
		m.x509Mint.WithLabelValues(r)
		m.jwtMints.WithLabelValues(r)
		m.federationRefreshes.WithLabelValues(r)
	}
	for _, s := range caSteps {
		m.caRotations.WithLabelValues(s)
	}
	m.caRotations.WithLabelValues(caStepOther)
	for _, r := range refusalReasons {
		m.refusals.WithLabelValues(string(r))
	}
	return m
}

// Registry returns the private registry, for registering further collectors (e.g. a
// database's). Gathering it directly skips the OnGather hook; use m.Gather.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// OnGather sets f to run at the start of every Gather (every scrape), replacing any previous
// f. It is the place to sample state the agent can read cheaply but that changes in many
// places (entry and SVID counts, the soonest NotAfter, the active CA's NotAfter), so the
// gauges are exact at scrape time without hooks in every code path. f runs on the scrape's
// goroutine, concurrently with everything else, and must not block for long.
func (m *Metrics) OnGather(f func()) { m.onGather.Store(&f) }

// Gather implements prometheus.Gatherer: the OnGather hook, then the registry.
func (m *Metrics) Gather() ([]*dto.MetricFamily, error) {
	if f := m.onGather.Load(); f != nil && *f != nil {
		(*f)()
	}
	return m.reg.Gather()
}

var _ prometheus.Gatherer = (*Metrics)(nil)

// Handler serves the metrics (Gather) in the Prometheus exposition formats. Mount it at
// /metrics (ServeMetrics does).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m, promhttp.HandlerOpts{
		ErrorLog:      slogErrorLog{m.log},
		ErrorHandling: promhttp.ContinueOnError, // one failing collector must not blank the scrape
		// A slow or wedged scraper must not pile up gathers.
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) {
	l.log.Error("serving metrics", "error", fmt.Sprint(v...))
}

// serviceKind resolves (and thereby creates at zero) every front-end series of one
// (service, kind).
func (m *Metrics) serviceKind(service, kind string) serviceKind {
	return serviceKind{
		open:      m.streamsOpen.WithLabelValues(service, kind),
		opened:    m.streamsOpened.WithLabelValues(service, kind),
		responses: m.responses.WithLabelValues(service, kind),
		resources: m.responseResource.WithLabelValues(service, kind),
		acks:      m.acks.WithLabelValues(service, kind),
		nacks:     m.nacks.WithLabelValues(service, kind),
		stale:     m.staleRequests.WithLabelValues(service, kind),
	}
}

// Front-end events. service and kind must come from small fixed sets (constants in the
// caller: "sds"/"workloadapi", the RPC kinds), never from request data: each distinct pair is
// a time series. InitService creates a service's series at zero ahead of its first event.

// InitService creates the series of service for every kind in kinds at zero, so dashboards
// and rate() see them before the first stream.
func (m *Metrics) InitService(service string, kinds ...string) {
	for _, k := range kinds {
		m.serviceKind(service, k)
	}
}

// StreamOpened counts a stream opened and raises the open-streams gauge.
func (m *Metrics) StreamOpened(service, kind string) {
	m.streamsOpen.WithLabelValues(service, kind).Inc()
	m.streamsOpened.WithLabelValues(service, kind).Inc()
}

// StreamClosed lowers the open-streams gauge.
func (m *Metrics) StreamClosed(service, kind string) {
	m.streamsOpen.WithLabelValues(service, kind).Dec()
}

// ResponseSent counts a response and the resources it carried.
func (m *Metrics) ResponseSent(service, kind string, resources int) {
	m.responses.WithLabelValues(service, kind).Inc()
	m.responseResource.WithLabelValues(service, kind).Add(float64(max(resources, 0)))
}

// ACK counts a response the client accepted.
func (m *Metrics) ACK(service, kind string) { m.acks.WithLabelValues(service, kind).Inc() }

// NACK counts a response the client rejected.
func (m *Metrics) NACK(service, kind string) { m.nacks.WithLabelValues(service, kind).Inc() }

// StaleRequest counts a request ignored because it answered an older response.
func (m *Metrics) StaleRequest(service, kind string) {
	m.staleRequests.WithLabelValues(service, kind).Inc()
}

// RequestFailed counts a call that ended with an error status. code has at most 17 values.
func (m *Metrics) RequestFailed(service, kind string, code codes.Code) {
	m.requestErrors.WithLabelValues(service, kind, code.String()).Inc()
}

// WorkloadAPI returns the workloadapi.Metrics view of m (service "workloadapi"), for
// workloadapi.Config.Metrics.
func (m *Metrics) WorkloadAPI() workloadapi.Metrics { return workloadAPIMetrics{m} }

type workloadAPIMetrics struct{ m *Metrics }

var _ workloadapi.Metrics = workloadAPIMetrics{}

func (w workloadAPIMetrics) StreamOpened(k workloadapi.Kind) {
	w.m.StreamOpened(ServiceWorkloadAPI, string(k))
}
func (w workloadAPIMetrics) StreamClosed(k workloadapi.Kind) {
	w.m.StreamClosed(ServiceWorkloadAPI, string(k))
}
func (w workloadAPIMetrics) ResponseSent(k workloadapi.Kind, items int) {
	w.m.ResponseSent(ServiceWorkloadAPI, string(k), items)
}
func (w workloadAPIMetrics) RequestFailed(k workloadapi.Kind, code codes.Code) {
	w.m.RequestFailed(ServiceWorkloadAPI, string(k), code)
}

// SDS returns the sds.Metrics view of m (service "sds"), for sds.Config.Metrics.
func (m *Metrics) SDS() sds.Metrics { return sdsMetrics{m} }

type sdsMetrics struct{ m *Metrics }

var _ sds.Metrics = sdsMetrics{}

// kind returns the pre-resolved series of k; an unknown kind (a future RPC) falls back to a
// label lookup.
func (s sdsMetrics) kind(k sds.Kind) serviceKind {
	switch k {
	case sds.KindStream:
		return s.m.sdsKindMetrics[0]
	case sds.KindDelta:
		return s.m.sdsKindMetrics[1]
	case sds.KindFetch:
		return s.m.sdsKindMetrics[2]
	}
	return s.m.serviceKind(ServiceSDS, string(k))
}

func (s sdsMetrics) StreamOpened(k sds.Kind) {
	sk := s.kind(k)
	sk.open.Inc()
	sk.opened.Inc()
}
func (s sdsMetrics) StreamClosed(k sds.Kind) { s.kind(k).open.Dec() }
func (s sdsMetrics) ResponseSent(k sds.Kind, resources int) {
	sk := s.kind(k)
	sk.responses.Inc()
	sk.resources.Add(float64(max(resources, 0)))
}
func (s sdsMetrics) ACK(k sds.Kind)          { s.kind(k).acks.Inc() }
func (s sdsMetrics) NACK(k sds.Kind)         { s.kind(k).nacks.Inc() }
func (s sdsMetrics) StaleRequest(k sds.Kind) { s.kind(k).stale.Inc() }
func (s sdsMetrics) FirstResponse(k sds.Kind, d time.Duration) {
	var o prometheus.Observer
	switch k {
	case sds.KindStream:
		o = s.m.sdsFirst[0]
	case sds.KindDelta:
		o = s.m.sdsFirst[1]
	default:
		o = s.m.firstResponse.WithLabelValues(ServiceSDS, string(k))
	}
	o.Observe(d.Seconds())
}

// Agent events.

func result(err error) string {
	if err != nil {
		return resultError
	}
	return resultOK
}

// AttestationDone records one attestation of a caller and how long it took.
func (m *Metrics) AttestationDone(d time.Duration, err error) {
	m.attestation.WithLabelValues(result(err)).Observe(d.Seconds())
}

// SVIDMinted records one X509-SVID mint (first issue or rotation) and how long it took.
func (m *Metrics) SVIDMinted(d time.Duration, err error) {
	m.x509Mint.WithLabelValues(result(err)).Observe(d.Seconds())
}

// SVIDRotated counts an X509-SVID re-minted ahead of expiry and pushed.
func (m *Metrics) SVIDRotated() { m.x509Rotations.Inc() }

// JWTSVIDMinted counts a JWT-SVID mint.
func (m *Metrics) JWTSVIDMinted(err error) { m.jwtMints.WithLabelValues(result(err)).Inc() }

// PushLatency records the time from a change observed to its View published to every
// affected stream.
func (m *Metrics) PushLatency(d time.Duration) { m.pushLatency.Observe(d.Seconds()) }

// SetEntries sets the number of registration entries.
func (m *Metrics) SetEntries(n int) { m.entries.Set(float64(n)) }

// SetSVIDs sets the number of X509-SVIDs in the cache.
func (m *Metrics) SetSVIDs(n int) { m.svids.Set(float64(n)) }

// SetSoonestSVIDNotAfter sets the NotAfter of the cached SVID that expires first; the zero
// time (no SVID cached) sets 0.
func (m *Metrics) SetSoonestSVIDNotAfter(t time.Time) { m.soonestSVID.Set(unixSeconds(t)) }

// SetCANotAfter sets the active CA certificate's NotAfter.
func (m *Metrics) SetCANotAfter(t time.Time) { m.caNotAfter.Set(unixSeconds(t)) }

// CARotation counts one CA rotation step: prepare, activate, prune or replace-expired (the
// names the ca package logs); anything else is counted as "other".
func (m *Metrics) CARotation(step string) {
	for _, s := range caSteps {
		if s == step {
			m.caRotations.WithLabelValues(s).Inc()
			return
		}
	}
	m.caRotations.WithLabelValues(caStepOther).Inc()
}

// UpstreamFailed counts one failed upstream signing.
func (m *Metrics) UpstreamFailed() { m.upstreamFails.Inc() }

// FederationRefresh counts one fetch from a foreign bundle endpoint.
func (m *Metrics) FederationRefresh(err error) {
	m.federationRefreshes.WithLabelValues(result(err)).Inc()
}

// BundleChanged counts a trust bundle change published to workloads.
func (m *Metrics) BundleChanged() { m.bundleChanges.Inc() }

// refusalReasons are the admission limits, the label values of admission_refusals_total.
var refusalReasons = []admission.Reason{admission.ConnectionRate, admission.OpenConnections,
	admission.StreamRate, admission.OpenStreams, admission.TooManyUIDs, admission.Bytes, admission.UnentitledBytes}

// AdmissionRefused counts a connection or stream refused by a limit; it fits
// admission.Config.OnReject. A reason outside the known set counts as "other".
func (m *Metrics) AdmissionRefused(r admission.Reason) {
	if !slices.Contains(refusalReasons, r) {
		r = "other"
	}
	m.refusals.WithLabelValues(string(r)).Inc()
}

// LogLineSuppressed counts a log line dropped by a log budget; it fits
// admission.Config.OnLogSuppressed.
func (m *Metrics) LogLineSuppressed() { m.logDropped.Inc() }

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
