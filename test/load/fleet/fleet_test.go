package fleet

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/test/envoy"
)

var (
	flagRun      = flag.String("fleet", "smoke", "scenarios to run, comma-separated: hop, watchers, join, outage, smoke")
	flagMembers  = flag.Int("fleet.members", 3, "etcd members (1 or 3)")
	flagReps     = flag.Int("fleet.reps", 200, "hop: repetitions of each of the cross-host and same-host measurements")
	flagWatchers = flag.Int("fleet.watchers", 1000, "watchers: simulated hosts (etcdstore + mirror + SQLite copy, own etcd client each)")
	flagSvidds   = flag.Int("fleet.svidds", 2, "watchers: real svidd hosts beside the simulated ones")
	flagChanges  = flag.Int("fleet.changes", 20, "watchers: entry changes timed")
	flagEntries  = flag.Int("fleet.entries", 10000, "join: entries in the registry before the host joins")
	flagJoins    = flag.Int("fleet.joins", 5, "join: fresh joins (each followed by a warm restart)")
	flagOutage   = flag.Duration("fleet.outage", 150*time.Second, "outage: how long the whole etcd cluster is stopped")
	flagTTL      = flag.Duration("fleet.ttl", 10*time.Second, "outage: SVID TTL")
	flagIDs      = flag.Int("fleet.ids", 20, "outage: identities held by the Envoy client on each host")
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// TestFleet runs the scenarios -fleet names. Without flags it runs only the smoke scenario,
// which keeps the tool working within a few seconds of make test.
func TestFleet(t *testing.T) {
	scenarios := map[string]func(*testing.T){
		"hop":      testHop,
		"watchers": func(t *testing.T) { testWatchers(t, *flagMembers, *flagWatchers, *flagSvidds, *flagChanges) },
		"join":     testJoin,
		"outage":   testOutage,
		"smoke":    func(t *testing.T) { testWatchers(t, 1, 10, 0, 3) },
	}
	for name := range strings.SplitSeq(*flagRun, ",") {
		name = strings.TrimSpace(name)
		fn, ok := scenarios[name]
		if !ok {
			t.Fatalf("-fleet %q: unknown scenario (hop, watchers, join, outage, smoke)", name)
		}
		t.Run(name, fn)
	}
}

// report prints one result line; the doc's tables are made of them.
func report(t testing.TB, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf("fleet: "+format, args...)
	t.Log(line)
}

// percentile is the nearest-rank p-th percentile of ds (p in (0, 100]), or -1 if empty.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// dist is "n=… p50 … p90 … p99 … max …" in milliseconds.
func dist(ds []time.Duration) string {
	f := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("n=%d p50=%s p90=%s p99=%s max=%s ms", len(ds), f(percentile(ds, 50)), f(percentile(ds, 90)), f(percentile(ds, 99)), f(percentile(ds, 100)))
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 50) }

// callerSelector is the selector that matches this test process as an SDS caller.
func callerSelector() string { return fmt.Sprintf("unix:uid:%d", os.Getuid()) }

var node = envoy.NewNode("fleetbench")

// waitingStream opens an SDS stream asking for id (not yet registered) and ROOTCA, and
// returns once ROOTCA has arrived: svidd then holds the stream and remembers id.
func waitingStream(t testing.TB, conn grpc.ClientConnInterface, id string) *envoy.SotW {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := envoy.NewSotW(context.Background(), conn, node, []string{id, "ROOTCA"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv(ctx)
	if err != nil {
		s.Close()
		t.Fatalf("first response for %s: %v", id, err)
	}
	if r.Get("ROOTCA") == nil || r.Get(id) != nil {
		s.Close()
		t.Fatalf("first response for %s holds %v; want ROOTCA only", id, r.Names())
	}
	return s
}

// awaitSecret receives until a response holds id; it returns the arrival time.
func awaitSecret(ctx context.Context, s *envoy.SotW, id string) (time.Time, error) {
	for {
		r, err := s.Recv(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("waiting for %s: %w", id, err)
		}
		if r.Get(id) != nil {
			return time.Now(), nil
		}
	}
}

// createEntry registers id for this process through h's admin API.
func createEntry(ctx context.Context, h *host, id string) (admin.Entry, error) {
	return h.client.CreateEntry(ctx, admin.Entry{SPIFFEID: id, Selectors: []string{callerSelector()}})
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }
