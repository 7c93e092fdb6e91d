package mirror_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/mirror"
)

// host is one svidd's view of the registry: its own SQLite copy, reaching etcd through its
// own proxy so a test can cut it off alone.
type host struct {
	name  string // its node name
	m     *mirror.Mirror
	local *store.SQLite
	proxy *etcdtest.Proxy
	stop  func()
}

func startHost(t *testing.T, c *etcdtest.Cluster, dbPath string, opts ...func(*mirror.Config)) *host {
	t.Helper()
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	return startHostVia(t, p, dbPath, opts...)
}

func startHostVia(t *testing.T, p *etcdtest.Proxy, dbPath string, opts ...func(*mirror.Config)) *host {
	t.Helper()
	local, err := store.OpenSQLite(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := mirror.Config{
		Local: local,
		Open: func(ctx context.Context) (store.Store, error) {
			return etcdstore.Open(ctx, etcdstore.Config{Endpoints: []string{"http://" + p.Addr()}})
		},
		CheckEvery: 100 * time.Millisecond,
		Timeout:    time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	m, err := mirror.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	h := &host{name: cfg.NodeName, m: m, local: local, proxy: p}
	var once bool
	h.stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		local.Close()
	}
	t.Cleanup(h.stop)
	return h
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 15 s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func reachable(h *host) bool { ok, _ := h.m.Status(); return ok }

func has(h *host, id string) bool {
	_, err := h.m.GetEntry(context.Background(), id)
	return err == nil
}

func newEntry(path string) entry.Entry {
	return entry.Entry{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path), Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}}
}

// TestHostsFollowRegistry: an entry written on one host is in its own copy at once and
// reaches the other host; a host cut off keeps serving its copy, refuses writes at once, and
// catches up (creates and deletes) when the registry is back.
func TestHostsFollowRegistry(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	a := startHost(t, c, filepath.Join(t.TempDir(), "a.db"))
	b := startHost(t, c, filepath.Join(t.TempDir(), "b.db"))
	eventually(t, "both hosts reach the registry", func() bool { return reachable(a) && reachable(b) })

	ctx := context.Background()
	gone, err := a.m.CreateEntry(ctx, newEntry("/gone"))
	if err != nil {
		t.Fatal(err)
	}
	if !has(a, gone.ID) {
		t.Fatal("a write is not in the writing host's copy when it returns")
	}
	eventually(t, "the entry reaches the other host", func() bool { return has(b, gone.ID) })
	var mu sync.Mutex
	var heard []store.Change
	cancel := b.m.Watch(func(ch store.Change) {
		mu.Lock()
		heard = append(heard, ch)
		mu.Unlock()
	})
	defer cancel()

	b.proxy.Cut()
	eventually(t, "b notices the registry is unreachable", func() bool { return !reachable(b) })
	start := time.Now()
	_, err = b.m.CreateEntry(ctx, newEntry("/refused"))
	if !errors.Is(err, mirror.ErrUnreachable) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("write while unreachable: %v after %s; want ErrUnreachable at once", err, time.Since(start))
	}
	if !has(b, gone.ID) {
		t.Fatal("b stopped serving its copy while the registry is unreachable")
	}
	if err := b.m.Ping(ctx); err != nil {
		t.Fatalf("Ping (readiness) while unreachable: %v", err)
	}
	added, err := a.m.CreateEntry(ctx, newEntry("/added"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.DeleteEntry(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}

	b.proxy.Restore()
	eventually(t, "b catches up", func() bool { return has(b, added.ID) && !has(b, gone.ID) && reachable(b) })
	mu.Lock()
	defer mu.Unlock()
	if len(heard) != 2 || heard[0].Op != store.OpCreate || heard[1].Op != store.OpDelete {
		t.Fatalf("b's watchers heard %+v, want the create then the delete", heard)
	}
	if _, err := b.m.CreateEntry(ctx, newEntry("/after")); err != nil {
		t.Fatalf("write after the registry is back: %v", err)
	}
}

// TestStartWhileRegistryDown: a host that starts while etcd is unreachable serves the copy it
// has, and when etcd comes back drops what was deleted meanwhile.
func TestStartWhileRegistryDown(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	db := filepath.Join(t.TempDir(), "h.db")
	h := startHost(t, c, db)
	eventually(t, "reachable", func() bool { return reachable(h) })
	ctx := context.Background()
	kept, err := h.m.CreateEntry(ctx, newEntry("/kept"))
	if err != nil {
		t.Fatal(err)
	}
	gone, err := h.m.CreateEntry(ctx, newEntry("/gone"))
	if err != nil {
		t.Fatal(err)
	}
	h.stop()

	// Meanwhile, another host deletes one.
	other := startHost(t, c, filepath.Join(t.TempDir(), "o.db"))
	eventually(t, "other reachable", func() bool { return reachable(other) })
	if _, err := other.m.DeleteEntry(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}

	h.proxy.Cut()
	h2 := startHostVia(t, h.proxy, db)
	time.Sleep(300 * time.Millisecond)
	if reachable(h2) {
		t.Fatal("reachable through a cut proxy")
	}
	if !has(h2, kept.ID) || !has(h2, gone.ID) {
		t.Fatal("a host started while the registry is down does not serve its copy")
	}
	h.proxy.Restore()
	eventually(t, "the copy drops the entry deleted meanwhile", func() bool { return reachable(h2) && !has(h2, gone.ID) && has(h2, kept.ID) })
}

// TestReachabilityBetweenProbes: with the probe all but off (CheckEvery an hour), a host
// still notices within seconds that its connection to the registry is gone (the registry
// store's connection state, checked every second for free), refuses writes at once, and is
// reachable again soon after the registry is back (an unreachable registry is probed every
// second).
func TestReachabilityBetweenProbes(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	h := startHost(t, c, filepath.Join(t.TempDir(), "h.db"), func(c *mirror.Config) { c.CheckEvery = time.Hour })
	eventually(t, "reachable", func() bool { return reachable(h) })
	ctx := context.Background()
	if _, err := h.m.CreateEntry(ctx, newEntry("/before")); err != nil {
		t.Fatal(err)
	}
	h.proxy.Cut()
	start := time.Now()
	eventually(t, "the host notices the registry is gone without a probe", func() bool { return !reachable(h) })
	t.Logf("unreachable noticed after %s", time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("unreachable noticed after %s, want within a few seconds", d)
	}
	start = time.Now()
	if _, err := h.m.CreateEntry(ctx, newEntry("/refused")); !errors.Is(err, mirror.ErrUnreachable) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("write while unreachable: %v after %s; want ErrUnreachable at once", err, time.Since(start))
	}
	h.proxy.Restore()
	start = time.Now()
	eventually(t, "reachable again", func() bool { return reachable(h) })
	t.Logf("reachable again after %s", time.Since(start).Round(time.Millisecond))
	if _, err := h.m.CreateEntry(ctx, newEntry("/after")); err != nil {
		t.Fatalf("write after the registry is back: %v", err)
	}
}
