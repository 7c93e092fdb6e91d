package fleet_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/fleet"
)

// TestNodeRecordRoles: under etcd authentication with the README's roles, a host's own role
// (read the registry, write hosts/<node>/) publishes its record and alive key, revokes its
// lease on a clean stop and lists the fleet; it may not forget another host's record, which a
// registrar may.
func TestNodeRecordRoles(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	c.EnableAuth()
	c.AddRole(etcdtest.RegistrarRole(recPrefix))
	c.AddUser("registrar", "svidd-registrar")
	for _, n := range []string{"web-1", "web-2"} {
		c.AddRole(etcdtest.HostRole(recPrefix, n))
		c.AddUser(n, "svidd-host-"+n)
	}
	web1, reg := c.Client("web-1"), c.Client("registrar")
	runNodeRecord(t, web1, "web-1", &progress{})
	stop2 := runNodeRecord(t, c.Client("web-2"), "web-2", &progress{})
	eventually(t, "both hosts up, listed by a host", 10*time.Second, func() bool {
		f := list(t, web1, time.Minute)
		return len(f.Hosts) == 2 && f.Hosts[0].State == fleet.StateUp && f.Hosts[1].State == fleet.StateUp
	})
	stop2()
	if h, _ := hostNamed(list(t, web1, time.Minute), "web-2"); h.State != fleet.StateGone {
		t.Fatalf("web-2 after a clean stop: %+v, want gone at once (its role revokes its own lease)", h)
	}
	ctx := context.Background()
	if _, err := fleet.Forget(ctx, web1, recPrefix, "web-2"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a host forgetting another host: %v, want permission denied", err)
	}
	if _, err := fleet.Forget(ctx, reg, recPrefix, "web-2"); err != nil {
		t.Fatalf("the registrar forgetting a gone host: %v", err)
	}
	if f := list(t, web1, time.Minute); len(f.Hosts) != 1 {
		t.Fatalf("after forgetting web-2: %+v", f.Hosts)
	}
}
