package telemetry

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func TestRegistryMetrics(t *testing.T) {
	m := New(Config{})
	if _, ok := value(t, m, "svidd_registry_reachable", nil); ok {
		t.Fatal("registry metrics exported by a host without a registry")
	}
	since := time.Unix(1_800_000_000, 0)
	m.SetRegistry(false, since)
	if v, ok := value(t, m, "svidd_registry_reachable", nil); !ok || v != 0 {
		t.Fatalf("svidd_registry_reachable = %v, %v; want 0", v, ok)
	}
	if v, _ := value(t, m, "svidd_registry_state_since_timestamp_seconds", nil); v != 1_800_000_000 {
		t.Fatalf("since = %v", v)
	}
	m.SetRegistry(true, since.Add(time.Minute))
	if v, _ := value(t, m, "svidd_registry_reachable", nil); v != 1 {
		t.Fatalf("svidd_registry_reachable = %v after it came back, want 1", v)
	}
	problems, err := promlint.NewWithMetricFamilies(gather(t, m)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
