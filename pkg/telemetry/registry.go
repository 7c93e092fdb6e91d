package telemetry

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registryMetrics describe the fleet registry (store "etcd"). They are registered on first
// use, so a host without a registry does not export them.
type registryMetrics struct {
	once      sync.Once
	reachable prometheus.Gauge
	since     prometheus.Gauge
}

// SetRegistry sets whether the fleet registry is reachable and since when.
func (m *Metrics) SetRegistry(reachable bool, since time.Time) {
	r := &m.registry
	r.once.Do(func() {
		r.reachable = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "registry", Name: "reachable",
			Help: "1 when the fleet registry (etcd) answers, 0 while this host serves its local copy.",
		})
		r.since = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "registry", Name: "state_since_timestamp_seconds",
			Help: "When the registry last became reachable or unreachable (Unix time).",
		})
		m.reg.MustRegister(r.reachable, r.since)
	})
	v := 0.0
	if reachable {
		v = 1
	}
	r.reachable.Set(v)
	r.since.Set(unixSeconds(since))
}
