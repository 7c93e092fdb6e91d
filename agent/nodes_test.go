package agent_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/admin"
)

// adminOf returns the admin client of an agent run by runRegistryAgent, once it serves.
func adminOf(t *testing.T, cfg conf.Config) *admin.Client {
	t.Helper()
	cli := admin.NewClient(cfg.AdminSocketPath)
	eventually(t, "the agent serves", func() bool {
		_, err := cli.Health(context.Background())
		return err == nil
	})
	return cli
}

// TestNodeList: a host of a fleet lists itself up, with its version, its active CA's
// NotAfter and the registry revision its copy is at; with etcd cut off the list fails at
// once saying since when; a host without a registry says the list needs one.
func TestNodeList(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	cfg, _ := runRegistryAgent(t, conf.EtcdConfig{Endpoints: []string{"http://" + p.Addr()}, Prefix: "/svidd/"}, func(cfg *conf.Config) {
		cfg.NodeName, cfg.NodeGroups = "web-1", []string{"web", "eu"}
	})
	cli := adminOf(t, cfg)
	ctx := context.Background()

	eventually(t, "an entry created", func() bool {
		_, err = cli.CreateEntry(ctx, admin.Entry{SPIFFEID: "spiffe://example.org/web", Selectors: []string{"unix:uid:1000"}})
		return err == nil
	})
	var n admin.Node
	var nl admin.NodeList
	eventually(t, "the host lists itself with the entry in its copy", func() bool {
		nl, err = cli.Nodes(ctx)
		if err != nil || len(nl.Nodes) != 1 {
			return false
		}
		n = nl.Nodes[0]
		return n.LastChange > 0 && n.LastChange == nl.LastChange
	})
	st, err := cli.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var caNotAfter time.Time
	for _, au := range st.Authorities {
		if au.State == "active" {
			caNotAfter = au.NotAfter
		}
	}
	if n.Name != "web-1" || n.State != "up" || n.Version == "" || !n.CANotAfter.Equal(caNotAfter) ||
		n.Revision < n.LastChange || n.StartedAt.IsZero() || n.LastSeen.IsZero() || strings.Join(n.Groups, ",") != "web,eu" {
		t.Fatalf("node = %+v (active CA until %s)", n, caNotAfter)
	}
	t.Logf("node %+v", n)

	p.Cut()
	var se *admin.StatusError
	eventually(t, "node list refused at once while etcd is unreachable, saying since when", func() bool {
		start := time.Now()
		_, err = cli.Nodes(ctx)
		return errors.As(err, &se) && se.Code == http.StatusServiceUnavailable && time.Since(start) < time.Second &&
			strings.Contains(err.Error(), "the registry (etcd) is unreachable since ")
	})
	t.Logf("node list while etcd is unreachable: %v", err)
	p.Restore()

	sq, _ := runRegistryAgent(t, conf.EtcdConfig{}, func(cfg *conf.Config) { cfg.Store = conf.Default().Store })
	_, err = adminOf(t, sq).Nodes(ctx)
	if !errors.As(err, &se) || se.Code != http.StatusNotFound || !strings.Contains(err.Error(), "needs a fleet registry") {
		t.Fatalf("node list without a registry: %v", err)
	}
}

// TestNodeListOnRegistrar: a registrar-only host (no record of its own) lists the fleet's
// hosts and may forget a gone one.
func TestNodeListOnRegistrar(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	fleetHost(t, c, "web-1", []string{"web"})
	reg, _ := runRegistryAgent(t, conf.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/svidd/"}, func(cfg *conf.Config) { cfg.RegistrarOnly = true })
	cli := adminOf(t, reg)
	eventually(t, "the registrar lists web-1 up", func() bool {
		nl, err := cli.Nodes(context.Background())
		return err == nil && len(nl.Nodes) == 1 && nl.Nodes[0].Name == "web-1" && nl.Nodes[0].State == "up"
	})
	var se *admin.StatusError
	if _, err := cli.ForgetNode(context.Background(), "web-1"); !errors.As(err, &se) || se.Code != http.StatusConflict {
		t.Fatalf("forgetting an up host: %v, want 409", err)
	}
}
