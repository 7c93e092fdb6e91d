package fleet_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// TestRoles runs the fleet's parts under etcd authentication with the README's roles: a
// host (svidd-host-<node>: read on the prefix, readwrite on hosts/<node>/) publishes its keys
// under leases and follows every host's; only a host with svidd-federation elects a fetcher
// and shares bundles, and one without it is told to fetch for itself.
func TestRoles(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	tlsClient := func(user string) *clientv3.Client {
		tc, err := c.ClientTLS(user)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	ctx := context.Background()
	root := tlsClient("root")
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	user := func(name string, roles ...string) {
		must(root.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}))
		for _, r := range roles {
			must(root.UserGrantRole(ctx, name, r))
		}
	}
	role := func(name string, perm clientv3.PermissionType, key string) {
		if _, err := root.RoleGet(ctx, name); err != nil {
			must(root.RoleAdd(ctx, name))
		}
		must(root.RoleGrantPermission(ctx, name, key, clientv3.GetPrefixRangeEnd(key), perm))
	}
	must(root.RoleAdd(ctx, "root"))
	user("root", "root")
	for _, n := range []string{"h1", "h2"} {
		role("svidd-host-"+n, clientv3.PermissionType(authpb.READ), prefix)
		role("svidd-host-"+n, clientv3.PermissionType(authpb.READWRITE), prefix+"hosts/"+n+"/")
	}
	role("svidd-federation", clientv3.PermissionType(authpb.READWRITE), prefix+"bundles/")
	role("svidd-federation", clientv3.PermissionType(authpb.READWRITE), prefix+"locks/")
	user("h1", "svidd-host-h1")
	user("h2", "svidd-host-h2", "svidd-federation")
	must(root.AuthEnable(ctx))

	// Keys: h1 publishes under its role, h2 follows.
	dir := t.TempDir()
	h1 := startNode(t, tlsClient("h1"), "h1", filepath.Join(dir, "h1.db"))
	h2 := startNode(t, tlsClient("h2"), "h2", filepath.Join(dir, "h2.db"))
	h1.setKeys(newKey(t, "h1", "k1", time.Now().Add(time.Hour)))
	eventually(t, "h2 has h1's key", 10*time.Second, snapshotIs(h2, "h1/k1"))
	// A host may not write another host's keys.
	if _, err := tlsClient("h1").Put(ctx, prefix+"hosts/h2/jwtkeys/forged", "x"); err == nil {
		t.Fatal("h1 wrote under hosts/h2/")
	}

	// Federation: h2 elects and shares; h1 is told to fetch for itself, and shares nothing.
	doc := foreignDoc(t, workloadtest.NewCA(t, otherTD, "o"), 3)
	shared := func(cli *clientv3.Client, node string) *fleet.SharedBundles {
		s, err := fleet.NewSharedBundles(fleet.SharedBundlesConfig{Client: cli, Prefix: prefix, Node: node,
			OnBundle: func(spiffeid.TrustDomain, []byte, store.BundleSource) {}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s1, s2 := shared(tlsClient("h1"), "h1"), shared(tlsClient("h2"), "h2")
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lead2, resign2, err := s2.Lead(lctx, otherTD)
	if err != nil {
		t.Fatalf("h2 (svidd-federation) Lead: %v", err)
	}
	defer resign2()
	lead1, resign1, err := s1.Lead(lctx, otherTD) // h2 leads: only a host without rights returns now
	if err != nil || lead1.Err() != nil || lead2.Err() != nil {
		t.Fatalf("h1 (no svidd-federation) Lead: %v", err)
	}
	resign1()
	if err := s1.Publish(ctx, otherTD, doc); err != nil {
		t.Fatalf("h1 Publish: %v, want nothing done", err)
	}
	if resp, err := root.Get(ctx, prefix+"bundles/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("bundles/ after h1 published: %v %v", resp, err)
	}
	if err := s2.Publish(ctx, otherTD, doc); err != nil {
		t.Fatalf("h2 Publish: %v", err)
	}
	resp, err := root.Get(ctx, prefix+"bundles/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil || !slices.EqualFunc(resp.Kvs, []string{prefix + "bundles/other.org"}, func(kv *mvccpb.KeyValue, k string) bool { return string(kv.Key) == k }) {
		t.Fatalf("bundles/ after h2 published: %v %v", resp, err)
	}
}
