package agent

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/telemetry"
)

func newAttestAgent(t *testing.T) *Agent {
	t.Helper()
	att, err := attestor.New(attestor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := newTestCache(t)
	return &Agent{att: att, cache: c, metrics: telemetry.New(telemetry.Config{})}
}

// attestations returns how many attestations the agent ran (ok and failed).
func attestations(t *testing.T, a *Agent) uint64 {
	t.Helper()
	mfs, err := a.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == "svidd_agent_attestation_duration_seconds" {
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// waitPreattested waits until the attestation preattest started is done.
func waitPreattested(t *testing.T, p *peercred.Peer) {
	t.Helper()
	select {
	case <-connAttestations(p).current(false).done:
	case <-time.After(10 * time.Second):
		t.Fatal("accept-time attestation did not finish")
	}
}

func pathOf(sels []entry.Selector) string {
	for _, s := range sels {
		if v, ok := strings.CutPrefix(s.String(), "unix:path:"); ok {
			return v
		}
	}
	return ""
}

// TestPreattest: a connection attested at accept serves its first RPC without attesting again,
// unless the caller exec'd or exited in between: then the RPC gets what attesting it at that
// moment gives (the new binary's selectors, or ErrCallerGone), as without preattest.
func TestPreattest(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		pidfd     bool
		between   func(t *testing.T, c *proctest.ExecChild)
		wantPath  string // "" with wantErr
		wantErr   error
		wantCount uint64 // attestations after the first RPC
	}{
		{"unchanged", true, func(*testing.T, *proctest.ExecChild) {}, sh, nil, 1},
		{"exec'd another binary", true, func(t *testing.T, c *proctest.ExecChild) { c.ExecNext(t) }, sleep, nil, 2},
		{"exited", true, func(t *testing.T, c *proctest.ExecChild) {
			c.Kill()
		}, "", attestor.ErrCallerGone, 2},
		// Without a pidfd nothing is done at accept: the first RPC attests.
		{"no pidfd", false, func(*testing.T, *proctest.ExecChild) {}, sh, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAttestAgent(t)
			c := proctest.StartExecChild(t, "/bin/sh", "/bin/sleep 60", tt.pidfd)
			ctx := context.Background()
			a.preattest(ctx, c.Peer)
			if tt.pidfd {
				waitPreattested(t, c.Peer)
				if n := attestations(t, a); n != 1 {
					t.Fatalf("%d attestations at accept, want 1", n)
				}
			} else if n := attestations(t, a); n != 0 {
				t.Fatalf("%d attestations at accept without a pidfd, want 0", n)
			}
			tt.between(t, c)
			sel, err := a.attest(ctx, c.Peer, false)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || sel != nil {
					t.Fatalf("attest = %v, %v; want %v", sel, err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if got := pathOf(sel); got != tt.wantPath {
				t.Fatalf("attested path %q, want %q", got, tt.wantPath)
			}
			if n := attestations(t, a); n != tt.wantCount {
				t.Fatalf("%d attestations after the first RPC, want %d", n, tt.wantCount)
			}
			// Later RPCs of the connection reuse a successful attestation; a failed one is
			// not kept.
			sel2, err2 := a.attest(ctx, c.Peer, false)
			want := tt.wantCount
			if tt.wantErr != nil {
				want++
				if !errors.Is(err2, tt.wantErr) {
					t.Fatalf("second attest: %v", err2)
				}
			} else if err2 != nil || !slices.Equal(sel2, sel) {
				t.Fatalf("second attest = %v, %v; want %v", sel2, err2, sel)
			}
			if n := attestations(t, a); n != want {
				t.Fatalf("%d attestations after the second RPC, want %d", n, want)
			}
		})
	}
}

// TestAttestConcurrentFirstRPCs: the RPCs that arrive together on a connection, with an
// attestation started at accept or not, share one attestation.
func TestAttestConcurrentFirstRPCs(t *testing.T) {
	for _, pre := range []bool{true, false} {
		t.Run("preattest="+strconv.FormatBool(pre), func(t *testing.T) {
			a := newAttestAgent(t)
			c := proctest.StartExecChild(t, "/bin/sh", "/bin/sleep 60", true)
			ctx := context.Background()
			if pre {
				a.preattest(ctx, c.Peer)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 32)
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := a.attest(ctx, c.Peer, false)
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if n := attestations(t, a); n != 1 {
				t.Fatalf("%d attestations for 32 concurrent RPCs, want 1", n)
			}
		})
	}
}

// TestAttestWaiterOutlivesCanceledMaker: an RPC waiting on an attestation another RPC makes is
// not failed by that RPC going away.
func TestAttestWaiterOutlivesCanceledMaker(t *testing.T) {
	a := newAttestAgent(t)
	c := proctest.StartExecChild(t, "/bin/sh", "/bin/sleep 60", true)
	st := connAttestations(c.Peer)
	ca := st.current(false)
	// A maker whose context is already canceled: its attestation fails with that error.
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	started := make(chan struct{})
	release := make(chan struct{})
	go ca.run(func() (*attestor.Attestation, error) {
		close(started)
		<-release
		return a.record(canceled, c.Peer, false)
	})
	<-started
	res := make(chan error, 1)
	go func() {
		_, err := a.attest(context.Background(), c.Peer, false)
		res <- err
	}()
	close(release)
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("waiting RPC failed with the maker's cancellation: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting RPC never returned")
	}
}
