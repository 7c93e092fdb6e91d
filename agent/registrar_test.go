package agent_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/admin"
)

// TestRegistrarOnly runs the README's split on an auth-enabled etcd: a registrar-only svidd
// (no api socket, no CA) takes svidctl's entry writes into etcd, and a host with read-only
// credentials serves them from its copy; the host answers a write with 403 saying its etcd
// user may not write the registry, and still counts the registry reachable.
func TestRegistrarOnly(t *testing.T) {
	const prefix = "/svidd/"
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	c.EnableAuth()
	c.AddRole(etcdtest.RegistrarRole(prefix))
	c.AddRole(etcdtest.HostRole(prefix, "web-1"))
	c.AddUser("registrar", "svidd-registrar")
	c.AddUser("web-1", "svidd-host-web-1")

	as := func(user string) conf.EtcdConfig {
		cert, key, err := c.CA.ClientFiles(user)
		if err != nil {
			t.Fatal(err)
		}
		return conf.EtcdConfig{Endpoints: c.Endpoints(), Prefix: prefix, CAFile: c.CA.CertFile, CertFile: cert, KeyFile: key}
	}
	regCfg, _ := runRegistryAgent(t, as("registrar"), func(cfg *conf.Config) { cfg.RegistrarOnly = true })
	reg := admin.NewClient(regCfg.AdminSocketPath)
	hostCfg, _ := runRegistryAgent(t, as("web-1"), func(cfg *conf.Config) { cfg.NodeName = "web-1" })
	host := admin.NewClient(hostCfg.AdminSocketPath)

	var created admin.Entry
	var err error
	eventually(t, "an entry created on the registrar", func() bool {
		created, err = reg.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/web", Selectors: []string{"unix:uid:1000"}})
		return err == nil
	})
	eventually(t, "the registrar's entry reaches the host's copy", func() bool {
		_, err := host.GetEntry(context.Background(), created.ID)
		return err == nil
	})
	if _, err := os.Stat(regCfg.SocketPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registrar-only svidd made an api socket: %v", err)
	}
	if _, err := os.Stat(regCfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registrar-only svidd made a data dir: %v", err)
	}
	st, err := reg.Status(context.Background())
	if err != nil || st.Registry == nil || !st.Registry.Reachable || len(st.Authorities) != 0 || st.Entries != 1 || !st.RegistrarOnly {
		t.Errorf("registrar status: %+v, %v; want the registry reachable, its one entry and no CA", st, err)
	}

	_, err = host.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/mine", Selectors: []string{"unix:uid:1"}})
	var se *admin.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Message, "may not write the registry") ||
		!strings.Contains(se.Message, "register on a registrar host") {
		t.Fatalf("write on a read-only host: %v, want 403 saying so", err)
	}
	t.Logf("write on a read-only host: %v", err)
	if _, err := host.DeleteEntry(context.Background(), created.ID); !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("delete on a read-only host: %v, want 403", err)
	}
	if st, err := host.Status(context.Background()); err != nil || st.Registry == nil || !st.Registry.Reachable {
		t.Fatalf("host status after a refused write: %+v, %v; want the registry reachable", st.Registry, err)
	}

	if _, err := reg.DeleteEntry(context.Background(), created.ID); err != nil {
		t.Fatalf("delete on the registrar: %v", err)
	}
	eventually(t, "the registrar's delete reaches the host's copy", func() bool {
		_, err := host.GetEntry(context.Background(), created.ID)
		return admin.IsNotFound(err)
	})

	// Federated bundles: the read-only host may not set one (403); the registrar's reaches it.
	other := spiffeid.RequireTrustDomainFromString("other.org")
	_, err = host.SetBundle(context.Background(), "other.org", "pem", []byte(foreignRoot(t, other)))
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Message, "may not write the registry") {
		t.Fatalf("bundle set on a read-only host: %v, want 403 saying so", err)
	}
	if _, err := host.FederatedBundle(context.Background(), "other.org"); !admin.IsNotFound(err) {
		t.Fatalf("the refused bundle on the read-only host: %v, want not found", err)
	}
	if _, err := reg.SetBundle(context.Background(), "other.org", "pem", []byte(foreignRoot(t, other))); err != nil {
		t.Fatalf("bundle set on the registrar: %v", err)
	}
	eventually(t, "the registrar's bundle reaches the read-only host", func() bool {
		bs, err := host.ListBundles(context.Background())
		return err == nil && len(bs) == 1 && bs[0].Source == "manual"
	})
	if err := host.DeleteBundle(context.Background(), "other.org"); !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("bundle delete on a read-only host: %v, want 403", err)
	}

	// etcd down: the registrar says so in its status, and refuses writes at once with 503.
	c.Stop()
	eventually(t, "the registrar's status shows etcd unreachable", func() bool {
		st, err := reg.Status(context.Background())
		return err == nil && st.Registry != nil && !st.Registry.Reachable
	})
	start := time.Now()
	_, err = reg.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/down", Selectors: []string{"unix:uid:1"}})
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Message, "unreachable") || time.Since(start) > time.Second {
		t.Fatalf("registrar write with etcd down: %v after %v, want 503 saying etcd is unreachable, at once", err, time.Since(start))
	}
	t.Logf("registrar write with etcd down: %v", err)
	// Reads of the fleet's bundles say so too: never an empty list that looks like "none".
	if bs, err := reg.ListBundles(context.Background()); !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Message, "unreachable") {
		t.Fatalf("bundle list on the registrar with etcd down: %v, %v; want 503 saying etcd is unreachable", bs, err)
	}
	c.Start()
	eventually(t, "the registrar writes again once etcd is back", func() bool {
		_, err := reg.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/back", Selectors: []string{"unix:uid:1"}})
		return err == nil
	})
}
