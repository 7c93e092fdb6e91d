package etcdtest

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcd authentication as a fleet runs it: every user authenticates with its client
// certificate (CN = user name, no password) and may touch only the key ranges its roles
// grant. Root is needed to turn authentication on and to manage users and roles; Cluster's
// own health checks present root's certificate.

// Role is an etcd role: the key prefixes it may read, and those it may read and write.
type Role struct {
	Name      string
	Read      []string
	ReadWrite []string
}

// The roles svidd's README gives a fleet (see its "Running a fleet"), for a registry under
// prefix (ending in "/").

// RegistrarRole may read and write the whole registry: the hosts where operators register.
func RegistrarRole(prefix string) Role {
	return Role{Name: "svidd-registrar", ReadWrite: []string{prefix}}
}

// HostRole is one host's: it reads the whole registry and writes only what it publishes about
// itself, under hosts/<node>/.
func HostRole(prefix, node string) Role {
	return Role{Name: "svidd-host-" + node, Read: []string{prefix}, ReadWrite: []string{prefix + "hosts/" + node + "/"}}
}

// FederationRole is for the hosts that fetch federated bundles for the fleet: they write the
// shared bundles and the locks that make one host fetch.
func FederationRole(prefix string) Role {
	return Role{Name: "svidd-federation", ReadWrite: []string{prefix + "bundles/", prefix + "locks/"}}
}

// Client returns a client of every member that authenticates as user (its certificate's CN;
// ignored without TLS). It is closed when the test ends.
func (c *Cluster) Client(user string) *clientv3.Client {
	c.t.Helper()
	cfg := clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if c.CA != nil {
		tc, err := c.ClientTLS(user)
		if err != nil {
			c.t.Fatal(err)
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// EnableAuth turns etcd's authentication on, with the user root (certificate CN "root")
// holding the root role. The cluster must have been started with TLS: without a client
// certificate no user could authenticate without a password.
func (c *Cluster) EnableAuth() {
	c.t.Helper()
	if c.CA == nil {
		c.t.Fatal("etcdtest: EnableAuth needs a cluster started with TLS")
	}
	c.admin(func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := cli.RoleAdd(ctx, "root"); err != nil {
			return fmt.Errorf("adding role root: %w", err)
		}
		if _, err := cli.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			return fmt.Errorf("adding user root: %w", err)
		}
		if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
			return fmt.Errorf("granting root to root: %w", err)
		}
		if _, err := cli.AuthEnable(ctx); err != nil {
			return fmt.Errorf("enabling authentication: %w", err)
		}
		return nil
	})
}

// AddRole creates r with its permissions (each prefix a key range, as etcdctl's
// `role grant-permission --prefix`).
func (c *Cluster) AddRole(r Role) {
	c.t.Helper()
	c.admin(func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := cli.RoleAdd(ctx, r.Name); err != nil {
			return fmt.Errorf("adding role %s: %w", r.Name, err)
		}
		grant := func(prefix, name string, perm clientv3.PermissionType) error {
			if _, err := cli.RoleGrantPermission(ctx, r.Name, prefix, clientv3.GetPrefixRangeEnd(prefix), perm); err != nil {
				return fmt.Errorf("granting %s on %s to role %s: %w", name, prefix, r.Name, err)
			}
			return nil
		}
		for _, p := range r.Read {
			if err := grant(p, "read", clientv3.PermissionType(clientv3.PermRead)); err != nil {
				return err
			}
		}
		for _, p := range r.ReadWrite {
			if err := grant(p, "readwrite", clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
				return err
			}
		}
		return nil
	})
}

// AddUser creates user, who authenticates with its client certificate only (no password),
// and grants it roles.
func (c *Cluster) AddUser(user string, roles ...string) {
	c.t.Helper()
	c.admin(func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			return fmt.Errorf("adding user %s: %w", user, err)
		}
		for _, r := range roles {
			if _, err := cli.UserGrantRole(ctx, user, r); err != nil {
				return fmt.Errorf("granting role %s to user %s: %w", r, user, err)
			}
		}
		return nil
	})
}

// admin runs fn with a root client, failing the test on error.
func (c *Cluster) admin(fn func(ctx context.Context, cli *clientv3.Client) error) {
	c.t.Helper()
	cli := c.Client("root")
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := fn(ctx, cli); err != nil {
		c.t.Fatalf("etcdtest: %v", err)
	}
}

// Compact discards the cluster's change history up to now (physically), so a watcher cut off
// before it must reload.
func (c *Cluster) Compact() {
	c.t.Helper()
	c.admin(func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Get(ctx, "compact-probe")
		if err != nil {
			return err
		}
		if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			return fmt.Errorf("compacting: %w", err)
		}
		return nil
	})
}

// Leader returns the index of the member that leads the cluster now.
func (c *Cluster) Leader() int {
	c.t.Helper()
	cli := c.Client("root")
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		for i, m := range c.members {
			st, err := cli.Status(ctx, m.ClientURL)
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return i
			}
		}
		select {
		case <-ctx.Done():
			c.t.Fatal("etcdtest: no leader after 20 s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
