package agent

import (
	"slices"
	"time"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/workload"
)

// rotate re-mints the SVID of entryID if it is due and still in use, and pushes it. An SVID no
// stream holds is dropped instead: it will be minted again on demand.
func (c *cache) rotate(entryID string) {
	c.mu.Lock()
	s := c.svids[entryID]
	e, ok := c.index.Get(entryID)
	if s == nil || !ok || c.now().Before(s.RotateAt) {
		c.mu.Unlock()
		return
	}
	var affected []*group
	for _, g := range c.groups {
		if slices.ContainsFunc(g.entries, func(ge entry.Entry) bool { return ge.ID == entryID }) {
			affected = append(affected, g)
		}
	}
	if len(affected) == 0 {
		delete(c.svids, entryID)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if err := c.mintOne(e, true); err != nil {
		// Keep serving the old SVID (still valid) and try again shortly.
		c.log.Error("rotating X509-SVID failed; retrying", "spiffe_id", e.SPIFFEID.String(), "error", err)
		c.scheduleRotation(entryID, c.now().Add(retryDelay(s, c.now())))
		return
	}
	c.onRotate()
	streams := 0
	c.mu.Lock()
	for _, g := range affected {
		streams += len(g.subs)
	}
	if ns := c.svids[entryID]; ns != nil {
		c.log.Info("rotated X509-SVID", "spiffe_id", e.SPIFFEID.String(), "serial", ns.Serial, "not_after", ns.NotAfter, "streams", streams)
	}
	c.mu.Unlock()
	c.refresh(affected)
}

// retryDelay spaces retries of a failed rotation: a tenth of the remaining lifetime, at least
// a second.
func retryDelay(s *workload.SVID, now time.Time) time.Duration {
	return max(s.NotAfter.Sub(now)/10, time.Second)
}
