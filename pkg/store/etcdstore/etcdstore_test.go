package etcdstore_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
	"github.com/svidd/svidd/pkg/store/storetest"
)

// Each top-level test runs one TLS cluster (client certificates, as a fleet runs it); every
// case has its own key prefix, so cases never see each other's entries.
var prefixes atomic.Int64

func testCluster(t *testing.T) (*etcdtest.Cluster, *tls.Config) {
	t.Helper()
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	tc, err := c.ClientTLS("root")
	if err != nil {
		t.Fatal(err)
	}
	return c, tc
}

func newPrefix() string { return fmt.Sprintf("/svidd-test/%d/", prefixes.Add(1)) }

func open(t *testing.T, endpoints []string, tc *tls.Config, prefix string) *etcdstore.Store {
	t.Helper()
	return openWith(t, etcdstore.Config{Endpoints: endpoints, TLS: tc, Prefix: prefix})
}

func openWith(t *testing.T, cfg etcdstore.Config) *etcdstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := etcdstore.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	c, tc := testCluster(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, c.Endpoints(), tc, newPrefix())
	})
}

// backend is one prefix on the test cluster; each instance reaches etcd through its own
// proxy, so one instance can be cut off while the others write.
type backend struct {
	c       *etcdtest.Cluster
	tls     *tls.Config
	prefix  string
	mu      sync.Mutex
	proxies map[store.Store]*etcdtest.Proxy
}

func (b *backend) Open(t *testing.T) store.Store {
	u, err := url.Parse(b.c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	s := open(t, []string{"https://" + p.Addr()}, b.tls, b.prefix)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	b.mu.Lock()
	b.proxies[s] = p
	b.mu.Unlock()
	return s
}

func (b *backend) Disconnect(t *testing.T, s store.Store) func() {
	b.mu.Lock()
	p := b.proxies[s]
	b.mu.Unlock()
	p.Cut()
	return p.Restore
}

func (b *backend) Compact(*testing.T) { b.c.Compact() }

func TestShared(t *testing.T) {
	c, tc := testCluster(t)
	storetest.RunShared(t, func(t *testing.T) storetest.Shared {
		return &backend{c: c, tls: tc, prefix: newPrefix(), proxies: map[store.Store]*etcdtest.Proxy{}}
	})
}

// TestCreateRetryFindsItsOwnEntry: a create tried again after a try whose answer was lost
// finds the entry key holding exactly what it wrote and succeeds; the same ID holding
// anything else is still ErrAlreadyExists. A frozen clock and a fixed ID make a second call
// write the very bytes a second try of the first call would.
func TestCreateRetryFindsItsOwnEntry(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	s := openWith(t, etcdstore.Config{Endpoints: c.Endpoints(), Now: func() time.Time { return at }})
	defer s.Close()
	ctx := context.Background()
	e := entry.Entry{ID: "fixed", SPIFFEID: spiffeID("/retry"), Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}}
	first, err := s.CreateEntry(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.CreateEntry(ctx, e)
	if err != nil || again.ID != first.ID || again.Revision != 1 {
		t.Fatalf("second try of the same create = %+v, %v; want success", again, err)
	}
	if list, _ := s.ListEntries(ctx, store.Filter{}); len(list) != 1 {
		t.Fatalf("%d entries stored, want 1", len(list))
	}
	e.DNSNames = []string{"other.example.org"}
	if _, err := s.CreateEntry(ctx, e); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("create of another entry with the same ID: %v, want ErrAlreadyExists", err)
	}
}
