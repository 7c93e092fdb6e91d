package agent_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/agent"
	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store/etcdstore"
)

// TestRegistryHost runs an agent with store "etcd": entries written with svidctl's client
// land in etcd; entries written by another host reach this one; with etcd cut off the agent
// stays ready and serves its copy, and a write fails at once with 503 saying why.
func TestRegistryHost(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	cert, key, err := c.CA.ClientFiles("host-1")
	if err != nil {
		t.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "svidd-reg") // short: socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := conf.Default()
	cfg.SocketPath = filepath.Join(dir, "api.sock")
	cfg.AdminSocketPath = filepath.Join(dir, "admin.sock")
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Telemetry.PrometheusAddress = ""
	cfg.Store = conf.StoreConfig{Kind: conf.StoreEtcd, Etcd: conf.EtcdConfig{
		Endpoints: []string{"https://" + p.Addr()}, Prefix: "/svidd/",
		CAFile: c.CA.CertFile, CertFile: cert, KeyFile: key,
	}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	cli := admin.NewClient(cfg.AdminSocketPath)

	// The other host: a plain registry client.
	tc, err := c.ClientTLS("host-2")
	if err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithTimeout(context.Background(), 10*time.Second)
	other, err := etcdstore.Open(octx, etcdstore.Config{Endpoints: c.Endpoints(), TLS: tc, Prefix: "/svidd/"})
	ocancel()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	var created admin.Entry
	eventually(t, "an entry created with the admin API", func() bool {
		created, err = cli.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/web", Selectors: []string{"unix:uid:1000"}})
		return err == nil
	})
	if _, err := other.GetEntry(context.Background(), created.ID); err != nil {
		t.Fatalf("entry created on the host is not in etcd: %v", err)
	}
	fromOther, err := other.CreateEntry(context.Background(), mustEntry(t, "/db", "unix:uid:1001"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "another host's entry reaches the agent", func() bool {
		_, err := cli.GetEntry(context.Background(), fromOther.ID)
		return err == nil
	})

	p.Cut()
	var werr error
	eventually(t, "writes refused while etcd is unreachable", func() bool {
		start := time.Now()
		_, werr = cli.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/refused", Selectors: []string{"unix:uid:1"}})
		var se *admin.StatusError
		return errors.As(werr, &se) && se.Code == http.StatusServiceUnavailable && time.Since(start) < time.Second
	})
	t.Logf("write while etcd is unreachable: %v", werr)
	if st, err := cli.Status(context.Background()); err != nil || st.Registry == nil || st.Registry.Reachable || st.Registry.Kind != "etcd" {
		t.Fatalf("status while etcd is unreachable: registry %+v, %v", st.Registry, err)
	}
	h, err := cli.Health(context.Background())
	if err != nil || !h.Ready {
		t.Fatalf("health while etcd is unreachable = %+v, %v; want ready", h, err)
	}
	if _, err := cli.GetEntry(context.Background(), created.ID); err != nil {
		t.Fatalf("the copy is not served while etcd is unreachable: %v", err)
	}
	if _, err := other.DeleteEntry(context.Background(), fromOther.ID); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	eventually(t, "the agent catches up with a delete made while it was cut off", func() bool {
		_, err := cli.GetEntry(context.Background(), fromOther.ID)
		return admin.IsNotFound(err)
	})
	eventually(t, "status shows the registry reachable again", func() bool {
		st, err := cli.Status(context.Background())
		return err == nil && st.Registry != nil && st.Registry.Reachable
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 20 s: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mustEntry(t *testing.T, path string, sels ...string) entry.Entry {
	t.Helper()
	parsed, err := entry.ParseSelectors(sels)
	if err != nil {
		t.Fatal(err)
	}
	return entry.Entry{SPIFFEID: spiffeid.RequireFromString("spiffe://example.org" + path), Selectors: parsed}
}

// TestRegistryRefusesConfigEntries: entry blocks beside store "etcd" are refused at start
// (reconciling them would delete the other hosts' entries).
func TestRegistryRefusesConfigEntries(t *testing.T) {
	cfg := conf.Default()
	cfg.DataDir = t.TempDir()
	cfg.Store = conf.StoreConfig{Kind: conf.StoreEtcd, Etcd: conf.EtcdConfig{Endpoints: []string{"http://127.0.0.1:1"}, Prefix: "/svidd/"}}
	cfg.Entries = []entry.Entry{mustEntry(t, "/web", "unix:uid:1")}
	cfg.Entries[0].Name = "web"
	_, err := agent.New(agent.Config{Config: cfg})
	if err == nil || !strings.Contains(err.Error(), `entry blocks are not supported with store "etcd"`) {
		t.Fatalf("New = %v, want the entry blocks refused", err)
	}
}
