package fleet_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

var otherTD = spiffeid.RequireTrustDomainFromString("other.org")

// endpoint is a foreign bundle endpoint that records which host asked (each host's
// relationship has its own path).
type endpoint struct {
	mu   sync.Mutex
	doc  []byte
	hits map[string]int
}

func (e *endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hits[r.URL.Path]++
	w.Header().Set("Content-Type", "application/json")
	w.Write(e.doc)
}

func (e *endpoint) set(doc []byte) {
	e.mu.Lock()
	e.doc = doc
	e.mu.Unlock()
}

// takeHits returns the hits since the last call, by path.
func (e *endpoint) takeHits() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.hits
	e.hits = map[string]int{}
	return h
}

func foreignDoc(t *testing.T, ca *workloadtest.CA, seq uint64) []byte {
	t.Helper()
	sb, err := federation.FromWorkload(ca.Bundle(t, seq), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := federation.Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// fedHost is one host's federation manager with fleet sharing.
type fedHost struct {
	name string
	m    *federation.Manager
	stop context.CancelFunc
	done chan struct{}
}

func startFedHost(t *testing.T, cli *clientv3.Client, name, url string) *fedHost {
	t.Helper()
	return startFedHostReach(t, cli, name, url, nil)
}

// startFedHostReach is startFedHost with the registry's reachability (the agent passes its
// mirror's Status).
func startFedHostReach(t *testing.T, cli *clientv3.Client, name, url string, reachable func() (bool, time.Time)) *fedHost {
	t.Helper()
	db, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "svidd.db"))
	if err != nil {
		t.Fatal(err)
	}
	h := &fedHost{name: name, done: make(chan struct{})}
	sh, err := fleet.NewSharedBundles(fleet.SharedBundlesConfig{Client: cli, Prefix: prefix, Node: name, FetcherTTL: 2 * time.Second,
		Reachable: reachable,
		OnBundle: func(td spiffeid.TrustDomain, doc []byte, src store.BundleSource) {
			if err := h.m.Shared(context.Background(), td, doc, src); err != nil {
				t.Logf("%s: shared bundle refused: %v", name, err)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	h.m, err = federation.NewManager(federation.ManagerConfig{TrustDomain: td, Store: db, Share: sh,
		OwnBundle: func() *workload.Bundle { return nil }, MinRefresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.m.Configure(ctx, []federation.Relationship{{TrustDomain: otherTD, URL: url + "/" + name, Profile: federation.ProfileHTTPSWeb}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { h.m.Run(ctx) })
	wg.Go(func() { sh.Run(ctx) })
	go func() { wg.Wait(); db.Close(); close(h.done) }()
	h.stop = func() { cancel(); <-h.done }
	t.Cleanup(h.stop)
	return h
}

func (h *fedHost) sequence() uint64 {
	b, _, ok := h.m.Bundle(otherTD)
	if !ok {
		return 0
	}
	return b.Sequence
}

// TestSharedFederatedBundles: three hosts federating with other.org elect one fetcher; every
// host serves what it fetched; a new bundle reaches all; when the fetcher is cut off its
// lease ends and another host fetches; a bundle older than the shared one never replaces it.
func TestSharedFederatedBundles(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	ep := &endpoint{hits: map[string]int{}}
	caO := workloadtest.NewCA(t, otherTD, "o1")
	ep.set(foreignDoc(t, caO, 5))
	srv := httptest.NewServer(ep)
	defer srv.Close()

	// Host 1 reaches etcd through a proxy the test can cut.
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	hosts := []*fedHost{
		startFedHost(t, etcdClient(t, "http://"+p.Addr()), "h1", srv.URL),
		startFedHost(t, etcdClient(t, c.Endpoints()...), "h2", srv.URL),
		startFedHost(t, etcdClient(t, c.Endpoints()...), "h3", srv.URL),
	}
	allAt := func(what string, seq uint64) {
		t.Helper()
		for _, h := range hosts {
			eventually(t, what+" on "+h.name, 15*time.Second, func() bool { return h.sequence() == seq })
		}
	}
	allAt("the first bundle", 5)

	// One fetcher: over 2.5 s (the refresh hint is 1 s), one host asks.
	ep.takeHits()
	time.Sleep(2500 * time.Millisecond)
	hits := ep.takeHits()
	if len(hits) != 1 {
		t.Fatalf("hosts fetching: %v, want exactly one", hits)
	}
	var fetcher string
	for path := range hits {
		fetcher = strings.TrimPrefix(path, "/")
	}
	t.Logf("fetcher: %s (%v)", fetcher, hits)

	// A new bundle reaches every host.
	ep.set(foreignDoc(t, workloadtest.NewCA(t, otherTD, "o2"), 6))
	allAt("the new bundle", 6)

	// A bundle older than the shared one is not written over it.
	cli := etcdClient(t, c.Endpoints()...)
	sh, err := fleet.NewSharedBundles(fleet.SharedBundlesConfig{Client: cli, Prefix: prefix, Node: "x",
		OnBundle: func(spiffeid.TrustDomain, []byte, store.BundleSource) {}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Publish(context.Background(), otherTD, foreignDoc(t, caO, 4)); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(context.Background(), prefix+"bundles/other.org")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("shared copy: %v %v", resp, err)
	}
	if b, err := etcdstore.DecodeBundle(resp.Kvs[0].Value); err != nil || b.Sequence != 6 {
		t.Fatalf("shared copy after an older bundle was offered: sequence %d (%v), want 6", b.Sequence, err)
	}

	// The fetcher goes away: h1 is cut off from etcd (its lease ends unrenewed), the others
	// are stopped. The remaining host takes over.
	var survivor *fedHost
	switch fetcher {
	case "h1":
		p.Cut()
		survivor = hosts[1]
	default:
		for _, h := range hosts {
			if h.name == fetcher {
				h.stop()
			}
		}
		p.Cut() // and h1 cannot take over either
		for _, h := range hosts[1:] {
			if h.name != fetcher {
				survivor = h
			}
		}
	}
	ep.set(foreignDoc(t, workloadtest.NewCA(t, otherTD, "o3"), 7))
	eventually(t, "another host fetches", 15*time.Second, func() bool { return survivor.sequence() == 7 })
	if hits := ep.takeHits(); hits["/"+survivor.name] == 0 {
		t.Fatalf("hits after the fetcher left: %v, want %s among them", hits, survivor.name)
	}
}

// TestFetchAloneWhileRegistryDown: with the whole etcd cluster stopped no fetcher can be
// elected, so a host cut off for longer than a fetcher's lease fetches for itself: a foreign
// CA's new bundle is not missed during the outage. When etcd is back the host leads again
// and shares what it fetches.
func TestFetchAloneWhileRegistryDown(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	ep := &endpoint{hits: map[string]int{}}
	ep.set(foreignDoc(t, workloadtest.NewCA(t, otherTD, "o1"), 5))
	srv := httptest.NewServer(ep)
	defer srv.Close()

	// The reachability the agent's mirror would report: what the test did to the cluster.
	var mu sync.Mutex
	up, since := true, time.Now()
	set := func(ok bool) { mu.Lock(); up, since = ok, time.Now(); mu.Unlock() }
	reach := func() (bool, time.Time) { mu.Lock(); defer mu.Unlock(); return up, since }

	h := startFedHostReach(t, etcdClient(t, c.Endpoints()...), "h1", srv.URL, reach)
	eventually(t, "the first bundle", 15*time.Second, func() bool { return h.sequence() == 5 })

	c.Stop()
	set(false)
	ep.set(foreignDoc(t, workloadtest.NewCA(t, otherTD, "o2"), 6))
	eventually(t, "the new bundle fetched alone while etcd is down", 20*time.Second, func() bool { return h.sequence() == 6 })

	c.Start()
	set(true)
	ep.set(foreignDoc(t, workloadtest.NewCA(t, otherTD, "o3"), 7))
	eventually(t, "the bundle after etcd is back", 20*time.Second, func() bool { return h.sequence() == 7 })
	cli := etcdClient(t, c.Endpoints()...)
	eventually(t, "the fetched bundle shared again", 20*time.Second, func() bool {
		resp, err := cli.Get(context.Background(), prefix+"bundles/other.org")
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		b, err := etcdstore.DecodeBundle(resp.Kvs[0].Value)
		return err == nil && b.Sequence == 7
	})
}
