package agent

import (
	"time"

	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/pkg/admin"
)

// status is the operator's view served on GET /v1/status.
func (a *Agent) status() admin.Status {
	st := a.cache.stats()
	out := admin.Status{
		TrustDomain: a.cfg.TrustDomain.Name(),
		Now:         time.Now().UTC(),
		StartedAt:   a.started,
		Entries:     st.Entries,
		Streams:     st.Streams,
		Authorities: caAdmin{a.ca}.Authorities(),
		Registry:    a.registryStatus(),
	}
	if u, ok := a.ca.UpstreamStatus(); ok {
		out.Upstream = &admin.Upstream{Name: u.Name, LastSuccess: u.LastSuccess.UTC(), Failures: u.Failures,
			LastError: u.LastError, LastFailure: u.LastFailure.UTC()}
	}
	for _, h := range a.cache.identities() {
		out.Identities = append(out.Identities, admin.Identity{
			SPIFFEID:  h.SVID.ID.String(),
			EntryID:   h.SVID.EntryID,
			Serial:    h.SVID.Serial,
			Streams:   h.Streams,
			NotBefore: h.SVID.NotBefore.UTC(),
			NotAfter:  h.SVID.NotAfter.UTC(),
			RotateAt:  h.SVID.RotateAt.UTC(),
		})
	}
	return out
}

// caAdmin adapts *ca.CA to the admin API.
type caAdmin struct{ c *ca.CA }

func (x caAdmin) Authorities() []admin.Authority {
	var out []admin.Authority
	for _, au := range x.c.Authorities() {
		out = append(out, admin.Authority{
			State:     string(au.State),
			NotBefore: au.NotBefore.UTC(),
			NotAfter:  au.NotAfter.UTC(),
			SKI:       au.SKI,
			Serial:    au.Serial,
			KeyType:   au.KeyType,
			JWTKeyID:  au.JWTKeyID,
		})
	}
	return out
}

func (x caAdmin) Prepare() error  { return x.c.Prepare() }
func (x caAdmin) Activate() error { return x.c.Activate() }

// gaugeMetrics sets the state gauges at scrape time.
func (a *Agent) gaugeMetrics() {
	st := a.cache.stats()
	a.metrics.SetEntries(st.Entries)
	a.registryMetrics()
	a.metrics.SetSVIDs(st.SVIDs)
	var soonest time.Time
	for _, h := range a.cache.identities() {
		if h.Streams > 0 && (soonest.IsZero() || h.SVID.NotAfter.Before(soonest)) {
			soonest = h.SVID.NotAfter
		}
	}
	a.metrics.SetSoonestSVIDNotAfter(soonest)
	a.metrics.SetCANotAfter(a.ca.NotAfter())
}
