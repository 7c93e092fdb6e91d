package agent

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/workload"
)

// Minter mints X509-SVIDs; *ca.CA satisfies it. It must be safe for concurrent use.
type Minter interface {
	MintX509SVID(id spiffeid.ID, ttl time.Duration, dnsNames []string) (*workload.SVID, error)
}

// svidCurrent reports whether s is a usable SVID for e: minted for this revision of the entry
// and not expired. (An SVID past its RotateAt is still current until the rotation replaces it.)
func svidCurrent(s *workload.SVID, e entry.Entry, now time.Time) bool {
	return s != nil && s.EntryRevision == e.Revision && s.ID == e.SPIFFEID && now.Before(s.NotAfter)
}

// mint makes sure every entry in es has a current SVID, minting at most once per entry at a
// time however many callers ask. Several SVIDs are minted concurrently, so a caller entitled to
// many identities waits for the slowest share of the work instead of the sum of it (minting is
// CPU-bound: a few workers per core keep every core busy without piling up goroutines). The
// first error is returned once every worker has stopped; a View is only ever built from SVIDs
// that exist (a Partial View, see subscribe, is one built on purpose from the ready ones).
//
// mint is foreground work: the background minter waits while any mint call runs.
func (c *cache) mint(es []entry.Entry) error {
	c.mu.Lock()
	c.fgMints++
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.fgMints--; c.fgMints == 0 {
			c.fgIdle.Broadcast()
		}
		c.mu.Unlock()
	}()
	es = uniqueEntries(es)
	workers := min(len(es), mintWorkers())
	if workers <= 1 {
		for _, e := range es {
			if err := c.mintOne(e, false); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next    atomic.Int64
		failed  atomic.Bool
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= len(es) {
					return
				}
				if err := c.mintOne(es[i], false); err != nil {
					errOnce.Do(func() { first = err })
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// uniqueEntries drops repeated entry IDs (refresh collects the missing entries of several
// groups, which often share them), keeping the first of each, in order. es is not modified.
func uniqueEntries(es []entry.Entry) []entry.Entry {
	if len(es) < 2 {
		return es
	}
	seen := make(map[string]struct{}, len(es))
	out := make([]entry.Entry, 0, len(es))
	for _, e := range es {
		if _, dup := seen[e.ID]; dup {
			continue
		}
		seen[e.ID] = struct{}{}
		out = append(out, e)
	}
	return out
}

// mintOne mints an SVID for e unless a current one exists (or force, for rotation), or e is
// no longer in the index as it is (deleted or changed meanwhile: whoever asked will find the
// change when it rebuilds its View).
func (c *cache) mintOne(e entry.Entry, force bool) error {
	for {
		c.mu.Lock()
		if cur, ok := c.index.Get(e.ID); !ok || cur.Revision != e.Revision {
			c.mu.Unlock()
			return nil
		}
		if s := c.svids[e.ID]; !force && svidCurrent(s, e, c.now()) {
			c.mu.Unlock()
			return nil
		}
		if wait, busy := c.minting[e.ID]; busy {
			c.mu.Unlock()
			<-wait
			force = false // someone else just minted; take theirs
			continue
		}
		done := make(chan struct{})
		c.minting[e.ID] = done
		c.mu.Unlock()

		start := time.Now()
		s, err := c.minter.MintX509SVID(e.SPIFFEID, e.X509SVIDTTL, e.DNSNames)
		c.onMint(time.Since(start), err)

		c.mu.Lock()
		delete(c.minting, e.ID)
		close(done)
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("minting X509-SVID for %s: %w", e.SPIFFEID, err)
		}
		s.EntryID = e.ID
		s.EntryRevision = e.Revision
		// The jitter comes from the serial, so a workload holding the certificate computes
		// the same time (svidctl svid fetch shows it).
		s.RotateAt = workload.RotateAt(s.NotBefore, s.NotAfter, workload.RotationJitter(s.Serial))
		// The entry may have changed or gone while we minted; only keep the SVID if it still
		// belongs to the entry as it is now.
		if cur, ok := c.index.Get(e.ID); ok && cur.Revision == e.Revision {
			c.svids[e.ID] = s
		}
		c.mu.Unlock()
		c.scheduleRotation(e.ID, s.RotateAt)
		c.log.Debug("minted X509-SVID", "spiffe_id", e.SPIFFEID.String(), "serial", s.Serial, "not_after", s.NotAfter, "rotate_at", s.RotateAt)
		return nil
	}
}

// enqueueLocked queues the Partial group g for the background minter, starting it if it is
// not running. c.mu must be held.
func (c *cache) enqueueLocked(g *group) {
	if c.stopped {
		return
	}
	if !g.queued {
		g.queued = true
		c.bgQueue = append(c.bgQueue, g)
	}
	if !c.bgRunning {
		c.bgRunning = true
		c.bgWG.Add(1)
		go c.background()
	}
}

// background completes the queued Partial groups, oldest first, one mint at a time and only
// while no foreground mint runs. It exits when the queue is empty or the cache is stopped.
func (c *cache) background() {
	defer c.bgWG.Done()
	for {
		g, missing, ok := c.nextBackground()
		if !ok {
			return
		}
		for _, e := range missing {
			if !c.backgroundTurn(g) {
				break
			}
			if err := c.mintOne(e, false); err != nil {
				c.log.Error("minting X509-SVID in the background failed; retrying", "spiffe_id", e.SPIFFEID.String(), "error", err)
				c.mu.Lock()
				c.dequeueLocked(g)
				c.mu.Unlock()
				time.AfterFunc(bgRetryDelay, func() {
					c.mu.Lock()
					defer c.mu.Unlock()
					if c.groups[g.key] == g && g.view.Partial {
						c.enqueueLocked(g)
					}
				})
				break
			}
		}
	}
}

// nextBackground waits until no foreground mint runs, then returns the oldest queued group
// that is still open and Partial with the entries it lacks. Groups it finds complete have
// their View published and leave the queue. ok is false when there is nothing left to do (the
// minter then exits) or the cache is stopped.
func (c *cache) nextBackground() (_ *group, missing []entry.Entry, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for c.fgMints > 0 && !c.stopped {
			c.fgIdle.Wait()
		}
		if c.stopped || len(c.bgQueue) == 0 {
			c.bgRunning = false
			return nil, nil, false
		}
		g := c.bgQueue[0]
		if c.groups[g.key] != g || !g.view.Partial {
			// Closed, or completed by someone else (refresh, a subscriber without a hint).
			c.dequeueLocked(g)
			continue
		}
		v, missing := c.buildViewLocked(g, nil)
		if missing != nil {
			return g, missing, true
		}
		c.dequeueLocked(g)
		g.view = v
		for sub := range g.subs {
			sub.Publish(v)
		}
	}
}

// backgroundTurn waits until no foreground mint runs and reports whether the background
// minter should go on minting for g (the cache is not stopped, g is still open and Partial).
func (c *cache) backgroundTurn(g *group) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.fgMints > 0 && !c.stopped {
		c.fgIdle.Wait()
	}
	return !c.stopped && c.groups[g.key] == g && g.view.Partial
}

// dequeueLocked removes g from the background queue. c.mu must be held.
func (c *cache) dequeueLocked(g *group) {
	if i := slices.Index(c.bgQueue, g); i >= 0 {
		c.bgQueue = slices.Delete(c.bgQueue, i, i+1)
	}
	g.queued = false
}
