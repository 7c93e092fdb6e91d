package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/telemetry"
	"github.com/svidd/svidd/pkg/workload"
)

func newAttestAgent(t *testing.T) *Agent {
	t.Helper()
	att, err := attestor.New(attestor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := newTestCache(t)
	return &Agent{att: att, cache: c, metrics: telemetry.New(telemetry.Config{}), log: slog.New(slog.DiscardHandler)}
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
// unless the caller exec'd or exited in between: then the RPC attests it afresh, which refuses
// a caller that now runs another binary (the connection is bound to the one it connected
// with; ErrNotEntitled for good, never the new binary's selectors) and gives ErrCallerGone
// for one that exited.
func TestPreattest(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
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
		{"exec'd another binary", true, func(t *testing.T, c *proctest.ExecChild) { c.ExecNext(t) }, "", workload.ErrNotEntitled, 2},
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
			// not kept, but a refusal is, without attesting again.
			sel2, err2 := a.attest(ctx, c.Peer, false)
			want := tt.wantCount
			if tt.wantErr == attestor.ErrCallerGone {
				want++
			}
			if tt.wantErr != nil {
				if !errors.Is(err2, tt.wantErr) || sel2 != nil {
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
		return a.record(canceled, c.Peer, false, nil)
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

// TestDigestOnlyWhenAnEntryCouldNeedIt: a caller's binary is hashed only when an entry with a
// unix:sha256 selector could match it on its other selectors; the one that could gets the
// digest, and with it the entry's identity.
func TestDigestOnlyWhenAnEntryCouldNeedIt(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	a := newAttestAgent(t)
	uid := strconv.Itoa(os.Getuid())
	// An entry for another uid's binary: nothing of ours could match it.
	a.cache.load([]entry.Entry{mkEntry(t, "other", "spiffe://example.org/other", 1, "unix:uid:4242", "unix:sha256:"+strings.Repeat("ab", 32))})
	c := proctest.StartExecChild(t, sh, "/bin/sleep 60", true)
	ctx := context.Background()
	sel, err := a.attestCaller(ctx, c.Peer)
	if err != nil {
		t.Fatal(err)
	}
	if hasDigest(sel) || connAttestations(c.Peer).by[1] != nil {
		t.Fatalf("caller no digest entry could match was hashed: %v", sel)
	}
	// An entry for our uid and our binary: now the digest is needed, and matches.
	sum := proctest.SHA256File(t, sh)
	a.cache.apply(store.Change{Op: store.OpCreate, Entry: mkEntry(t, "ours", "spiffe://example.org/ours", 1, "unix:uid:"+uid, "unix:sha256:"+sum)})
	d := proctest.StartExecChild(t, sh, "/bin/sleep 60", true)
	sel, err = a.attestCaller(ctx, d.Peer)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(sel, entry.Selector{Type: "unix", Value: "sha256:" + sum}) {
		t.Fatalf("caller an entry could match by digest was not hashed: %v", sel)
	}
	if ids := a.cache.entitledIDs(sel); len(ids) != 1 || ids[0].String() != "spiffe://example.org/ours" {
		t.Fatalf("entitled to %v", ids)
	}
}

// TestReattestRefusesExecdCaller: a stream opened before any digest entry could match its
// caller is re-attested when one appears; if the caller has meanwhile exec'd the binary that
// entry names, the re-attestation is refused, the stream is not moved into that binary's
// identities, and every later RPC of the connection is refused (logged once).
func TestReattestRefusesExecdCaller(t *testing.T) {
	sleep, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	a := newAttestAgent(t)
	var logs strings.Builder
	a.log = slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil))
	c := proctest.StartExecChildAs(t, &syscall.Credential{Uid: 1001, Gid: 1001}, "/bin/sh", sleep+" 60", true)
	ctx := context.Background()
	a.preattest(ctx, c.Peer)
	waitPreattested(t, c.Peer)
	sub, err := a.cache.subscribe(mustAttest(t, a, c.Peer), nil, func() ([]entry.Selector, error) { return a.attest(ctx, c.Peer, true) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if v := latest(sub); v == nil || !v.Empty() {
		t.Fatalf("caller with no entry got %v", v)
	}
	c.ExecNext(t)
	a.cache.apply(store.Change{Op: store.OpCreate, Entry: mkEntry(t, "sleeper", "spiffe://example.org/sleeper", 1, "unix:sha256:"+proctest.SHA256File(t, sleep))})
	if v := latest(sub); v != nil && !v.Empty() {
		t.Fatalf("stream of an exec'd caller moved into %v", ids(v))
	}
	for range 3 {
		if sel, err := a.attestCaller(ctx, c.Peer); !errors.Is(err, workload.ErrNotEntitled) || sel != nil {
			t.Fatalf("RPC after exec: %v, %v; want ErrNotEntitled", sel, err)
		}
	}
	if n := strings.Count(logs.String(), "refusing a connection"); n != 1 {
		t.Fatalf("refusal logged %d times; want once:\n%s", n, logs.String())
	}
}

func mustAttest(t *testing.T, a *Agent, p *peercred.Peer) []entry.Selector {
	t.Helper()
	sel, err := a.attestCaller(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

// syncWriter serializes writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestNodeSelectorsFromConfigOnly: every caller gets the host's node selectors, from svidd's
// config, and nothing a process does gives it another: a binary whose path spells node
// selectors yields a unix:path selector, never one of type node, so an entry scoped to
// another host or group never matches here.
func TestNodeSelectorsFromConfigOnly(t *testing.T) {
	a := newAttestAgent(t)
	a.node = entry.NodeSelectors("host-1", []string{"web"})
	dir := filepath.Join(proctest.ShortDir(t), "node:name:host-2")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "node:group:db")
	src, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, pidfd := range []bool{true, false} {
		c := proctest.StartExecChild(t, bin, "/bin/sleep 60", pidfd)
		a.preattest(context.Background(), c.Peer)
		sel, err := a.attestCaller(context.Background(), c.Peer)
		if err != nil {
			t.Fatal(err)
		}
		var node []string
		for _, s := range sel {
			if s.Type == entry.TypeNode {
				node = append(node, s.String())
			}
		}
		if want := []string{"node:group:web", "node:name:host-1"}; !slices.Equal(node, want) {
			t.Fatalf("pidfd %v: node selectors %v, want exactly the config's %v", pidfd, node, want)
		}
		if got := pathOf(sel); got != bin {
			t.Fatalf("pidfd %v: unix:path %q, want %q", pidfd, got, bin)
		}
		if !slices.IsSortedFunc(sel, entry.Selector.Compare) {
			t.Fatalf("selectors not normalized: %v", sel)
		}
		for _, spec := range [][]string{{"node:name:host-2"}, {"node:group:db"}, {"node:name:host-1", "node:group:db"}} {
			e := entry.Entry{Selectors: sels(t, spec...)}
			if entry.Matches(e, sel) {
				t.Fatalf("an entry for %v matches a caller on host-1 (selectors %v)", spec, sel)
			}
		}
		if e := (entry.Entry{Selectors: sels(t, "node:name:host-1", "node:group:web")}); !entry.Matches(e, sel) {
			t.Fatalf("an entry for host-1's name and group does not match its caller (selectors %v)", sel)
		}
	}
}
