package etcdtest_test

import (
	"context"
	"crypto/tls"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/internal/etcdtest"
)

func client(t *testing.T, endpoints []string, tc *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func put(cli *clientv3.Client, k, v string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := cli.Put(ctx, k, v)
	return err
}

// TestThreeMembersTLS runs the whole life of a cluster: a killed member does not stop writes,
// a stopped cluster refuses them, a started one has kept them, and a client without a
// certificate signed by the test CA is refused.
func TestThreeMembersTLS(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3, TLS: true})
	tc, err := c.ClientTLS("root")
	if err != nil {
		t.Fatal(err)
	}
	cli := client(t, c.Endpoints(), tc)
	if err := put(cli, "k", "1", 10*time.Second); err != nil {
		t.Fatalf("put: %v", err)
	}

	c.Kill(0)
	// A write in flight while a new leader is elected may time out (etcd does not retry a
	// write it cannot prove unapplied); the cluster must take writes again within seconds.
	deadline := time.Now().Add(15 * time.Second)
	for err := put(cli, "k", "2", 5*time.Second); err != nil; err = put(cli, "k", "2", 5*time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("put with one of three members killed: %v", err)
		}
	}
	c.Restart(0)

	c.Stop()
	if err := put(cli, "k", "3", time.Second); err == nil {
		t.Fatal("put succeeded with the whole cluster stopped")
	}
	c.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("after restart k = %v, want 2", resp.Kvs)
	}

	// No client certificate: the TLS handshake is refused, so no request gets through.
	noCert := tc.Clone()
	noCert.Certificates = nil
	if err := put(client(t, c.Endpoints()[:1], noCert), "k", "4", 2*time.Second); err == nil {
		t.Fatal("put without a client certificate succeeded")
	}
}

func TestProxyCutsOneClient(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	viaProxy := client(t, []string{"http://" + p.Addr()}, nil)
	direct := client(t, c.Endpoints(), nil)
	if err := put(viaProxy, "k", "1", 10*time.Second); err != nil {
		t.Fatalf("put through the proxy: %v", err)
	}
	p.Cut()
	if err := put(viaProxy, "k", "2", time.Second); err == nil {
		t.Fatal("put through a cut proxy succeeded")
	}
	if err := put(direct, "k", "3", 10*time.Second); err != nil {
		t.Fatalf("direct put while the proxy is cut: %v", err)
	}
	p.Restore()
	if err := put(viaProxy, "k", "4", 10*time.Second); err != nil {
		t.Fatalf("put after Restore: %v", err)
	}
}
