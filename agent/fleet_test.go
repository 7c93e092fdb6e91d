package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/agent"
	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/federation"
)

// jwtHost is one svidd of the fleet JWT tests: its own node name, data dir and sockets, on a
// shared etcd.
type jwtHost struct {
	t     *testing.T
	cfg   conf.Config
	log   *proctest.Buffer
	admin *admin.Client
	// endpoint is the bundle endpoint's address, when one is configured.
	endpoint string
	cancel   context.CancelFunc
	done     chan error
}

func newJWTHost(t *testing.T, endpoints []string, node string, mod ...func(*conf.Config)) *jwtHost {
	t.Helper()
	dir, err := os.MkdirTemp("", "svidd-fl") // short: socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := conf.Default()
	cfg.NodeName = node
	cfg.SocketPath = filepath.Join(dir, "api.sock")
	cfg.AdminSocketPath = filepath.Join(dir, "admin.sock")
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Telemetry.PrometheusAddress = ""
	if endpoints != nil {
		cfg.Store = conf.StoreConfig{Kind: conf.StoreEtcd, Etcd: conf.EtcdConfig{Endpoints: endpoints, Prefix: "/svidd/"}}
	}
	for _, m := range mod {
		m(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := &jwtHost{t: t, cfg: cfg, admin: admin.NewClient(cfg.AdminSocketPath), log: &proctest.Buffer{}}
	h.start()
	t.Cleanup(h.stop)
	return h
}

func (h *jwtHost) start() {
	h.t.Helper()
	a, err := agent.New(agent.Config{Config: h.cfg, Logger: slog.New(slog.NewTextHandler(h.log, nil))})
	if err != nil {
		h.t.Fatal(err)
	}
	ls, err := a.Listen()
	if err != nil {
		h.t.Fatal(err)
	}
	if ls.BundleEndpoint != nil {
		h.endpoint = ls.BundleEndpoint.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- a.Serve(ctx, ls) }()
	eventually(h.t, h.cfg.NodeName+" ready", func() bool {
		hl, err := h.admin.Health(context.Background())
		return err == nil && hl.Ready
	})
}

func (h *jwtHost) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("Run on %s: %v", h.cfg.NodeName, err)
	}
	h.cancel = nil
}

// workload is the Workload API client of this test process on the host.
func (h *jwtHost) workload() *workloadapi.Client {
	h.t.Helper()
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr("unix://"+h.cfg.SocketPath))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func (h *jwtHost) jwtBundle() *jwtbundle.Bundle {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	set, err := h.workload().FetchJWTBundles(ctx)
	if err != nil {
		h.t.Fatalf("FetchJWTBundles on %s: %v", h.cfg.NodeName, err)
	}
	b, err := set.GetJWTBundleForTrustDomain(h.cfg.TrustDomain)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

func (h *jwtHost) hasKID(kid string) bool {
	_, ok := h.jwtBundle().FindJWTAuthority(kid)
	return ok
}

func (h *jwtHost) sequence() uint64 {
	h.t.Helper()
	b, err := h.admin.Bundle(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return b.Sequence
}

// activeKID is the JWT key ID of the host's active CA.
func (h *jwtHost) activeKID() string {
	h.t.Helper()
	as, err := h.admin.Authorities(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	for _, a := range as {
		if a.State == "active" {
			return a.JWTKeyID
		}
	}
	h.t.Fatal("no active authority")
	return ""
}

// TestFleetJWT runs three hosts on one etcd: a JWT-SVID minted on host 1 validates on host 3
// (ValidateJWTSVID, and go-spiffe's jwtsvid.ParseAndValidate with host 3's JWT bundle); a key
// whose lease ends leaves every host's bundle; a key host 1's CA prepares reaches host 3;
// the hosts agree on the bundle's spiffe_sequence, which never goes backwards; host 3
// restarted with etcd down still validates host 1's token.
func TestFleetJWT(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	h1 := newJWTHost(t, c.Endpoints(), "host-1")
	h2 := newJWTHost(t, c.Endpoints(), "host-2")
	h3 := newJWTHost(t, c.Endpoints(), "host-3")
	hosts := []*jwtHost{h1, h2, h3}

	// One entry for this test process, registered on host 1, served everywhere.
	var err error
	eventually(t, "an entry created on host 1", func() bool {
		_, err = h1.admin.CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/web",
			Selectors: []string{"unix:uid:" + strconv.Itoa(os.Getuid())}})
		return err == nil
	})
	w1, w3 := h1.workload(), h3.workload()
	var token string
	eventually(t, "a JWT-SVID from host 1", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := w1.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		if err == nil {
			token = s.Marshal()
		}
		return err == nil
	})
	kid1 := h1.activeKID()
	for _, h := range hosts {
		eventually(t, h.cfg.NodeName+" has every host's active JWT key", func() bool {
			for _, o := range hosts {
				if !h.hasKID(o.activeKID()) {
					return false
				}
			}
			return true
		})
	}
	validate := func(what string) {
		t.Helper()
		var got *jwtsvid.SVID
		eventually(t, what+": ValidateJWTSVID on host 3", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			got, err = w3.ValidateJWTSVID(ctx, token, "db")
			return err == nil
		})
		if got.ID.String() != "spiffe://example.org/web" {
			t.Fatalf("%s: validated %s", what, got.ID)
		}
		set := jwtbundle.NewSet(h3.jwtBundle())
		if _, err := jwtsvid.ParseAndValidate(token, set, []string{"db"}); err != nil {
			t.Fatalf("%s: jwtsvid.ParseAndValidate with host 3's bundle: %v", what, err)
		}
	}
	validate("fleet up")

	// The hosts agree on the sequence once caught up.
	agree := func(what string) uint64 {
		t.Helper()
		var seqs []uint64
		eventually(t, what+": every host serves the same spiffe_sequence", func() bool {
			seqs = seqs[:0]
			for _, h := range hosts {
				seqs = append(seqs, h.sequence())
			}
			return seqs[0] == seqs[1] && seqs[1] == seqs[2]
		})
		return seqs[0]
	}
	seq := agree("fleet up")

	// Host 1's CA prepares its next authority: its JWT key reaches host 3.
	as, err := h1.admin.CAStep(context.Background(), "prepare")
	if err != nil {
		t.Fatal(err)
	}
	var prepared string
	for _, a := range as {
		if a.State == "prepared" {
			prepared = a.JWTKeyID
		}
	}
	if prepared == "" || prepared == kid1 {
		t.Fatalf("no new prepared JWT key after CAStep: %+v", as)
	}
	eventually(t, "host 1's prepared key on host 3", func() bool { return h3.hasKID(prepared) })
	if s := agree("after a prepare"); s <= seq {
		t.Fatalf("sequence %d after a prepare, %d before", s, seq)
	} else {
		seq = s
	}

	// A key whose lease ends: a host that published it and went away.
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	gone := putKey(t, cli, "host-9", 3*time.Second)
	for _, h := range hosts {
		eventually(t, h.cfg.NodeName+" has the key of host 9", func() bool { return h.hasKID(gone) })
	}
	for _, h := range hosts {
		eventually(t, h.cfg.NodeName+" dropped the key of host 9 when its lease ended", func() bool { return !h.hasKID(gone) })
	}
	if s := agree("after a lease ended"); s <= seq {
		t.Fatalf("sequence %d after a lease ended, %d before", s, seq)
	} else {
		seq = s
	}

	// Host 3 restarts with etcd down: host 1's token still validates, the sequence did not
	// go backwards.
	h3.stop()
	c.Stop()
	h3.start()
	w3 = h3.workload()
	validate("host 3 restarted with etcd down")
	if s := h3.sequence(); s < seq {
		t.Fatalf("host 3's sequence %d after a restart, %d before", s, seq)
	}
	// Still offline, host 3's CA prepares a key: its bundle changes, the sequence moves by one.
	before := h3.sequence()
	if _, err := h3.admin.CAStep(context.Background(), "prepare"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "host 3's offline rotation counted", func() bool { return h3.sequence() == before+1 })
	offline := before + 1
	c.Start()
	// etcd back: host 3 publishes its new key, and every host agrees above what host 3
	// counted offline.
	if s := agree("etcd back"); s <= offline {
		t.Fatalf("sequence %d with etcd back, %d counted offline", s, offline)
	}
	var prepared3 string
	as, err = h3.admin.Authorities(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.State == "prepared" {
			prepared3 = a.JWTKeyID
		}
	}
	eventually(t, "host 3's offline key reaches host 1", func() bool { return h1.hasKID(prepared3) })
}

// putKey publishes a JWT key for node as a host would, under a lease of ttl, and returns
// its kid.
func putKey(t *testing.T, cli *clientv3.Client, node string, ttl time.Duration) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid := fmt.Sprintf("%s-%d", node, time.Now().UnixNano())
	jwk, err := json.Marshal(jose.JSONWebKey{Key: k.Public(), KeyID: kid, Use: "jwt-svid"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := json.Marshal(map[string]any{"kid": kid, "jwk": json.RawMessage(jwk), "not_after": time.Now().Add(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := cli.Grant(context.Background(), int64(ttl/time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), "/svidd/hosts/"+node+"/jwtkeys/"+kid, string(v), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	return kid
}

// TestFleetSharedFederation: two hosts of example.org federate with other.org (a svidd with
// an https_spiffe bundle endpoint); one of them fetches, both serve the bundle, which etcd
// holds under bundles/; when the fetcher stops, the other host takes over.
func TestFleetSharedFederation(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	other := spiffeid.RequireTrustDomainFromString("other.org")
	foreign := newJWTHost(t, nil, "foreign", func(cfg *conf.Config) {
		cfg.TrustDomain = other
		cfg.Federation.Endpoint = &conf.BundleEndpointConfig{Address: "127.0.0.1:0", Profile: federation.ProfileHTTPSSPIFFE}
	})
	b, err := foreign.admin.Bundle(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(bootstrap, []byte(b.PEM), 0o600); err != nil {
		t.Fatal(err)
	}
	federate := func(cfg *conf.Config) {
		cfg.Federation.FederatesWith = []conf.FederatesWith{{
			TrustDomain: other, BundleEndpointURL: "https://" + foreign.endpoint, Profile: federation.ProfileHTTPSSPIFFE,
			EndpointSPIFFEID: federation.EndpointID(other), BundleFile: bootstrap,
		}}
	}
	h1 := newJWTHost(t, c.Endpoints(), "host-1", federate)
	h2 := newJWTHost(t, c.Endpoints(), "host-2", federate)
	const leads = "this host fetches the bundle for the fleet"
	for _, h := range []*jwtHost{h1, h2} {
		eventually(t, h.cfg.NodeName+" serves other.org's bundle fetched from its endpoint", func() bool {
			bs, err := h.admin.ListBundles(context.Background())
			return err == nil && len(bs) == 1 && bs[0].HasBundle && bs[0].Source == "endpoint"
		})
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	eventually(t, "the bundle shared in etcd", func() bool {
		r, err := cli.Get(context.Background(), "/svidd/bundles/other.org")
		return err == nil && len(r.Kvs) == 1
	})
	n1, n2 := strings.Count(h1.log.String(), leads), strings.Count(h2.log.String(), leads)
	if n1+n2 != 1 {
		t.Fatalf("hosts that fetch: host-1 %d, host-2 %d; want exactly one", n1, n2)
	}
	fetcher, standby := h1, h2
	if n2 == 1 {
		fetcher, standby = h2, h1
	}
	fetcher.stop()
	eventually(t, standby.cfg.NodeName+" takes over fetching", func() bool { return strings.Contains(standby.log.String(), leads) })
}
