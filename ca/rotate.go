package ca

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
)

const (
	// maxSleep bounds Run's sleep so that a wall-clock jump (suspend, NTP step) delays a
	// transition by at most this much; timers follow the monotonic clock.
	maxSleep = 10 * time.Minute
	// maxSteps bounds one Rotate: after a long downtime several steps fall due at once
	// (prune, replace, prepare, activate), never more than a handful.
	maxSteps = 8
)

type step int

const (
	stepNone     step = iota
	stepPrune         // drop expired non-active authorities
	stepFresh         // active expired and nothing to take over: new root
	stepPrepare       // generate the next CA and publish it
	stepActivate      // prepared becomes active, active becomes old
)

func (s step) String() string {
	return [...]string{"none", "prune", "replace-expired", "prepare", "activate"}[s]
}

func lifetime(a *authority) time.Duration { return a.cert.NotAfter.Sub(a.cert.NotBefore) }

// prepareAt is when the successor of active is generated and published: half its life.
func prepareAt(active *authority) time.Time {
	return active.cert.NotBefore.Add(lifetime(active) / 2)
}

// activateAt is when the prepared successor takes over: a sixth of active's life left. With
// SVID TTLs capped at a sixth of the CA TTL, the successor has been published for a third
// of the life before it signs anything.
func activateAt(active *authority) time.Time {
	return active.cert.NotAfter.Add(-lifetime(active) / 6)
}

// nextStep is the first transition due at now; a pure function of the authorities' times.
func nextStep(auths []*authority, now time.Time) step {
	var active, prepared *authority
	for _, a := range auths {
		if a.state != StateActive && !now.Before(a.cert.NotAfter) {
			return stepPrune
		}
		switch a.state {
		case StateActive:
			active = a
		case StatePrepared:
			prepared = a
		}
	}
	switch {
	case !now.Before(active.cert.NotAfter):
		if prepared != nil {
			return stepActivate
		}
		return stepFresh
	case prepared == nil && !now.Before(prepareAt(active)):
		return stepPrepare
	case prepared != nil && !now.Before(activateAt(active)):
		return stepActivate
	}
	return stepNone
}

// nextStep is nextStep, plus one rule that depends on the configuration: with an upstream
// configured, a self-signed active CA (from before the upstream was configured) is replaced
// at once by an upstream-signed one; it stays in the bundle until it expires.
func (c *CA) nextStep(auths []*authority, now time.Time) step {
	s := nextStep(auths, now)
	if s != stepNone || c.cfg.Upstream == nil {
		return s
	}
	for _, a := range auths {
		if a.state == StateActive && a.roots == nil {
			return stepFresh
		}
	}
	return stepNone
}

// nextDue is when nextStep will next return something other than stepNone.
func nextDue(auths []*authority) time.Time {
	var due time.Time
	earlier := func(t time.Time) {
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	var prepared bool
	for _, a := range auths {
		earlier(a.cert.NotAfter)
		if a.state == StatePrepared {
			prepared = true
		}
	}
	for _, a := range auths {
		if a.state != StateActive {
			continue
		}
		if prepared {
			earlier(activateAt(a))
		} else {
			earlier(prepareAt(a))
		}
	}
	return due
}

// NextChange returns when the next rotation step is due.
func (c *CA) NextChange() time.Time { return nextDue(c.state.Load().authorities) }

// Rotate applies every rotation step due at now (prepare, activate, prune, or replace an
// expired CA) and persists the result before it takes effect. changed reports whether the
// state changed; the bundle may not have (activation alone does not change it).
func (c *CA) Rotate(now time.Time) (changed bool, err error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	cur := c.state.Load()
	auths := cur.authorities
	var applied []step
	for range maxSteps {
		s := c.nextStep(auths, now)
		if s == stepNone {
			break
		}
		auths, err = c.apply(auths, s, now)
		if err != nil {
			return false, fmt.Errorf("rotating CA (%s): %w", s, err)
		}
		applied = append(applied, s)
	}
	if len(applied) == 0 {
		return false, nil
	}
	if err := c.commit(auths); err != nil {
		return false, fmt.Errorf("rotating CA: %w", err)
	}
	c.log.Info("CA rotated", "steps", fmt.Sprint(applied), "next_change", nextDue(auths))
	for _, s := range applied {
		c.onStep(s.String())
	}
	return true, nil
}

// apply returns a new authority list with s applied; auths is not modified.
func (c *CA) apply(auths []*authority, s step, now time.Time) ([]*authority, error) {
	var out []*authority
	switch s {
	case stepPrune:
		for _, a := range auths {
			if a.state == StateActive || now.Before(a.cert.NotAfter) {
				out = append(out, a)
			}
		}
	case stepFresh:
		n, err := c.newAuthority(StateActive, now)
		if err != nil {
			return nil, err
		}
		c.log.Warn("active CA expired (or is self-signed under an upstream); replaced it", "ski", hex.EncodeToString(n.cert.SubjectKeyId))
		for _, a := range auths {
			if a.state == StateActive {
				a = a.retired() // pruned by the next step
			}
			out = append(out, a)
		}
		out = append(out, n)
	case stepPrepare:
		n, err := c.newAuthority(StatePrepared, now)
		if err != nil {
			return nil, err
		}
		out = append(append(out, auths...), n)
	case stepActivate:
		for _, a := range auths {
			switch a.state {
			case StateActive:
				a = a.retired()
			case StatePrepared:
				a = a.activated()
			}
			out = append(out, a)
		}
	default:
		return nil, fmt.Errorf("unknown step %d", s)
	}
	return out, nil
}

// commit persists auths, then publishes them. Callers hold writeMu.
func (c *CA) commit(auths []*authority) error {
	cur := c.state.Load()
	next, err := c.newSnapshot(auths, cur.sequence)
	if err != nil {
		return err
	}
	// JWT keys come and go with their authorities, but a state file from before JWT keys
	// gains them without any certificate changing.
	bundleChanged := !bytes.Equal(next.bundle.DER, cur.bundle.DER) ||
		!slices.Equal(jwtKIDs(next.authorities), jwtKIDs(cur.authorities))
	if bundleChanged {
		if next, err = c.newSnapshot(auths, cur.sequence+1); err != nil {
			return err
		}
	}
	if err := saveState(c.path, c.td, next); err != nil {
		return err
	}
	c.state.Store(next)
	if bundleChanged {
		c.notifyMu.Lock()
		close(c.notify)
		c.notify = make(chan struct{})
		c.notifyMu.Unlock()
		c.log.Info("bundle changed", "sequence", next.sequence, "authorities", len(next.authorities))
	}
	return nil
}

// Prepare generates the next CA now and publishes it (svidctl ca prepare). It fails if one
// is already prepared.
func (c *CA) Prepare() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	auths := c.state.Load().authorities
	for _, a := range auths {
		if a.state == StatePrepared {
			return errors.New("preparing CA: a prepared CA already exists; activate it first")
		}
	}
	next, err := c.apply(auths, stepPrepare, c.clock())
	if err == nil {
		err = c.commit(next)
	}
	if err != nil {
		return fmt.Errorf("preparing CA: %w", err)
	}
	c.log.Info("CA prepared on request")
	c.onStep(stepPrepare.String())
	c.wake()
	return nil
}

// Activate makes the prepared CA the active one now (svidctl ca activate); the previous
// one stays in the bundle until it expires. It fails if none is prepared.
func (c *CA) Activate() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	auths := c.state.Load().authorities
	found := false
	for _, a := range auths {
		found = found || a.state == StatePrepared
	}
	if !found {
		return errors.New("activating CA: no prepared CA; prepare one first")
	}
	next, err := c.apply(auths, stepActivate, c.clock())
	if err == nil {
		err = c.commit(next)
	}
	if err != nil {
		return fmt.Errorf("activating CA: %w", err)
	}
	c.log.Info("CA activated on request")
	c.onStep(stepActivate.String())
	c.wake()
	return nil
}

func (c *CA) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run applies rotation steps as they fall due until ctx is cancelled, then returns nil. It
// sleeps on a real timer until the next due time (or a forced Prepare/Activate), never polls;
// with an injected Config.Clock, drive Rotate directly instead (or run under synctest).
func (c *CA) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var retry backoff
	for {
		wait := maxSleep
		if _, err := c.Rotate(c.clock()); err != nil {
			// Back off (an upstream that is down is not hammered), but while the active CA
			// is valid never sleep past a quarter of its remaining life (at least backoffMin):
			// retries grow dense as its expiry nears, so a recovered upstream is used in time.
			wait = retry.next()
			if left := c.NotAfter().Sub(c.clock()); left > 0 {
				wait = min(wait, max(left/4, backoffMin))
			}
			c.log.Error("CA rotation failed; retrying", "error", err, "retry_in", wait)
		} else {
			retry.reset()
			if d := c.NextChange().Sub(c.clock()); d < wait {
				wait = max(d, 0)
			}
		}
		// Since Go 1.23, Reset on a timer never delivers a stale tick, so no draining.
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-c.kick:
		}
	}
}

func (c *CA) onStep(name string) {
	if c.cfg.OnStep != nil {
		c.cfg.OnStep(name)
	}
}
