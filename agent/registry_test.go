package agent_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

	cfg, _ := runRegistryAgent(t, conf.EtcdConfig{
		Endpoints: []string{"https://" + p.Addr()}, Prefix: "/svidd/",
		CAFile: c.CA.CertFile, CertFile: cert, KeyFile: key,
	}, func(*conf.Config) {})
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

// runRegistryAgent runs an agent with store "etcd" configured as ec, in a short temp dir,
// with edit applied to its config, until the test ends; it returns the config (sockets).
func runRegistryAgent(t *testing.T, ec conf.EtcdConfig, edit func(*conf.Config)) (conf.Config, *agent.Agent) {
	t.Helper()
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
	cfg.Store = conf.StoreConfig{Kind: conf.StoreEtcd, Etcd: ec}
	edit(&cfg)
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
			t.Errorf("Run %s: %v", cfg.NodeName, err)
		}
	})
	return cfg, a
}

// fleetHost runs an agent named name in groups, with store "etcd" on c and the given config
// entries; it returns its config (sockets) once it reaches the registry.
func fleetHost(t *testing.T, c *etcdtest.Cluster, name string, groups []string, entries ...entry.Entry) (conf.Config, *agent.Agent) {
	t.Helper()
	cfg, a := runRegistryAgent(t, conf.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/svidd/"}, func(cfg *conf.Config) {
		cfg.NodeName, cfg.NodeGroups, cfg.Entries = name, groups, entries
	})
	cli := admin.NewClient(cfg.AdminSocketPath)
	eventually(t, name+" reaches the registry", func() bool {
		st, err := cli.Status(context.Background())
		return err == nil && st.Registry != nil && st.Registry.Reachable
	})
	return cfg, a
}

// servedIDs returns the SPIFFE IDs the Workload API on cfg's socket serves this process.
func servedIDs(t *testing.T, cfg conf.Config) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+cfg.SocketPath))
	if err != nil {
		if status.Code(err) == codes.PermissionDenied {
			return nil // entitled to nothing
		}
		t.Fatalf("FetchX509Context on %s: %v", cfg.NodeName, err)
	}
	var ids []string
	for _, s := range xc.SVIDs {
		ids = append(ids, s.ID.String())
	}
	slices.Sort(ids)
	return ids
}

// TestFleetScopes: two hosts following one etcd. An entry for node:name:host-1 is served on
// host-1 only, one for a group on its members only, one without node selectors on both; a
// config entry of host-1 is served on host-1 only and never reaches etcd; svidctl on host-2
// lists and deletes the entry for host-1 (the fleet view), and the deletion reaches host-1.
func TestFleetScopes(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	uid := "unix:uid:" + strconv.Itoa(os.Getuid())
	local := mustEntry(t, "/local", uid)
	local.Name = "local"
	h1, agent1 := fleetHost(t, c, "host-1", []string{"web"}, local)
	h2, _ := fleetHost(t, c, "host-2", []string{"db"})
	cli1, cli2 := admin.NewClient(h1.AdminSocketPath), admin.NewClient(h2.AdminSocketPath)
	ctx := context.Background()

	var only1 admin.Entry
	for _, e := range []admin.Entry{
		{SPIFFEID: "spiffe://example.org/only-1", Selectors: []string{uid, "node:name:host-1"}},
		{SPIFFEID: "spiffe://example.org/db", Selectors: []string{uid, "node:group:db"}},
		{SPIFFEID: "spiffe://example.org/both", Selectors: []string{uid}},
	} {
		out, err := cli2.CreateEntry(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Warnings) != 0 {
			t.Errorf("creating %v on host-2: warnings %v, want none for node selectors", e.Selectors, out.Warnings)
		}
		if e.SPIFFEID == "spiffe://example.org/only-1" {
			only1 = out
		}
	}
	if _, err := cli2.CreateEntry(ctx, admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{uid, "node:host-1"}}); err == nil ||
		!strings.Contains(err.Error(), "node:name:NAME or node:group:GROUP") {
		t.Fatalf("a malformed node selector: %v, want it refused saying the forms", err)
	}

	want1 := []string{"spiffe://example.org/both", "spiffe://example.org/local", "spiffe://example.org/only-1"}
	want2 := []string{"spiffe://example.org/both", "spiffe://example.org/db"}
	eventually(t, "host-1 serves its entries", func() bool { return slices.Equal(servedIDs(t, h1), want1) })
	eventually(t, "host-2 serves its entries", func() bool { return slices.Equal(servedIDs(t, h2), want2) })
	// Both settled: nothing more arrives, so what each serves now is final.
	if got := servedIDs(t, h1); !slices.Equal(got, want1) {
		t.Fatalf("host-1 serves %v, want %v", got, want1)
	}
	if got := servedIDs(t, h2); !slices.Equal(got, want2) {
		t.Fatalf("host-2 serves %v, want %v", got, want2)
	}

	// The operator's view: host-2 lists every fleet entry, not host-1's own.
	ids2 := fleetIDs(t, cli2)
	if want := []string{"spiffe://example.org/both", "spiffe://example.org/db", "spiffe://example.org/only-1"}; !slices.Equal(ids2, want) {
		t.Fatalf("entry list on host-2 = %v, want the fleet's %v (host-1's config entry is its own)", ids2, want)
	}
	list1, err := cli1.ListEntries(ctx, "", nil)
	if err != nil || len(list1) != 4 {
		t.Fatalf("entry list on host-1 = %d entries, %v; want the fleet's 3 and its own", len(list1), err)
	}
	for _, e := range list1 {
		if e.SPIFFEID == "spiffe://example.org/local" {
			if _, err := cli1.DeleteEntry(ctx, e.ID); err == nil {
				t.Fatal("deleting a config entry through the admin API succeeded, want 409")
			}
		}
	}
	if got, err := cli2.GetEntry(ctx, only1.ID); err != nil || got.SPIFFEID != only1.SPIFFEID {
		t.Fatalf("entry show on host-2 of host-1's entry = %+v, %v", got, err)
	}
	if _, err := cli2.DeleteEntry(ctx, only1.ID); err != nil {
		t.Fatalf("deleting host-1's entry from host-2: %v", err)
	}
	want1 = []string{"spiffe://example.org/both", "spiffe://example.org/local"}
	eventually(t, "the deletion reaches host-1", func() bool { return slices.Equal(servedIDs(t, h1), want1) })

	// A reload (SIGHUP) reconciles host-1's config entries in its copy; node_groups is
	// restart-only: host-1 does not join "db" until it restarts.
	reloaded := h1
	reloaded.NodeGroups = []string{"db"}
	local2 := mustEntry(t, "/local-2", uid)
	local2.Name = "local-2"
	reloaded.Entries = []entry.Entry{local2}
	if err := agent1.Reload(ctx, reloaded); err != nil {
		t.Fatal(err)
	}
	want1 = []string{"spiffe://example.org/both", "spiffe://example.org/local-2"}
	eventually(t, "host-1 serves its reloaded config entries, and still not the db group's", func() bool {
		return slices.Equal(servedIDs(t, h1), want1)
	})
	if ids := fleetIDs(t, cli2); slices.Contains(ids, "spiffe://example.org/local-2") {
		t.Fatalf("a reloaded config entry of host-1 reached the registry: %v", ids)
	}
}

// fleetIDs lists the SPIFFE IDs svidctl entry list shows through cli.
func fleetIDs(t *testing.T, cli *admin.Client) []string {
	t.Helper()
	es, err := cli.ListEntries(context.Background(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range es {
		ids = append(ids, e.SPIFFEID)
	}
	return ids
}
