package etcdstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
)

// TestAuthRoles runs the README's roles on an auth-enabled cluster: the registrar writes; a
// host reads, watches and is refused every registry write with store.ErrReadOnly, which says
// so; it writes under hosts/<its node>/ but not under another host's; with the federation
// role it writes the shared bundles.
func TestAuthRoles(t *testing.T) {
	const prefix = "/svidd/"
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	c.EnableAuth()
	for _, r := range []etcdtest.Role{etcdtest.RegistrarRole(prefix), etcdtest.HostRole(prefix, "web-1"),
		etcdtest.HostRole(prefix, "web-2"), etcdtest.FederationRole(prefix)} {
		c.AddRole(r)
	}
	c.AddUser("registrar", "svidd-registrar")
	c.AddUser("web-1", "svidd-host-web-1")
	c.AddUser("web-2", "svidd-host-web-2", "svidd-federation")
	as := func(user string) *etcdstore.Store {
		tc, err := c.ClientTLS(user)
		if err != nil {
			t.Fatal(err)
		}
		s := open(t, c.Endpoints(), tc, prefix)
		t.Cleanup(func() { s.Close() })
		return s
	}
	reg, host := as("registrar"), as("web-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var mu sync.Mutex
	var watched []string
	defer host.Watch(func(ch store.Change) {
		mu.Lock()
		watched = append(watched, ch.Op.String()+" "+ch.Entry.ID)
		mu.Unlock()
	})()

	e, err := reg.CreateEntry(ctx, entry.Entry{SPIFFEID: spiffeID("/web"), Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}})
	if err != nil {
		t.Fatalf("registrar create: %v", err)
	}
	if got, err := host.GetEntry(ctx, e.ID); err != nil || got.SPIFFEID != e.SPIFFEID {
		t.Fatalf("host read: %+v, %v", got, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		ok := len(watched) == 1 && watched[0] == "create "+e.ID
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host watch saw %v, want the registrar's create", watched)
		}
		time.Sleep(20 * time.Millisecond)
	}

	bundle := store.FederatedBundle{TrustDomain: spiffeid.RequireTrustDomainFromString("other.org"),
		Doc: []byte(`{"keys":[]}`), Source: store.BundleManual}
	refused := map[string]func() error{
		"create": func() error {
			_, err := host.CreateEntry(ctx, entry.Entry{SPIFFEID: spiffeID("/mine"), Selectors: []entry.Selector{{Type: "unix", Value: "uid:2"}}})
			return err
		},
		"update": func() error {
			u := e
			u.DNSNames = []string{"web.example.org"}
			_, err := host.UpdateEntry(ctx, u)
			return err
		},
		"delete": func() error { _, err := host.DeleteEntry(ctx, e.ID); return err },
		"set bundle": func() error {
			_, err := host.SetBundle(ctx, bundle)
			return err
		},
	}
	for name, write := range refused {
		start := time.Now()
		err := write()
		if !errors.Is(err, store.ErrReadOnly) || !strings.Contains(err.Error(), "may not write the registry") ||
			!strings.Contains(err.Error(), "register on a registrar host") {
			t.Errorf("host %s: %v, want store.ErrReadOnly saying so", name, err)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("host %s took %v: a refusal is not worth trying again", name, time.Since(start))
		}
	}
	if got, err := reg.GetEntry(ctx, e.ID); err != nil || got.Revision != 1 {
		t.Fatalf("after the host's refused writes the entry is %+v, %v; want it untouched", got, err)
	}

	// A host's own keys: its node's, not another node's.
	web1 := c.Client("web-1")
	if _, err := web1.Put(ctx, prefix+"hosts/web-1/record", "x"); err != nil {
		t.Errorf("web-1 writing under its hosts/web-1/: %v", err)
	}
	if _, err := web1.Put(ctx, prefix+"hosts/web-2/record", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("web-1 writing under hosts/web-2/: %v, want permission denied", err)
	}
	if _, err := web1.Put(ctx, prefix+"hosts/web-10/record", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("web-1 writing under hosts/web-10/: %v, want permission denied", err)
	}

	// The federation role writes the shared bundles.
	fed := as("web-2")
	if _, err := fed.SetBundle(ctx, bundle); err != nil {
		t.Errorf("federation host storing a bundle: %v", err)
	}
	if _, err := host.GetBundle(ctx, bundle.TrustDomain); err != nil {
		t.Errorf("host reading the shared bundle: %v", err)
	}
	if _, err := host.DeleteBundle(ctx, bundle.TrustDomain); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("host deleting the shared bundle: %v, want store.ErrReadOnly", err)
	}
}
