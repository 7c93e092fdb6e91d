package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
)

const prefix = "/svidd/"

func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// node is one host's fleet parts on a real etcd and a real SQLite file.
type node struct {
	name string
	db   *store.SQLite
	keys *fleet.Keys
	pub  *fleet.Publisher
	log  *proctest.Buffer

	mu  sync.Mutex
	own []fleet.Key

	stop func()
}

func startNode(t *testing.T, cli *clientv3.Client, name, dbPath string) *node {
	t.Helper()
	n := &node{name: name, log: &proctest.Buffer{}}
	db, err := store.OpenSQLite(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	n.db = db
	log := slog.New(slog.NewTextHandler(n.log, nil))
	// Every is long: the re-publishing this test sees is the one Keys triggers.
	n.pub, err = fleet.NewPublisher(fleet.PublisherConfig{Client: cli, Prefix: prefix, Node: name, Keys: n.ownKeys,
		Margin: time.Second, Every: time.Hour, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	n.keys, err = fleet.NewKeys(fleet.KeysConfig{Client: cli, Prefix: prefix, Node: name, Local: db,
		Margin: time.Second, OnOwnChange: n.pub.Trigger, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.keys.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.keys.Run(ctx) })
	wg.Go(func() { n.pub.Run(ctx) })
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			db.Close()
		})
	}
	t.Cleanup(n.stop)
	return n
}

func (n *node) ownKeys() []fleet.Key {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.own)
}

func (n *node) setKeys(ks ...fleet.Key) {
	n.mu.Lock()
	n.own = ks
	n.mu.Unlock()
	n.pub.Trigger()
}

func kids(ks []fleet.Key) []string {
	out := make([]string, 0, len(ks))
	for _, k := range ks {
		out = append(out, k.Node+"/"+k.KID)
	}
	return out
}

func newKey(t *testing.T, node, kid string, notAfter time.Time) fleet.Key {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return fleet.Key{Node: node, KID: kid, Public: k.Public(), NotAfter: notAfter}
}

func eventually(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func snapshotIs(n *node, want ...string) func() bool {
	return func() bool {
		ks, _ := n.keys.Snapshot()
		return slices.Equal(kids(ks), want)
	}
}

func records(t *testing.T, cli *clientv3.Client, node string) []string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix+"hosts/"+node+"/jwtkeys/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key[len(prefix+"hosts/"+node+"/jwtkeys/"):]))
	}
	return out
}

// TestKeysAcrossHosts: host a publishes its keys, host b follows them; a key whose lease
// ends leaves the registry and b's keys; a lost lease is re-published; a key a no longer has
// is removed; a bad record is skipped and logged once; b's copy survives a restart without
// etcd.
func TestKeysAcrossHosts(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cli := etcdClient(t, c.Endpoints()...)
	dir := t.TempDir()
	a := startNode(t, cli, "a", filepath.Join(dir, "a.db"))
	b := startNode(t, cli, "b", filepath.Join(dir, "b.db"))

	long := newKey(t, "a", "a-long", time.Now().Add(time.Hour))
	short := newKey(t, "a", "a-short", time.Now().Add(2*time.Second))
	a.setKeys(long, short)
	b.setKeys(newKey(t, "b", "b-1", time.Now().Add(time.Hour)))
	eventually(t, "b has a's keys", 10*time.Second, snapshotIs(b, "a/a-long", "a/a-short"))
	eventually(t, "a has b's key", 10*time.Second, snapshotIs(a, "b/b-1"))
	_, rev1 := b.keys.Snapshot()

	// The short key's lease ends (NotAfter + 1 s margin): gone from etcd and from b.
	eventually(t, "the short key's lease ended in etcd", 15*time.Second, func() bool {
		return slices.Equal(records(t, cli, "a"), []string{"a-long"})
	})
	eventually(t, "the short key left b", 5*time.Second, snapshotIs(b, "a/a-long"))
	if _, rev2 := b.keys.Snapshot(); rev2 <= rev1 {
		t.Fatalf("revision %d after the lease ended, %d before", rev2, rev1)
	}

	// The lease of a's long key is lost (revoked by hand): a sees its record go and puts it
	// back under a new lease.
	resp, err := cli.Get(context.Background(), prefix+"hosts/a/jwtkeys/a-long")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("a's record: %v %v", resp, err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	if ttl, err := cli.TimeToLive(context.Background(), lease); err != nil || ttl.TTL < 3500 || ttl.TTL > 3602 {
		t.Fatalf("lease TTL %v (%v), want about an hour", ttl, err)
	}
	if _, err := cli.Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a re-published its key under a new lease", 10*time.Second, func() bool {
		r, err := cli.Get(context.Background(), prefix+"hosts/a/jwtkeys/a-long")
		return err == nil && len(r.Kvs) == 1 && clientv3.LeaseID(r.Kvs[0].Lease) != lease
	})
	eventually(t, "b has it again", 5*time.Second, snapshotIs(b, "a/a-long"))

	// Bad records: a private key, a kid that is not the name's. Skipped, logged once each,
	// and the good keys are still there.
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := json.Marshal(jose.JSONWebKey{Key: priv, KeyID: "evil-1", Use: "jwt-svid"})
	bad, _ := json.Marshal(map[string]any{"kid": "evil-1", "jwk": json.RawMessage(jwk), "not_after": time.Now().Add(time.Hour)})
	for range 2 {
		if _, err := cli.Put(context.Background(), prefix+"hosts/evil/jwtkeys/evil-1", string(bad)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(context.Background(), prefix+"hosts/evil/jwtkeys/evil-2", "not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), prefix+"hosts/evil/node", "a node record, not a key"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both bad records logged", 5*time.Second, func() bool {
		return strings.Count(b.log.String(), "skipping a bad JWT key record") == 2
	})
	time.Sleep(200 * time.Millisecond)
	if n := strings.Count(b.log.String(), "skipping a bad JWT key record"); n != 2 {
		t.Fatalf("bad records logged %d times, want once each (2)", n)
	}
	if ks, _ := b.keys.Snapshot(); !slices.Equal(kids(ks), []string{"a/a-long"}) {
		t.Fatalf("b's keys with bad records around: %v", kids(ks))
	}

	// a drops its long key: its record goes, and b drops it.
	extra := newKey(t, "a", "a-next", time.Now().Add(time.Hour))
	a.setKeys(extra)
	eventually(t, "a's registry records follow its keys", 10*time.Second, func() bool {
		return slices.Equal(records(t, cli, "a"), []string{"a-next"})
	})
	eventually(t, "b follows", 5*time.Second, snapshotIs(b, "a/a-next"))

	// b restarts while etcd is unreachable: its copy still trusts a's key.
	b.stop()
	c.Stop()
	dead := etcdClient(t, c.Endpoints()...)
	b2 := startNode(t, dead, "b", filepath.Join(dir, "b.db"))
	if ks, _ := b2.keys.Snapshot(); !slices.Equal(kids(ks), []string{"a/a-next"}) {
		t.Fatalf("b's keys after a restart with etcd down: %v", kids(ks))
	}
}

// TestKeysAfterCompaction: a host cut off from etcd while keys come and go and the history
// is compacted reloads everything when it is back, and trusts exactly the keys that exist.
// A key expires on the host while it is cut off, whatever etcd says.
func TestKeysAfterCompaction(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	cli := etcdClient(t, c.Endpoints()...)
	dir := t.TempDir()
	a := startNode(t, cli, "a", filepath.Join(dir, "a.db"))
	b := startNode(t, etcdClient(t, "http://"+p.Addr()), "b", filepath.Join(dir, "b.db"))

	k1 := newKey(t, "a", "k1", time.Now().Add(time.Hour))
	soon := newKey(t, "a", "soon", time.Now().Add(2*time.Second))
	a.setKeys(k1, soon)
	eventually(t, "b has a's keys", 10*time.Second, snapshotIs(b, "a/k1", "a/soon"))

	p.Cut()
	// Cut off, b still drops the expiring key at its NotAfter + margin.
	eventually(t, "b dropped the expired key while cut off", 10*time.Second, snapshotIs(b, "a/k1"))
	eventually(t, "and from its copy, at once", time.Second, func() bool {
		rows, _, err := b.db.FleetKeys(context.Background())
		return err == nil && len(rows) == 1 && rows[0].Name == "a/jwtkeys/k1"
	})
	k2 := newKey(t, "a", "k2", time.Now().Add(time.Hour))
	a.setKeys(k2)
	eventually(t, "a's records changed", 10*time.Second, func() bool {
		return slices.Equal(records(t, cli, "a"), []string{"k2"})
	})
	resp, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(context.Background(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	p.Restore()
	eventually(t, "b reloaded after the compaction", 15*time.Second, snapshotIs(b, "a/k2"))
	if _, rev := b.keys.Snapshot(); rev < resp.Header.Revision {
		t.Fatalf("b's revision %d after the reload, want at least %d", rev, resp.Header.Revision)
	}
	// And its copy says the same.
	var names []string
	eventually(t, "b's copy holds what etcd holds", 5*time.Second, func() bool {
		rows, _, err := b.db.FleetKeys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		for _, r := range rows {
			names = append(names, r.Name)
		}
		return slices.Equal(names, []string{"a/jwtkeys/k2"})
	})
}
