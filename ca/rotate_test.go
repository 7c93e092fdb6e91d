package ca

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestRotationSequence walks one CA through a whole rotation cycle with explicit times: with
// a 6h CA TTL the next CA is prepared at 3h, activated at 5h, and the old one pruned at 6h.
func TestRotationSequence(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	first := c.Authorities()[0]
	seq := c.Bundle().Sequence
	if seq != 1 {
		t.Fatalf("first sequence %d", seq)
	}
	oldSVID, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}

	var prepared AuthorityInfo
	steps := []struct {
		name       string
		at         time.Duration
		changed    bool
		bundleBump bool
		wantStates []State // oldest first
		check      func(t *testing.T, now time.Time)
	}{
		{name: "nothing before half", at: 3*time.Hour - 6*time.Second, wantStates: []State{StateActive}},
		{name: "prepare at half", at: 3 * time.Hour, changed: true, bundleBump: true, wantStates: []State{StateActive, StatePrepared},
			check: func(t *testing.T, now time.Time) {
				a := c.Authorities()
				prepared = a[1]
				if a[0].SKI != first.SKI || !prepared.NotAfter.Equal(now.Add(testCA)) {
					t.Fatalf("authorities %+v", a)
				}
				// Still signed by the first CA; verifies against the two-root bundle.
				s, err := c.MintX509SVID(wlID, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if root := verify(t, s, c.Bundle(), now); !root.Equal(first.Certificate) {
					t.Fatal("signed by the prepared CA before activation")
				}
			}},
		{name: "idempotent", at: 3 * time.Hour, wantStates: []State{StateActive, StatePrepared}},
		{name: "nothing before five sixths", at: 5*time.Hour - 3*time.Second, wantStates: []State{StateActive, StatePrepared}},
		{name: "activate at five sixths", at: 5 * time.Hour, changed: true, wantStates: []State{StateOld, StateActive},
			check: func(t *testing.T, now time.Time) {
				a := c.Authorities()
				if a[0].SKI != first.SKI || a[1].SKI != prepared.SKI || !c.NotAfter().Equal(prepared.NotAfter) {
					t.Fatalf("authorities %+v", a)
				}
				s, err := c.MintX509SVID(wlID, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if root := verify(t, s, c.Bundle(), now); !root.Equal(prepared.Certificate) {
					t.Fatal("new SVID does not chain to the new CA")
				}
				// An SVID from the old CA still verifies against the current bundle.
				if root := verify(t, oldSVID, c.Bundle(), oldSVID.NotAfter.Add(-time.Second)); !root.Equal(first.Certificate) {
					t.Fatal("old SVID does not chain to the old CA")
				}
			}},
		// The second CA was prepared at 3h (NotBefore 3h-10s, life 6h10s), so its own half
		// life falls at 6h-5s, just before the first CA expires: in steady state the bundle
		// holds two CAs, three for a few seconds.
		{name: "old kept until it expires", at: 6*time.Hour - 6*time.Second, wantStates: []State{StateOld, StateActive}},
		{name: "third CA prepared at the second's half", at: 6*time.Hour - 5*time.Second, changed: true, bundleBump: true,
			wantStates: []State{StateOld, StateActive, StatePrepared}},
		{name: "old pruned at expiry", at: 6 * time.Hour, changed: true, bundleBump: true, wantStates: []State{StateActive, StatePrepared},
			check: func(t *testing.T, now time.Time) {
				if a := c.Authorities(); a[0].SKI != prepared.SKI {
					t.Fatalf("authorities %+v", a)
				}
				s, err := c.MintX509SVID(wlID, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if root := verify(t, s, c.Bundle(), now); !root.Equal(prepared.Certificate) {
					t.Fatal("not signed by the second CA")
				}
			}},
	}

	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			now := t0.Add(st.at)
			clk.Set(now)
			ch := c.BundleChanged()
			changed, err := c.Rotate(now)
			if err != nil {
				t.Fatal(err)
			}
			if changed != st.changed {
				t.Fatalf("changed %v, want %v", changed, st.changed)
			}
			var states []State
			for _, a := range c.Authorities() {
				states = append(states, a.State)
			}
			if !slices.Equal(states, st.wantStates) {
				t.Fatalf("states %v, want %v", states, st.wantStates)
			}
			b := c.Bundle()
			if len(b.X509Authorities) != len(st.wantStates) {
				t.Fatalf("bundle has %d authorities, want %d", len(b.X509Authorities), len(st.wantStates))
			}
			if st.bundleBump {
				if b.Sequence != seq+1 || !closed(ch) {
					t.Fatalf("sequence %d (was %d), notified %v", b.Sequence, seq, closed(ch))
				}
			} else if b.Sequence != seq || closed(ch) {
				t.Fatalf("sequence %d (was %d), notified %v; want no bundle change", b.Sequence, seq, closed(ch))
			}
			seq = b.Sequence
			if st.check != nil {
				st.check(t, now)
			}
		})
	}

	t.Run("second cycle follows the new CA's own times", func(t *testing.T) {
		act := activateAt(&authority{cert: prepared.Certificate})
		if !c.NextChange().Equal(act) {
			t.Fatalf("NextChange %s, want %s", c.NextChange(), act)
		}
		if changed, _ := c.Rotate(act.Add(-time.Nanosecond)); changed {
			t.Fatal("activated early")
		}
		if changed, _ := c.Rotate(act); !changed || skis(c)[StateOld][0] != prepared.SKI || c.Bundle().Sequence != seq {
			t.Fatalf("not activated at %s: %+v", act, c.Authorities())
		}
	})
}

func TestNextDue(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	nb := t0.Add(-10 * time.Second)
	life := testCA + 10*time.Second
	prep := nb.Add(life / 2)
	want := []time.Time{
		prep,                          // prepare
		t0.Add(testCA).Add(-life / 6), // activate
		prep.Add(-10 * time.Second).Add(life / 2), // prepare the third, at the second's half
		t0.Add(testCA), // prune the first CA
	}
	for i, w := range want {
		got := c.NextChange()
		if !got.Equal(w) {
			t.Fatalf("step %d: NextChange %s, want %s", i, got, w)
		}
		if changed, err := c.Rotate(got.Add(-time.Nanosecond)); changed || err != nil {
			t.Fatalf("step %d: changed before due (%v)", i, err)
		}
		if changed, err := c.Rotate(got); !changed || err != nil {
			t.Fatalf("step %d: not changed when due (%v)", i, err)
		}
	}
}

func TestRestartMidRotation(t *testing.T) {
	tests := []struct {
		name      string
		stopAt    time.Duration // last Rotate before the restart
		restartAt time.Duration
		want      []State
		// sameAsBefore: the authorities after restart are exactly those before it.
		sameAsBefore bool
	}{
		{"restart while prepared", 3 * time.Hour, 3*time.Hour + time.Minute, []State{StateActive, StatePrepared}, true},
		{"restart while old kept", 5 * time.Hour, 5*time.Hour + time.Minute, []State{StateOld, StateActive}, true},
		{"down across activation", 3 * time.Hour, 5*time.Hour + 30*time.Minute, []State{StateOld, StateActive}, false},
		{"down across activation and prune", 3 * time.Hour, 6*time.Hour + time.Minute, []State{StateActive, StatePrepared}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &fakeClock{t: t0}
			c := newTestCA(t, dir, clk)
			if _, err := c.Rotate(t0.Add(3 * time.Hour)); err != nil {
				t.Fatal(err)
			}
			preparedSKI := skis(c)[StatePrepared][0]
			if _, err := c.Rotate(t0.Add(tt.stopAt)); err != nil {
				t.Fatal(err)
			}
			before := c.Authorities()
			beforeSeq := c.Bundle().Sequence

			clk.Set(t0.Add(tt.restartAt))
			r := newTestCA(t, dir, clk)
			var states []State
			for _, a := range r.Authorities() {
				states = append(states, a.State)
			}
			if !slices.Equal(states, tt.want) {
				t.Fatalf("states %v, want %v", states, tt.want)
			}
			// Whatever happened, the prepared CA (published at 3h) is the one that took over.
			if got := skis(r)[StateActive][0]; tt.stopAt >= 5*time.Hour || !tt.sameAsBefore {
				if got != preparedSKI {
					t.Fatalf("active %s, want the prepared %s", got, preparedSKI)
				}
			}
			if tt.sameAsBefore {
				if !slices.EqualFunc(before, r.Authorities(), func(a, b AuthorityInfo) bool { return a.SKI == b.SKI && a.State == b.State }) ||
					r.Bundle().Sequence != beforeSeq {
					t.Fatalf("state changed across restart: %+v -> %+v", before, r.Authorities())
				}
			} else if r.Bundle().Sequence < beforeSeq {
				t.Fatalf("sequence went back: %d -> %d", beforeSeq, r.Bundle().Sequence)
			}
			s, err := r.MintX509SVID(wlID, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			verify(t, s, r.Bundle(), clk.Now())
		})
	}
}

func TestExpiredAtStart(t *testing.T) {
	t.Run("no prepared CA: fresh root", func(t *testing.T) {
		dir := t.TempDir()
		clk := &fakeClock{t: t0}
		c := newTestCA(t, dir, clk)
		old := c.Authorities()[0]
		now := t0.Add(7 * time.Hour)
		clk.Set(now)
		r := newTestCA(t, dir, clk)
		a := r.Authorities()
		if len(a) != 1 || a[0].State != StateActive || a[0].SKI == old.SKI || !a[0].NotAfter.Equal(now.Add(testCA)) {
			t.Fatalf("authorities %+v", a)
		}
		if r.Bundle().Sequence != 2 {
			t.Fatalf("sequence %d", r.Bundle().Sequence)
		}
		s, err := r.MintX509SVID(wlID, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		verify(t, s, r.Bundle(), now)
	})
	t.Run("prepared CA still valid: it takes over", func(t *testing.T) {
		dir := t.TempDir()
		clk := &fakeClock{t: t0}
		c := newTestCA(t, dir, clk)
		if _, err := c.Rotate(t0.Add(3 * time.Hour)); err != nil {
			t.Fatal(err)
		}
		preparedSKI := skis(c)[StatePrepared][0]
		// Down until the first CA expired and past the second's half life.
		now := t0.Add(6*time.Hour + 10*time.Minute)
		clk.Set(now)
		r := newTestCA(t, dir, clk)
		got := skis(r)
		if len(got[StateActive]) != 1 || got[StateActive][0] != preparedSKI || len(got[StatePrepared]) != 1 || len(got[StateOld]) != 0 {
			t.Fatalf("authorities %+v", r.Authorities())
		}
	})
}

func TestForcedPrepareActivate(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	first := c.Authorities()[0].SKI
	clk.Set(t0.Add(time.Hour))
	if err := c.Activate(); err == nil || !strings.Contains(err.Error(), "no prepared CA") {
		t.Fatalf("Activate without prepared: %v", err)
	}
	ch := c.BundleChanged()
	if err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) || c.Bundle().Sequence != 2 || len(c.Bundle().X509Authorities) != 2 {
		t.Fatalf("bundle after Prepare: seq %d, %d authorities", c.Bundle().Sequence, len(c.Bundle().X509Authorities))
	}
	if err := c.Prepare(); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Prepare: %v", err)
	}
	preparedSKI := skis(c)[StatePrepared][0]
	if err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	if got := skis(c); got[StateActive][0] != preparedSKI || len(got[StateOld]) != 1 {
		t.Fatalf("after Activate %+v", got)
	}
	s, err := c.MintX509SVID(wlID, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, s, c.Bundle(), clk.Now())
	// The first CA stays published until its own expiry, whatever else happened meanwhile
	// (the forced CA's successor is prepared and activated on the forced CA's schedule).
	has := func(ski string) bool {
		return slices.ContainsFunc(c.Authorities(), func(a AuthorityInfo) bool { return a.SKI == ski })
	}
	if _, err := c.Rotate(t0.Add(testCA - time.Second)); err != nil || !has(first) {
		t.Fatalf("first CA gone before it expired: %+v (%v)", c.Authorities(), err)
	}
	if changed, _ := c.Rotate(t0.Add(testCA)); !changed || has(first) {
		t.Fatalf("first CA not pruned: %+v", c.Authorities())
	}
}

// TestRun drives the real loop on synctest's fake clock: it must sleep until each step is
// due, apply it, wake on a forced step, and return nil on cancel.
func TestRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		c, err := New(Config{TrustDomain: td, Dir: t.TempDir(), CATTL: testCA})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()

		count := func() int { synctest.Wait(); return len(c.Authorities()) }
		ch := c.BundleChanged()
		time.Sleep(3*time.Hour - 10*time.Second)
		if n := count(); n != 1 || closed(ch) {
			t.Fatalf("%d authorities before half life", n)
		}
		time.Sleep(10 * time.Second)
		if n := count(); n != 2 || !closed(ch) {
			t.Fatalf("%d authorities at half life, notified %v", n, closed(ch))
		}
		time.Sleep(2*time.Hour + time.Second)
		if got := skis(c); len(got[StateOld]) != 1 {
			t.Fatalf("not activated at 5h: %+v", c.Authorities())
		}
		time.Sleep(time.Hour)
		if got := skis(c); len(got[StateOld]) != 0 || len(got[StatePrepared]) != 1 {
			t.Fatalf("after the old CA expired: %+v", c.Authorities())
		}
		// A forced Activate wakes Run, which then follows the new schedule.
		if err := c.Activate(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before := skis(c)
		due := c.NextChange()
		time.Sleep(due.Sub(time.Now()) - time.Second)
		if got := skis(c); !equalSKIs(got, before) {
			t.Fatalf("changed before %s: %+v", due.Sub(start), c.Authorities())
		}
		time.Sleep(2 * time.Second)
		if got := skis(c); equalSKIs(got, before) {
			t.Fatalf("nothing happened at %s: %+v", due.Sub(start), c.Authorities())
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run returned %v", err)
		}
	})
}

func TestRunReturnsOnCancel(t *testing.T) {
	c := newTestCA(t, t.TempDir(), &fakeClock{t: t0})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func equalSKIs(a, b map[State][]string) bool {
	for _, st := range []State{StateActive, StatePrepared, StateOld} {
		if !slices.Equal(a[st], b[st]) {
			return false
		}
	}
	return true
}
