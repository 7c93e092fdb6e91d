package fleet

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/mirror"
	"github.com/svidd/svidd/test/envoy"
)

var flagCPUProfile = flag.String("fleet.cpuprofile", "", "join: CPU profile of the in-process mirror's first sync, written here")

// testJoin: etcd holds -fleet.entries entries (one of them for this process's uid); a host
// with a fresh data dir starts, and the Envoy client, polling the socket from before the
// start, times process start -> first SVID. Then the same host restarts on its warm copy.
// Finally the mirror alone (in this process) syncs a fresh copy, to say where the time goes.
func testJoin(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: *flagMembers})
	ctx := context.Background()
	reg, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()

	n := *flagEntries
	target := fmt.Sprintf("spiffe://example.org/join/%d", n/2)
	fillStart := time.Now()
	work := make(chan int)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				id := fmt.Sprintf("spiffe://example.org/join/%d", i)
				// Every entry but the target is for a caller that never connects.
				sel := fmt.Sprintf("unix:uid:%d", 2000000+i)
				if id == target {
					sel = callerSelector()
				}
				sels, err := entry.ParseSelectors([]string{sel})
				if err == nil {
					_, err = reg.CreateEntry(ctx, entry.Entry{SPIFFEID: mustID(id), Selectors: sels})
				}
				if err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	report(t, "join etcd=%d members, %d entries written in %v", *flagMembers, n, time.Since(fillStart).Round(time.Millisecond))

	var cold, warm, coldCPU, warmCPU []time.Duration
	for rep := range *flagJoins {
		h := newHost(t, fmt.Sprintf("J%d", rep), c.Endpoints(), hostOpts{logLevel: "info"})
		d, dc := firstSVID(t, h, target)
		cold, coldCPU = append(cold, d), append(coldCPU, dc)
		h.stop()
		w, wc := firstSVID(t, h, target)
		warm, warmCPU = append(warm, w), append(warmCPU, wc)
		report(t, "join rep %d: fresh data dir %v (svidd CPU %v), warm restart %v (CPU %v), svidd RSS %s", rep,
			d.Round(time.Millisecond), dc, w.Round(time.Millisecond), wc, mib(h.rssKiB()))
		h.stop()
	}
	report(t, "join fresh data dir, start -> first SVID: %s; svidd CPU until then: %s", dist(cold), dist(coldCPU))
	report(t, "join warm copy,      start -> first SVID: %s; svidd CPU until then: %s", dist(warm), dist(warmCPU))
	if m := median(cold); m > time.Second {
		t.Logf("fleet: join TARGET MISSED: median %v > 1 s", m)
	}

	// The mirror alone: what the first sync of a fresh copy costs, without svidd around it.
	for rep := range 3 {
		dir := t.TempDir()
		local, err := store.OpenSQLite(ctx, filepath.Join(dir, "svidd.db"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mirror.New(mirror.Config{Local: local, Open: func(ctx context.Context) (store.Store, error) {
			return etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints()})
		}})
		if err != nil {
			t.Fatal(err)
		}
		if rep == 0 && *flagCPUProfile != "" {
			f, err := os.Create(*flagCPUProfile)
			if err != nil {
				t.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				t.Fatal(err)
			}
		}
		mctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		start := time.Now()
		go func() { m.Run(mctx); close(done) }()
		for ok, _ := m.Status(); !ok; ok, _ = m.Status() {
			if time.Since(start) > 5*time.Minute {
				t.Fatal("mirror not in sync after 5 minutes")
			}
			time.Sleep(time.Millisecond)
		}
		synced := time.Since(start)
		if rep == 0 && *flagCPUProfile != "" {
			pprof.StopCPUProfile()
		}
		stop()
		<-done
		m.Close()
		report(t, "join mirror alone (in process): fresh copy of %d entries in sync after %v", n, synced.Round(time.Millisecond))
	}
}

// firstSVID starts h and returns the time from its process start to the target's Secret on a
// stream the client opens as soon as the socket accepts it (Envoy's retry, with a 5 ms base
// so that the client's backoff does not dominate what is measured), and the CPU time svidd
// used until then: on a loaded machine, what the start costs whatever the wait for a core.
func firstSVID(t *testing.T, h *host, target string) (time.Duration, time.Duration) {
	t.Helper()
	r, err := envoy.NewReconnecting(envoy.ReconnectConfig{SocketPath: h.api, Node: node, Names: []string{target}, BaseBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h.start()
	for {
		resp, err := r.Recv(ctx)
		if err != nil {
			t.Fatalf("host %s: no SVID for %s: %v; log:\n%s", h.name, target, err, h.logTail())
		}
		if resp.Get(target) != nil {
			return time.Since(h.startedAt), cpuTime(h.cmd.Process.Pid)
		}
	}
}
