package fleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/fleet"
)

const recPrefix = "/svidd/"

func client(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// progress is a host's Progress, set by the test.
type progress struct {
	mu sync.Mutex
	p  fleet.Progress
}

func (p *progress) get() fleet.Progress { p.mu.Lock(); defer p.mu.Unlock(); return p.p }
func (p *progress) set(v fleet.Progress) {
	p.mu.Lock()
	p.p = v
	p.mu.Unlock()
}

// runNodeRecord runs a node record with short timings until the returned stop is called.
func runNodeRecord(t *testing.T, cli *clientv3.Client, name string, pr *progress) (stop func()) {
	t.Helper()
	p, err := fleet.NewNodeRecord(fleet.NodeRecordConfig{
		Client: cli, Prefix: recPrefix, Name: name, Groups: []string{"web", "eu"}, Version: "v-test",
		Progress: pr.get,
		Every:    50 * time.Millisecond, Heartbeat: 400 * time.Millisecond, TTL: 2 * time.Second,
		Timeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func list(t *testing.T, cli *clientv3.Client, behindAfter time.Duration) fleet.Fleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := fleet.List(ctx, cli, recPrefix, behindAfter)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func hostNamed(f fleet.Fleet, name string) (fleet.Host, bool) {
	for _, h := range f.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return fleet.Host{}, false
}

// TestRecordLifecycle: a host's record is written with what it says, rewritten when that
// changes and, unchanged, at every heartbeat; a host cut off from etcd shows as gone once its
// lease expires, with its last record, and up again when etcd is back; a host stopped cleanly
// shows as gone at once.
func TestRecordLifecycle(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	px := etcdtest.NewProxy(t, u.Host)
	view := client(t, c.Endpoints()[0])
	ca := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	pr := &progress{p: fleet.Progress{CANotAfter: ca, Revision: 7, LastChange: 5}}
	start := time.Now().UTC()
	stop := runNodeRecord(t, client(t, "http://"+px.Addr()), "web-1", pr)

	var h fleet.Host
	eventually(t, "the host's record", 5*time.Second, func() bool {
		var ok bool
		h, ok = hostNamed(list(t, view, time.Minute), "web-1")
		return ok
	})
	if h.State != fleet.StateUp || h.Version != "v-test" || len(h.Groups) != 2 || h.Groups[0] != "web" ||
		!h.CANotAfter.Equal(ca) || h.Revision != 7 || h.LastChange != 5 || h.Problem != "" ||
		h.Started.Before(start.Add(-time.Second)) || h.LastSeen.Before(h.Started) {
		t.Fatalf("host = %+v", h)
	}

	pr.set(fleet.Progress{CANotAfter: ca, Revision: 9, LastChange: 9})
	eventually(t, "the record follows the host's copy", 2*time.Second, func() bool {
		h2, _ := hostNamed(list(t, view, time.Minute), "web-1")
		return h2.Revision == 9 && h2.LastChange == 9
	})
	h, _ = hostNamed(list(t, view, time.Minute), "web-1")
	eventually(t, "an unchanged record is rewritten at the heartbeat", 3*time.Second, func() bool {
		h2, _ := hostNamed(list(t, view, time.Minute), "web-1")
		return h2.LastSeen.After(h.LastSeen)
	})

	// Cut off: the lease (2 s) expires; the record stays.
	px.Cut()
	cut := time.Now()
	eventually(t, "a host cut off shows as gone", 6*time.Second, func() bool {
		h2, _ := hostNamed(list(t, view, time.Minute), "web-1")
		return h2.State == fleet.StateGone
	})
	t.Logf("gone %s after the cut (lease TTL 2 s)", time.Since(cut).Round(10*time.Millisecond))
	h, _ = hostNamed(list(t, view, time.Minute), "web-1")
	if h.Revision != 9 || h.LastSeen.After(cut) {
		t.Fatalf("gone host = %+v, want its last record", h)
	}
	px.Restore()
	eventually(t, "up again when etcd is back", 10*time.Second, func() bool {
		h2, _ := hostNamed(list(t, view, time.Minute), "web-1")
		return h2.State == fleet.StateUp
	})

	stop()
	h, _ = hostNamed(list(t, view, time.Minute), "web-1")
	if h.State != fleet.StateGone || time.Since(h.LastSeen) > time.Second {
		t.Fatalf("after a clean stop: %+v, want gone at once, last seen now", h)
	}
}

// TestBehind: a host whose copy does not hold the newest entry is behind once its records
// say so for longer than the grace; a current host is not, nor a stuck host while the
// registry is quiet. A delete, which leaves no key, counts through the record of a host that
// saw it.
func TestBehind(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, c.Endpoints()[0])
	ctx := context.Background()

	cur, stuck := &progress{}, &progress{}
	runNodeRecord(t, cli, "current", cur)
	runNodeRecord(t, cli, "stuck", stuck)
	const grace = time.Second
	eventually(t, "both hosts up", 5*time.Second, func() bool {
		f := list(t, cli, grace)
		return len(f.Hosts) == 2 && f.Hosts[0].State == fleet.StateUp && f.Hosts[1].State == fleet.StateUp
	})
	time.Sleep(2 * grace)
	if f := list(t, cli, grace); f.Hosts[1].State != fleet.StateUp || f.LastChange != 0 {
		t.Fatalf("an empty registry: %+v, want nobody behind", f)
	}

	put, err := cli.Put(ctx, recPrefix+"entries/e1", `{"id":"e1","spiffe_id":"spiffe://example.org/a","selectors":[{"type":"unix","value":"uid:1"}],"revision":1,"updated_at":"`+time.Now().UTC().Format(time.RFC3339Nano)+`"}`)
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision
	cur.set(fleet.Progress{Revision: rev, LastChange: rev})
	var f fleet.Fleet
	eventually(t, "the stuck host is behind", 5*time.Second, func() bool {
		f = list(t, cli, grace)
		s, _ := hostNamed(f, "stuck")
		return s.State == fleet.StateBehind && f.LastChange == rev
	})
	// The current host wrote its record within milliseconds of the change (Every 50 ms),
	// far inside the grace.
	if c, _ := hostNamed(f, "current"); c.State != fleet.StateUp {
		t.Fatalf("the current host is %s: %+v", c.State, f)
	}

	// The stuck host catches up; then the entry is deleted, which only the current host's
	// record tells.
	stuck.set(fleet.Progress{Revision: rev, LastChange: rev})
	eventually(t, "caught up", 5*time.Second, func() bool {
		s, _ := hostNamed(list(t, cli, grace), "stuck")
		return s.State == fleet.StateUp
	})
	del, err := cli.Delete(ctx, recPrefix+"entries/e1")
	if err != nil {
		t.Fatal(err)
	}
	cur.set(fleet.Progress{Revision: del.Header.Revision, LastChange: del.Header.Revision})
	eventually(t, "behind on a delete", 5*time.Second, func() bool {
		f = list(t, cli, grace)
		s, _ := hostNamed(f, "stuck")
		return s.State == fleet.StateBehind && f.LastChange == del.Header.Revision
	})
}

// TestJudge: the behind rule on explicit times.
func TestJudge(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	up := func(name string, rev, last int64, seen time.Time) fleet.Host {
		return fleet.Host{Record: fleet.Record{Name: name, Revision: rev, LastChange: last, LastChangeAt: seen, LastSeen: seen}, State: fleet.StateUp}
	}
	heartbeat := func(h fleet.Host, seen time.Time) fleet.Host { h.LastSeen = seen; return h }
	for _, tc := range []struct {
		name   string
		hosts  []fleet.Host
		newest fleet.Newest
		want   []fleet.State
		last   int64
	}{
		{"quiet registry", []fleet.Host{up("a", 10, 10, t0), up("b", 500, 10, t0)},
			fleet.Newest{Revision: 10, At: t0.Add(-time.Hour)}, []fleet.State{"up", "up"}, 10},
		{"stuck past the grace", []fleet.Host{up("a", 12, 10, t0), up("b", 5, 5, t0)},
			fleet.Newest{Revision: 10, At: t0.Add(-time.Minute)}, []fleet.State{"up", "behind"}, 10},
		{"within the grace", []fleet.Host{up("a", 12, 10, t0), up("b", 5, 5, t0)},
			fleet.Newest{Revision: 10, At: t0.Add(-10 * time.Second)}, []fleet.State{"up", "up"}, 10},
		{"record older than the change", []fleet.Host{up("a", 12, 10, t0), up("b", 5, 5, t0.Add(-time.Hour))},
			fleet.Newest{Revision: 10, At: t0.Add(-time.Minute)}, []fleet.State{"up", "up"}, 10},
		{"entry time ahead: hosts' records bound it", []fleet.Host{up("a", 12, 10, t0.Add(-time.Minute)), up("b", 5, 5, t0)},
			fleet.Newest{Revision: 10, At: t0.Add(time.Hour)}, []fleet.State{"up", "behind"}, 10},
		{"a delete seen by one host", []fleet.Host{up("a", 20, 15, t0.Add(-time.Minute)), up("b", 9, 8, t0), up("c", 9, 8, t0.Add(-50*time.Second))},
			fleet.Newest{Revision: 8, At: t0.Add(-2 * time.Hour)}, []fleet.State{"up", "behind", "up"}, 15},
		{"the bound does not move with heartbeats", []fleet.Host{heartbeat(up("a", 20, 15, t0.Add(-time.Minute)), t0), up("b", 9, 8, t0)},
			fleet.Newest{Revision: 8, At: t0.Add(-2 * time.Hour)}, []fleet.State{"up", "behind"}, 15},
		{"a host loaded after the delete", []fleet.Host{up("a", 20, 15, t0.Add(-time.Minute)), up("fresh", 30, 8, t0)},
			fleet.Newest{Revision: 8, At: t0.Add(-2 * time.Hour)}, []fleet.State{"up", "up"}, 15},
		{"gone stays gone", []fleet.Host{up("a", 12, 10, t0), {Record: fleet.Record{Name: "b", Revision: 1}, State: fleet.StateGone}},
			fleet.Newest{Revision: 10, At: t0.Add(-time.Hour)}, []fleet.State{"up", "gone"}, 10},
		{"unreadable record counts for nothing", []fleet.Host{up("a", 12, 10, t0), {Record: fleet.Record{Name: "b", LastChange: 99}, State: fleet.StateUp, Problem: "x"}},
			fleet.Newest{Revision: 10, At: t0.Add(-time.Hour)}, []fleet.State{"up", "up"}, 10},
		{"no entries ever", []fleet.Host{up("a", 3, 0, t0)}, fleet.Newest{}, []fleet.State{"up"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			last := fleet.Judge(tc.hosts, tc.newest, 30*time.Second)
			for i, h := range tc.hosts {
				if h.State != tc.want[i] {
					t.Errorf("%s: %s, want %s", h.Name, h.State, tc.want[i])
				}
			}
			if last != tc.last {
				t.Errorf("last change %d, want %d", last, tc.last)
			}
		})
	}
}

// TestForget: a gone host's record is deleted; an up host's is refused, as is an unknown name.
func TestForget(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, c.Endpoints()[0])
	ctx := context.Background()
	stop := runNodeRecord(t, cli, "web-2", &progress{})
	eventually(t, "up", 5*time.Second, func() bool { h, _ := hostNamed(list(t, cli, time.Minute), "web-2"); return h.State == fleet.StateUp })
	if _, err := fleet.Forget(ctx, cli, recPrefix, "web-2"); !errors.Is(err, fleet.ErrHostUp) {
		t.Fatalf("forgetting an up host: %v", err)
	}
	stop()
	r, err := fleet.Forget(ctx, cli, recPrefix, "web-2")
	if err != nil || r.Name != "web-2" || r.Version != "v-test" {
		t.Fatalf("Forget = %+v, %v", r, err)
	}
	if _, ok := hostNamed(list(t, cli, time.Minute), "web-2"); ok {
		t.Fatal("a forgotten host is still listed")
	}
	if _, err := fleet.Forget(ctx, cli, recPrefix, "web-2"); !errors.Is(err, fleet.ErrNoHost) {
		t.Fatalf("forgetting twice: %v", err)
	}
	if _, err := fleet.Forget(ctx, cli, recPrefix, "a/b"); err == nil {
		t.Fatal("a name with / accepted")
	}
}

// TestUnreadableRecord: a record that is not ours is listed by name with the problem.
func TestUnreadableRecord(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, c.Endpoints()[0])
	if _, err := cli.Put(context.Background(), recPrefix+"hosts/odd/node", "not json"); err != nil {
		t.Fatal(err)
	}
	other, _ := json.Marshal(fleet.Record{Name: "someone-else"})
	if _, err := cli.Put(context.Background(), recPrefix+"hosts/renamed/node", string(other)); err != nil {
		t.Fatal(err)
	}
	f := list(t, cli, time.Minute)
	if len(f.Hosts) != 2 || f.Hosts[0].Name != "odd" || f.Hosts[0].Problem == "" || f.Hosts[0].State != fleet.StateGone ||
		f.Hosts[1].Name != "renamed" || f.Hosts[1].Problem == "" {
		t.Fatalf("hosts = %+v", f.Hosts)
	}
}
