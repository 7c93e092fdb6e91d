package fleet

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/mirror"
)

// simHost is what a host runs to follow the registry, without the rest of svidd: its own etcd
// client, etcdstore through the mirror, and its SQLite copy. delivered is when etcd's watch
// delivered the awaited entry to the host's etcdstore, arrived when it reached the SQLite
// copy (UnixNano, 0 until then).
type simHost struct {
	cli                *clientv3.Client
	m                  *mirror.Mirror
	delivered, arrived atomic.Int64
}

var flagCheckEvery = flag.Duration("fleet.checkEvery", 0, "watchers: the simulated hosts' mirror.Config.CheckEvery, how often each probes etcd (0: the mirror's default)")

var flagSimDir = flag.String("fleet.simdir", "", "watchers: directory for the simulated hosts' SQLite copies (default: the test's temp dir; /dev/shm takes the shared disk's fsyncs out, as each real host has its own disk)")

// testWatchers: one entry change, made through a real svidd's admin API, reaches n simulated
// hosts and the real svidd hosts' SDS streams. Latency from the create call's start to each
// host's copy (simulated) or to the Secret on a waiting stream (real).
func testWatchers(t *testing.T, members, n, svidds, changes int) {
	c := etcdtest.Start(t, etcdtest.Options{Members: members})
	var hosts []*host
	for i := range svidds {
		h := newHost(t, fmt.Sprintf("H%d", i), c.Endpoints(), hostOpts{})
		h.start()
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		h.waitReady(30 * time.Second)
	}

	memBefore := selfMem()
	var target atomic.Pointer[string]
	sims := make([]*simHost, n)
	dir := t.TempDir()
	if *flagSimDir != "" {
		var err error
		if dir, err = os.MkdirTemp(*flagSimDir, "fleet-sim-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	ctx, stop := context.WithCancel(context.Background())
	var running sync.WaitGroup
	t.Cleanup(func() {
		stop()
		running.Wait()
		for _, s := range sims {
			if s != nil {
				s.m.Close()
				s.cli.Close()
			}
		}
	})
	startAt := time.Now()
	for i := range sims {
		local, err := store.OpenSQLite(ctx, filepath.Join(dir, fmt.Sprintf("h%04d.db", i)))
		if err != nil {
			t.Fatal(err)
		}
		cli, err := etcdstore.NewClient(etcdstore.Config{Endpoints: c.Endpoints()})
		if err != nil {
			t.Fatal(err)
		}
		s := &simHost{cli: cli}
		m, err := mirror.New(mirror.Config{Local: local, CheckEvery: *flagCheckEvery, Open: func(ctx context.Context) (store.Store, error) {
			st, err := etcdstore.Open(ctx, etcdstore.Config{Client: cli})
			if err == nil {
				st.Watch(func(ch store.Change) {
					if p := target.Load(); p != nil && ch.Op == store.OpCreate && ch.Entry.SPIFFEID.String() == *p {
						s.delivered.CompareAndSwap(0, time.Now().UnixNano())
					}
				})
			}
			return st, err
		}})
		if err != nil {
			t.Fatal(err)
		}
		s.m = m
		m.Watch(func(ch store.Change) {
			if p := target.Load(); p != nil && ch.Op == store.OpCreate && ch.Entry.SPIFFEID.String() == *p {
				s.arrived.CompareAndSwap(0, time.Now().UnixNano())
			}
		})
		sims[i] = s
		running.Go(func() { m.Run(ctx) })
	}
	for _, s := range sims {
		for ok, _ := s.m.Status(); !ok; ok, _ = s.m.Status() {
			if time.Since(startAt) > 5*time.Minute {
				t.Fatal("simulated hosts not following the registry after 5 minutes")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	connected := time.Since(startAt)
	runtime.GC()
	memAfter := selfMem()

	var conns []*envoyConn
	for _, h := range hosts {
		conns = append(conns, &envoyConn{h: h, conn: h.dial()})
	}
	var writer *host
	if len(hosts) > 0 {
		writer = hosts[0]
		baseIdentity(t, writer, hosts...)
	}
	// Without a real host the change is written as a registrar would, with its own client.
	registrar, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer registrar.Close()

	etcds := etcdPIDs(c.Endpoints())
	cpu := func() (self, etcd time.Duration) {
		for _, pid := range etcds {
			etcd += cpuTime(pid)
		}
		return cpuTime(os.Getpid()), etcd
	}
	selfCPU0, etcdCPU0 := cpu()
	changesStart := time.Now()
	var all, delivered, last []time.Duration
	var real []time.Duration
	for k := range changes {
		id := fmt.Sprintf("spiffe://example.org/fan/%d", k)
		for _, s := range sims {
			s.arrived.Store(0)
			s.delivered.Store(0)
		}
		target.Store(&id)
		type got struct {
			at  time.Time
			err error
		}
		results := make(chan got, len(conns))
		for _, ec := range conns {
			s := waitingStream(t, ec.conn, id)
			defer s.Close()
			go func() {
				at, err := awaitSecret(withTimeout(30*time.Second), s, id)
				results <- got{at, err}
			}()
		}
		t0 := time.Now()
		var err error
		if writer != nil {
			_, err = createEntry(ctx, writer, id)
		} else {
			_, err = registrar.CreateEntry(ctx, mustEntry(t, id))
		}
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		var worst time.Duration
		for _, s := range sims {
			for s.arrived.Load() == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("change %d: a simulated host has not seen it after 30 s", k)
				}
				time.Sleep(time.Millisecond)
			}
			d := time.Duration(s.arrived.Load() - t0.UnixNano())
			all = append(all, d)
			delivered = append(delivered, time.Duration(s.delivered.Load()-t0.UnixNano()))
			worst = max(worst, d)
		}
		for range conns {
			r := <-results
			if r.err != nil {
				t.Fatalf("change %d on a real host: %v", k, r.err)
			}
			d := r.at.Sub(t0)
			real = append(real, d)
			worst = max(worst, d)
		}
		last = append(last, worst)
		time.Sleep(500 * time.Millisecond)
	}

	selfCPU1, etcdCPU1 := cpu()
	wall := time.Since(changesStart)
	// What following costs with nothing changing (keepalives, progress notifications), to
	// take out of the per-change figures. Measured after the changes: right after a thousand
	// hosts connect, etcd is still settling.
	idleFor := time.Duration(min(max(n, 10), 1000)) * 10 * time.Millisecond // 10 s for 1,000 hosts; short in the smoke run
	idleSelf0, idleEtcd0 := cpu()
	time.Sleep(idleFor)
	idleSelf1, idleEtcd1 := cpu()
	idleSelfRate := float64(idleSelf1-idleSelf0) / float64(idleFor)
	idleEtcdRate := float64(idleEtcd1-idleEtcd0) / float64(idleFor)
	selfNet := (selfCPU1 - selfCPU0 - time.Duration(idleSelfRate*float64(wall))) / time.Duration(changes)
	etcdNet := (etcdCPU1 - etcdCPU0 - time.Duration(idleEtcdRate*float64(wall))) / time.Duration(changes)
	report(t, "watchers idle CPU (nothing changing): simulated hosts %.1f%%, etcd members %.1f%% of one core", 100*idleSelfRate, 100*idleEtcdRate)
	report(t, "watchers CPU per change beyond idle (%d changes in %v): simulated hosts %v (%v per host), etcd members %v",
		changes, wall.Round(time.Millisecond), selfNet.Round(time.Millisecond), (selfNet / time.Duration(max(n, 1))).Round(time.Microsecond), etcdNet.Round(time.Millisecond))
	report(t, "watchers etcd=%d members, %d simulated hosts + %d svidd, %d changes (all followed after %v)", members, n, svidds, changes, connected.Round(time.Millisecond))
	report(t, "watchers change -> simulated host's etcd watch: %s", dist(delivered))
	report(t, "watchers change -> simulated host's SQLite copy: %s (copies in %s)", dist(all), dir)
	if len(real) > 0 {
		report(t, "watchers change -> Secret on svidd hosts: %s", dist(real))
	}
	report(t, "watchers change -> last of all hosts:     %s", dist(last))
	perHost := float64(memAfter.rss-memBefore.rss) / float64(n)
	perHeap := float64(memAfter.heap-memBefore.heap) / float64(n)
	report(t, "watchers simulated host memory: RSS %.0f KiB each (process %s -> %s), Go heap in use %.0f KiB each, goroutines %d each",
		perHost, mib(memBefore.rss), mib(memAfter.rss), perHeap, (memAfter.goroutines-memBefore.goroutines)/max(n, 1))
	for i, pid := range etcds {
		report(t, "watchers etcd member %d RSS %s", i, mib(rssKiB(pid)))
	}
	for _, h := range hosts {
		report(t, "watchers svidd %s RSS %s", h.name, mib(h.rssKiB()))
	}
	if n > 0 && percentile(all, 99) > time.Second {
		t.Logf("fleet: watchers TARGET MISSED: p99 %v > 1 s", percentile(all, 99))
	}
}

type envoyConn struct {
	h    *host
	conn *grpc.ClientConn
}

type memSample struct {
	rss, heap  int64 // KiB
	goroutines int
}

func selfMem() memSample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{rss: rssKiB(os.Getpid()), heap: int64(ms.HeapInuse / 1024), goroutines: runtime.NumGoroutine()}
}

// mustEntry is an entry for this process's uid.
func mustEntry(t testing.TB, id string) entry.Entry {
	t.Helper()
	e := entry.Entry{SPIFFEID: spiffeid.RequireFromString(id)}
	sels, err := entry.ParseSelectors([]string{callerSelector()})
	if err != nil {
		t.Fatal(err)
	}
	e.Selectors = sels
	return e
}
