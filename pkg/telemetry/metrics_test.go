package telemetry

import (
	"errors"
	"math"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"google.golang.org/grpc/codes"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/sds"
	"github.com/svidd/svidd/pkg/workloadapi"
)

var errBoom = errors.New("boom")

// exerciseAll calls every event method once, so every family has at least one series.
func exerciseAll(m *Metrics) {
	s := m.SDS()
	for _, k := range []sds.Kind{sds.KindStream, sds.KindDelta, sds.KindFetch} {
		s.StreamOpened(k)
		s.ResponseSent(k, 2)
		s.ACK(k)
		s.NACK(k)
		s.StaleRequest(k)
		s.FirstResponse(k, time.Millisecond)
		s.StreamClosed(k)
	}
	m.StreamOpened("workloadapi", "x509_svid")
	m.ResponseSent("workloadapi", "x509_svid", 1)
	m.ACK("workloadapi", "x509_svid")
	m.NACK("workloadapi", "x509_svid")
	m.StaleRequest("workloadapi", "x509_svid")
	m.StreamClosed("workloadapi", "x509_svid")
	m.InitService("workloadapi", "jwt", "bundles")
	w := m.WorkloadAPI()
	w.StreamOpened(workloadapi.KindJWTBundles)
	w.ResponseSent(workloadapi.KindJWTBundles, 1)
	w.StreamClosed(workloadapi.KindJWTBundles)
	w.RequestFailed(workloadapi.KindJWTSVID, codes.PermissionDenied)
	m.AttestationDone(time.Millisecond, nil)
	m.AttestationDone(time.Millisecond, errBoom)
	m.AdmissionRefused(admission.OpenStreams)
	m.LogLineSuppressed()
	m.SVIDMinted(time.Millisecond, nil)
	m.SVIDMinted(time.Millisecond, errBoom)
	m.SVIDRotated()
	m.JWTSVIDMinted(nil)
	m.JWTSVIDMinted(errBoom)
	m.PushLatency(5 * time.Millisecond)
	m.SetEntries(3)
	m.SetSVIDs(2)
	m.SetCANotAfter(time.Now().Add(24 * time.Hour))
	m.SetSoonestSVIDNotAfter(time.Now().Add(time.Hour))
	for _, st := range []string{"prepare", "activate", "prune", "replace-expired", "bogus"} {
		m.CARotation(st)
	}
	m.BundleChanged()
	m.FederationRefresh(nil)
}

func gather(t *testing.T, m *Metrics) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	return mfs
}

func ours(mfs []*dto.MetricFamily) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), namespace+"_") {
			out = append(out, mf)
		}
	}
	return out
}

// value returns the value of the series name{labels} (a histogram's sample count), and
// whether it exists.
func value(t *testing.T, m *Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	for _, mf := range gather(t, m) {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, mt := range mf.GetMetric() {
			if len(mt.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range mt.GetLabel() {
				if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
					continue series
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return mt.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return mt.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(mt.GetHistogram().GetSampleCount()), true
			default:
				t.Fatalf("%s: unexpected type %v", name, mf.GetType())
			}
		}
	}
	return 0, false
}

func TestNamesPassPromlint(t *testing.T) {
	m := New(Config{})
	exerciseAll(m)
	mfs := gather(t, m)
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if n := len(ours(mfs)); n != 24 {
		t.Errorf("got %d svidd_ families, want 24 (a metric added or lost: update this test and doc.go)", n)
	}
	for _, mf := range ours(mfs) {
		name := mf.GetName()
		if !regexp.MustCompile(`^svidd_(api|agent|svid|ca|bundle|federation)_[a-z0-9_]+$`).MatchString(name) {
			t.Errorf("%s: not svidd_<subsystem>_<name>", name)
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s does not end in _total", name)
			}
		case dto.MetricType_HISTOGRAM:
			if !strings.HasSuffix(name, "_seconds") {
				t.Errorf("histogram %s is not in seconds", name)
			}
		}
		if mf.GetHelp() == "" {
			t.Errorf("%s has no help", name)
		}
	}
}

// TestLabelsBounded holds the cardinality rule: labels come from a fixed small set of names,
// never an identity of a workload.
func TestLabelsBounded(t *testing.T) {
	m := New(Config{})
	exerciseAll(m)
	allowed := []string{"service", "kind", "result", "step", "code", "reason"} // reason: the five admission limits, or "other"
	forbidden := []string{"spiffe_id", "pid", "uid", "gid", "id", "entry_id", "serial", "path"}
	for _, mf := range ours(gather(t, m)) {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if slices.Contains(forbidden, lp.GetName()) {
					t.Errorf("%s has unbounded label %q", mf.GetName(), lp.GetName())
				}
				if !slices.Contains(allowed, lp.GetName()) {
					t.Errorf("%s has label %q, not one of %v: is it bounded?", mf.GetName(), lp.GetName(), allowed)
				}
				if strings.Contains(lp.GetValue(), "spiffe://") {
					t.Errorf("%s label %s=%q holds a SPIFFE ID", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
	// An unexpected CA step must not create a series of its own.
	m.CARotation("spiffe://example.org/x")
	if _, ok := value(t, m, "svidd_ca_rotations_total", map[string]string{"step": "spiffe://example.org/x"}); ok {
		t.Error("CARotation created a series for an unknown step")
	}
}

// TestDocListsEveryMetric keeps doc.go, which operators read, in step with the code.
func TestDocListsEveryMetric(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	m := New(Config{})
	exerciseAll(m)
	for _, mf := range ours(gather(t, m)) {
		if !regexp.MustCompile(`\b` + mf.GetName() + `\b`).Match(doc) {
			t.Errorf("doc.go does not list %s", mf.GetName())
		}
	}
}

func TestSeriesExistBeforeFirstEvent(t *testing.T) {
	m := New(Config{})
	for _, c := range []struct {
		name   string
		labels map[string]string
	}{
		{"svidd_api_streams_open", map[string]string{"service": "sds", "kind": "stream"}},
		{"svidd_api_nacks_total", map[string]string{"service": "sds", "kind": "delta"}},
		{"svidd_api_responses_total", map[string]string{"service": "sds", "kind": "fetch"}},
		{"svidd_agent_attestation_duration_seconds", map[string]string{"result": "error"}},
		{"svidd_svid_x509_mint_duration_seconds", map[string]string{"result": "error"}},
		{"svidd_svid_jwt_mints_total", map[string]string{"result": "error"}},
		{"svidd_ca_rotations_total", map[string]string{"step": "activate"}},
		{"svidd_bundle_changes_total", nil},
		{"svidd_api_streams_opened_total", map[string]string{"service": "workloadapi", "kind": "validate_jwt_svid"}},
		{"svidd_api_responses_total", map[string]string{"service": "workloadapi", "kind": "x509_svid"}},
	} {
		if v, ok := value(t, m, c.name, c.labels); !ok || v != 0 {
			t.Errorf("%s%v = %v, exists %v; want 0, exists", c.name, c.labels, v, ok)
		}
	}
}

func TestEventsMoveSeries(t *testing.T) {
	sdsL := func(kind string) map[string]string { return map[string]string{"service": "sds", "kind": kind} }
	wl := map[string]string{"service": "workloadapi", "kind": "x509_svid"}
	ok := map[string]string{"result": "ok"}
	bad := map[string]string{"result": "error"}
	for _, c := range []struct {
		name   string
		do     func(m *Metrics)
		metric string
		labels map[string]string
		want   float64
	}{
		{"sds stream opened twice closed once", func(m *Metrics) {
			s := m.SDS()
			s.StreamOpened(sds.KindStream)
			s.StreamOpened(sds.KindStream)
			s.StreamClosed(sds.KindStream)
		}, "svidd_api_streams_open", sdsL("stream"), 1},
		{"sds streams opened counts every open", func(m *Metrics) {
			s := m.SDS()
			s.StreamOpened(sds.KindDelta)
			s.StreamClosed(sds.KindDelta)
			s.StreamOpened(sds.KindDelta)
		}, "svidd_api_streams_opened_total", sdsL("delta"), 2},
		{"sds responses", func(m *Metrics) {
			m.SDS().ResponseSent(sds.KindFetch, 3)
			m.SDS().ResponseSent(sds.KindFetch, 0)
		}, "svidd_api_responses_total", sdsL("fetch"), 2},
		{"sds resources", func(m *Metrics) {
			m.SDS().ResponseSent(sds.KindDelta, 3)
			m.SDS().ResponseSent(sds.KindDelta, 4)
			m.SDS().ResponseSent(sds.KindDelta, -1) // nonsense never decreases a counter (it would panic)
		}, "svidd_api_response_resources_total", sdsL("delta"), 7},
		{"sds ack", func(m *Metrics) { m.SDS().ACK(sds.KindStream) }, "svidd_api_acks_total", sdsL("stream"), 1},
		{"sds nack", func(m *Metrics) { m.SDS().NACK(sds.KindDelta) }, "svidd_api_nacks_total", sdsL("delta"), 1},
		{"sds stale", func(m *Metrics) { m.SDS().StaleRequest(sds.KindStream) }, "svidd_api_stale_requests_total", sdsL("stream"), 1},
		{"sds first response", func(m *Metrics) {
			m.SDS().FirstResponse(sds.KindStream, time.Millisecond)
			m.SDS().FirstResponse(sds.KindStream, 2*time.Second)
		}, "svidd_api_first_response_seconds", sdsL("stream"), 2},
		{"sds first response, delta", func(m *Metrics) { m.SDS().FirstResponse(sds.KindDelta, time.Millisecond) }, "svidd_api_first_response_seconds", sdsL("delta"), 1},
		{"sds unknown kind falls back to a lookup", func(m *Metrics) { m.SDS().ACK(sds.Kind("future")) }, "svidd_api_acks_total", sdsL("future"), 1},
		{"generic methods share the sds series", func(m *Metrics) {
			m.ACK(ServiceSDS, string(sds.KindStream))
			m.SDS().ACK(sds.KindStream)
		}, "svidd_api_acks_total", sdsL("stream"), 2},
		{"workloadapi open", func(m *Metrics) { m.StreamOpened("workloadapi", "x509_svid") }, "svidd_api_streams_open", wl, 1},
		{"workloadapi closed", func(m *Metrics) {
			m.StreamOpened("workloadapi", "x509_svid")
			m.StreamClosed("workloadapi", "x509_svid")
		}, "svidd_api_streams_open", wl, 0},
		{"workloadapi response", func(m *Metrics) { m.ResponseSent("workloadapi", "x509_svid", 2) }, "svidd_api_response_resources_total", wl, 2},
		{"workloadapi ack", func(m *Metrics) { m.ACK("workloadapi", "x509_svid") }, "svidd_api_acks_total", wl, 1},
		{"workloadapi nack", func(m *Metrics) { m.NACK("workloadapi", "x509_svid") }, "svidd_api_nacks_total", wl, 1},
		{"workloadapi stale", func(m *Metrics) { m.StaleRequest("workloadapi", "x509_svid") }, "svidd_api_stale_requests_total", wl, 1},
		{"workloadapi adapter open", func(m *Metrics) {
			m.WorkloadAPI().StreamOpened(workloadapi.KindX509SVID)
			m.WorkloadAPI().StreamOpened(workloadapi.KindX509SVID)
			m.WorkloadAPI().StreamClosed(workloadapi.KindX509SVID)
		}, "svidd_api_streams_open", wl, 1},
		{"workloadapi adapter response", func(m *Metrics) {
			m.WorkloadAPI().ResponseSent(workloadapi.KindX509Bundles, 3)
		}, "svidd_api_response_resources_total", map[string]string{"service": "workloadapi", "kind": "x509_bundles"}, 3},
		{"workloadapi adapter failure", func(m *Metrics) {
			m.WorkloadAPI().RequestFailed(workloadapi.KindJWTSVID, codes.PermissionDenied)
			m.WorkloadAPI().RequestFailed(workloadapi.KindJWTSVID, codes.PermissionDenied)
			m.WorkloadAPI().RequestFailed(workloadapi.KindJWTSVID, codes.InvalidArgument)
		}, "svidd_api_request_errors_total", map[string]string{"service": "workloadapi", "kind": "jwt_svid", "code": "PermissionDenied"}, 2},
		{"generic request failed", func(m *Metrics) {
			m.RequestFailed(ServiceSDS, "stream", codes.Unavailable)
		}, "svidd_api_request_errors_total", map[string]string{"service": "sds", "kind": "stream", "code": "Unavailable"}, 1},
		{"init service", func(m *Metrics) { m.InitService("workloadapi", "jwt") }, "svidd_api_streams_opened_total", map[string]string{"service": "workloadapi", "kind": "jwt"}, 0},
		{"attestation ok", func(m *Metrics) { m.AttestationDone(time.Millisecond, nil) }, "svidd_agent_attestation_duration_seconds", ok, 1},
		{"attestation error", func(m *Metrics) {
			m.AttestationDone(time.Millisecond, errBoom)
			m.AttestationDone(time.Millisecond, errBoom)
		}, "svidd_agent_attestation_duration_seconds", bad, 2},
		{"attestation error is not ok", func(m *Metrics) { m.AttestationDone(time.Millisecond, errBoom) }, "svidd_agent_attestation_duration_seconds", ok, 0},
		{"mint ok", func(m *Metrics) { m.SVIDMinted(time.Millisecond, nil) }, "svidd_svid_x509_mint_duration_seconds", ok, 1},
		{"mint error", func(m *Metrics) { m.SVIDMinted(time.Millisecond, errBoom) }, "svidd_svid_x509_mint_duration_seconds", bad, 1},
		{"rotated", func(m *Metrics) { m.SVIDRotated(); m.SVIDRotated() }, "svidd_svid_x509_rotations_total", nil, 2},
		{"jwt ok", func(m *Metrics) { m.JWTSVIDMinted(nil) }, "svidd_svid_jwt_mints_total", ok, 1},
		{"jwt error", func(m *Metrics) { m.JWTSVIDMinted(errBoom) }, "svidd_svid_jwt_mints_total", bad, 1},
		{"push latency", func(m *Metrics) { m.PushLatency(time.Millisecond) }, "svidd_agent_push_latency_seconds", nil, 1},
		{"admission refusal", func(m *Metrics) {
			m.AdmissionRefused(admission.StreamRate)
			m.AdmissionRefused(admission.StreamRate)
		}, "svidd_agent_admission_refusals_total", map[string]string{"reason": "stream_rate"}, 2},
		{"admission refusal series exist at zero", func(*Metrics) {}, "svidd_agent_admission_refusals_total", map[string]string{"reason": "too_many_uids"}, 0},
		{"admission refusal by bytes", func(m *Metrics) { m.AdmissionRefused(admission.UnentitledBytes) }, "svidd_agent_admission_refusals_total", map[string]string{"reason": "unentitled_bytes"}, 1},
		{"byte refusal series exist at zero", func(*Metrics) {}, "svidd_agent_admission_refusals_total", map[string]string{"reason": "bytes"}, 0},
		{"log line suppressed", func(m *Metrics) { m.LogLineSuppressed(); m.LogLineSuppressed() }, "svidd_agent_log_lines_suppressed_total", nil, 2},
		{"admission refusal, unknown reason", func(m *Metrics) { m.AdmissionRefused("from-the-future") }, "svidd_agent_admission_refusals_total", map[string]string{"reason": "other"}, 1},
		{"entries", func(m *Metrics) { m.SetEntries(7); m.SetEntries(5) }, "svidd_agent_entries", nil, 5},
		{"svids", func(m *Metrics) { m.SetSVIDs(4) }, "svidd_agent_svids", nil, 4},
		{"ca not after", func(m *Metrics) { m.SetCANotAfter(time.Unix(1_900_000_000, 0)) }, "svidd_ca_not_after_timestamp_seconds", nil, 1_900_000_000},
		{"soonest svid", func(m *Metrics) { m.SetSoonestSVIDNotAfter(time.Unix(1_800_000_000, 500_000_000)) }, "svidd_svid_soonest_not_after_timestamp_seconds", nil, 1_800_000_000.5},
		{"soonest svid none", func(m *Metrics) {
			m.SetSoonestSVIDNotAfter(time.Unix(1_800_000_000, 0))
			m.SetSoonestSVIDNotAfter(time.Time{})
		}, "svidd_svid_soonest_not_after_timestamp_seconds", nil, 0},
		{"ca prepare", func(m *Metrics) { m.CARotation("prepare") }, "svidd_ca_rotations_total", map[string]string{"step": "prepare"}, 1},
		{"ca activate", func(m *Metrics) { m.CARotation("activate") }, "svidd_ca_rotations_total", map[string]string{"step": "activate"}, 1},
		{"ca prune", func(m *Metrics) { m.CARotation("prune") }, "svidd_ca_rotations_total", map[string]string{"step": "prune"}, 1},
		{"ca replace", func(m *Metrics) { m.CARotation("replace-expired") }, "svidd_ca_rotations_total", map[string]string{"step": "replace-expired"}, 1},
		{"ca unknown step", func(m *Metrics) { m.CARotation("x"); m.CARotation("") }, "svidd_ca_rotations_total", map[string]string{"step": "other"}, 2},
		{"bundle", func(m *Metrics) { m.BundleChanged() }, "svidd_bundle_changes_total", nil, 1},
		{"federation refresh failed", func(m *Metrics) { m.FederationRefresh(errors.New("x")) }, "svidd_federation_bundle_refreshes_total", map[string]string{"result": "error"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := New(Config{})
			c.do(m)
			got, ok := value(t, m, c.metric, c.labels)
			if !ok {
				t.Fatalf("%s%v does not exist", c.metric, c.labels)
			}
			if math.Abs(got-c.want) > 1e-6 {
				t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
			}
		})
	}
}

func TestHistogramRecordsSeconds(t *testing.T) {
	m := New(Config{})
	m.PushLatency(250 * time.Millisecond)
	m.PushLatency(750 * time.Millisecond)
	for _, mf := range gather(t, m) {
		if mf.GetName() != "svidd_agent_push_latency_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if got := h.GetSampleSum(); math.Abs(got-1.0) > 1e-9 {
			t.Errorf("sum = %v, want 1 (seconds)", got)
		}
		for _, b := range h.GetBucket() {
			if b.GetUpperBound() == 0.5 && b.GetCumulativeCount() != 1 {
				t.Errorf("le=0.5 bucket = %d, want 1", b.GetCumulativeCount())
			}
		}
		return
	}
	t.Fatal("svidd_agent_push_latency_seconds not gathered")
}

// TestOnGather: the hook runs before every gather, so sampled gauges are exact at scrape
// time, and a later hook replaces an earlier one.
func TestOnGather(t *testing.T) {
	m := New(Config{})
	m.OnGather(func() { t.Error("replaced hook ran") })
	var n atomic.Int64
	m.OnGather(func() { m.SetEntries(int(n.Add(1)) * 10) })
	for want := 10.0; want <= 30; want += 10 {
		if got, _ := value(t, m, "svidd_agent_entries", nil); got != want {
			t.Errorf("entries = %v, want %v (hook sampled at gather)", got, want)
		}
	}
}

// TestSeparateRegistries: two Metrics in one process (tests, embedders) neither panic on
// registration nor share values.
func TestSeparateRegistries(t *testing.T) {
	a, b := New(Config{}), New(Config{})
	a.BundleChanged()
	if v, _ := value(t, b, "svidd_bundle_changes_total", nil); v != 0 {
		t.Errorf("second registry sees the first's counter: %v", v)
	}
}

// TestConcurrentEvents runs events and gathers at once; the race detector is the assertion,
// plus totals that must add up.
func TestConcurrentEvents(t *testing.T) {
	m := New(Config{})
	s := m.SDS()
	const workers, n = 8, 500
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range n {
				s.StreamOpened(sds.KindStream)
				s.ResponseSent(sds.KindStream, 1)
				m.ACK(ServiceSDS, "stream")
				m.PushLatency(time.Microsecond)
				s.StreamClosed(sds.KindStream)
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := m.Registry().Gather(); err != nil {
				t.Errorf("gather: %v", err)
			}
		}
	})
	wg.Wait()
	l := map[string]string{"service": "sds", "kind": "stream"}
	for name, want := range map[string]float64{
		"svidd_api_streams_open":         0,
		"svidd_api_streams_opened_total": workers * n,
		"svidd_api_acks_total":           workers * n,
	} {
		if got, _ := value(t, m, name, l); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

func BenchmarkSDSEvent(b *testing.B) {
	s := New(Config{}).SDS()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.ResponseSent(sds.KindStream, 2)
			s.ACK(sds.KindStream)
		}
	})
}
