package test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/test/envoy"
)

// The fleet's mesh workloads, registered once for every host: a server under uid 1001 and a
// client under uid 1002 on each host.
const (
	fleetServerID = "spiffe://example.org/fleet/server"
	fleetClientID = "spiffe://example.org/fleet/client"
	// fleetPrefix is the registry's key prefix (store "etcd" default).
	fleetPrefix = "/svidd/"
	// fleetOwnID is host-2's own entry, from its config file: served there only, never in etcd.
	fleetOwnID = "spiffe://example.org/fleet/host-2-own"
)

// fleetGroups are the hosts' node groups: web on host-1 and host-2, eu on host-1 only, db on
// host-3.
var fleetGroups = map[string][]string{"host-1": {"web", "eu"}, "host-2": {"web"}, "host-3": {"db"}}

// registryFleet is three svidd hosts following one registry: a three-member etcd cluster
// (TLS, a client certificate per host, CN = node name) and one trust domain under a disk
// upstream. Each host reaches every member through its own proxies, so a test can cut one
// host off the registry while the others keep writing.
type registryFleet struct {
	etcd    *etcdtest.Cluster
	cli     *clientv3.Client // the test's own client, straight to the members
	up      diskUpstream
	hosts   []*fleetHost
	proxies map[string][]*etcdtest.Proxy // by host name, one per member
	// health and metrics are each host's listener addresses, by host name.
	health, metrics map[string]string
}

// startRegistryFleet starts the cluster and the hosts (SVID TTL 5 s, the shortest accepted,
// under a 1 min CA), waits until every host has reached the registry, registers the mesh
// workloads once on host-1 and starts each host's mesh server. Everything stops when t ends.
func startRegistryFleet(t *testing.T) *registryFleet {
	t.Helper()
	requireRoot(t)
	f := &registryFleet{
		up:      newDiskUpstream(t),
		etcd:    etcdtest.Start(t, etcdtest.Options{Members: 3, TLS: true}),
		proxies: map[string][]*etcdtest.Proxy{},
		health:  map[string]string{},
		metrics: map[string]string{},
	}
	tc, err := f.etcd.ClientTLS("root")
	if err != nil {
		t.Fatal(err)
	}
	f.cli, err = clientv3.New(clientv3.Config{Endpoints: f.etcd.Endpoints(), TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cli.Close() })
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("host-%d", i)
		h := &fleetHost{name: name, id: fleetServerID}
		h.a = startAgent(t, withConfig(f.hostConfig(t, name)))
		f.health[name], f.metrics[name] = h.a.loggedAddr("health serving"), h.a.metricsAddr()
		f.hosts = append(f.hosts, h)
	}
	for _, h := range f.hosts {
		waitRegistry(t, h, true, 20*time.Second)
	}
	registerEntry(t, f.hosts[0].a, fleetServerID, "-selector", "unix:uid:1001")
	registerEntry(t, f.hosts[0].a, fleetClientID, "-selector", "unix:uid:1002")
	for _, h := range f.hosts {
		h.server = startAs(t, 1001, 1001, nil, bins.spiffeclient, "-socket", h.a.api, "-timeout", "10m", "mesh-serve")
		var first struct {
			Addr     string `json:"addr"`
			SPIFFEID string `json:"spiffe_id"`
		}
		if err := json.Unmarshal([]byte(h.server.next(t, 30*time.Second)), &first); err != nil {
			t.Fatal(err)
		}
		if first.SPIFFEID != fleetServerID {
			t.Fatalf("%s: mesh server holds %s, want %s (registered on host-1)", h.name, first.SPIFFEID, fleetServerID)
		}
		h.addr = first.Addr
	}
	return f
}

// hostConfig is one host's svidd.hcl: its node name and groups (and host-2 an entry of its
// own), the shared upstream, the registry through
// this host's proxies with this host's client certificate, and health and metrics listeners
// on free ports.
func (f *registryFleet) hostConfig(t *testing.T, name string) string {
	t.Helper()
	cert, key, err := f.etcd.CA.ClientFiles(name)
	if err != nil {
		t.Fatal(err)
	}
	var eps []string
	for _, m := range f.etcd.Members() {
		u, err := url.Parse(m.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		p := etcdtest.NewProxy(t, u.Host)
		f.proxies[name] = append(f.proxies[name], p)
		eps = append(eps, fmt.Sprintf("%q", "https://"+p.Addr()))
	}
	var groups []string
	for _, g := range fleetGroups[name] {
		groups = append(groups, fmt.Sprintf("%q", g))
	}
	own := ""
	if name == "host-2" {
		own = fmt.Sprintf("entry \"own\" {\n  spiffe_id = %q\n  selectors = [\"unix:uid:0\"]\n}\n", fleetOwnID)
	}
	return fmt.Sprintf(`agent {
  node_name   = %q
  node_groups = [%s]
}
ca {
  ca_ttl   = "1m"
  svid_ttl = "5s"
%s
}
store "etcd" {
  endpoints = [%s]
  prefix    = %q
  tls {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }
}
health {
  address = "127.0.0.1:0"
}
%s%s`, name, strings.Join(groups, ", "), f.up.hcl, strings.Join(eps, ", "), fleetPrefix, f.etcd.CA.CertFile, cert, key, own, testListeners)
}

// cut disconnects host h from every etcd member; restore reconnects it.
func (f *registryFleet) cut(h *fleetHost) {
	for _, p := range f.proxies[h.name] {
		p.Cut()
	}
}

func (f *registryFleet) restore(h *fleetHost) {
	for _, p := range f.proxies[h.name] {
		p.Restore()
	}
}

// waitRegistry waits until h's status shows the registry reachable (or not).
func waitRegistry(t *testing.T, h *fleetHost, reachable bool, within time.Duration) {
	t.Helper()
	eventually(t, within, fmt.Sprintf("%s: registry reachable = %v", h.name, reachable), func() bool {
		st := statusOf(t, h.a)
		return st.Registry != nil && st.Registry.Kind == "etcd" && st.Registry.Reachable == reachable
	})
}

// waitEntries waits until every host would serve each of ids (entry IDs) to a process of uid
// (present), or none of them: what svidctl explain -uid says, from the entries the host
// serves from (its copy of the registry), not from etcd.
func waitEntries(t *testing.T, hosts []*fleetHost, uid uint32, ids []string, present bool, within time.Duration) {
	t.Helper()
	for _, h := range hosts {
		c := admin.NewClient(h.a.admin)
		eventually(t, within, fmt.Sprintf("%s serves entries %v to uid %d = %v", h.name, ids, uid, present), func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			x, err := c.ExplainUID(ctx, uid)
			if err != nil {
				return false
			}
			have := map[string]bool{}
			for _, e := range x.Matched {
				have[e.ID] = true
			}
			for _, id := range ids {
				if have[id] != present {
					return false
				}
			}
			return true
		})
	}
}

// svidctlOK runs svidctl against h and fails t (a subtest's, where a.mustSvidctl would fail
// the test that started the agent) on error.
func svidctlOK(t *testing.T, h *fleetHost, args ...string) string {
	t.Helper()
	out, err := h.a.svidctl(args...)
	if err != nil {
		t.Fatalf("%s: %v", h.name, err)
	}
	return out
}

// waitCaller waits until h has attested a caller under uid on rpc (its stream is open).
func waitCaller(t *testing.T, h *fleetHost, uid uint32, rpc string) {
	t.Helper()
	c := admin.NewClient(h.a.admin)
	eventually(t, 20*time.Second, fmt.Sprintf("%s: a %s caller under uid %d", h.name, rpc, uid), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cs, err := c.Callers(ctx)
		if err != nil {
			return false
		}
		for _, cl := range cs {
			if cl.UID == uid && strings.Contains(cl.RPC, rpc) {
				return true
			}
		}
		return false
	})
}

// eventually polls cond every 50 ms until it holds, or fails after within.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpStatus returns the status code of GET url.
func httpStatus(t *testing.T, url string) int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// svidReceipt is one X509-SVID as a stream received it, with the roots it held then.
type svidReceipt struct {
	at    time.Time
	chain []*x509.Certificate
	roots []*x509.Certificate
}

// sdsFollower drives an in-process SDS stream (as Envoy, uid 0) and keeps what it holds now
// and every new SVID it received, per name.
type sdsFollower struct {
	name string // for messages: the host

	mu      sync.Mutex
	held    map[string]*tlsv3.Secret
	history map[string][]svidReceipt
	err     error
}

func newFollower(name string) *sdsFollower {
	return &sdsFollower{name: name, held: map[string]*tlsv3.Secret{}, history: map[string][]svidReceipt{}}
}

// followSotW follows a state-of-the-world stream: each response is everything it holds.
func followSotW(t *testing.T, h *fleetHost, names ...string) *sdsFollower {
	t.Helper()
	s := dialAgentNames(t, h.a, names)
	f := newFollower(h.name)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := s.Recv(ctx)
			if err != nil {
				f.fail(ctx, err)
				return
			}
			held := map[string]*tlsv3.Secret{}
			for _, sec := range r.Secrets {
				held[sec.GetName()] = sec
			}
			f.update(held)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// followDelta follows a DeltaSecrets stream: resources are added, updated and removed.
func followDelta(t *testing.T, h *fleetHost, names ...string) *sdsFollower {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := envoy.Dial(ctx, h.a.api)
	if err != nil {
		t.Fatal(err)
	}
	d, err := envoy.NewDelta(ctx, conn, envoy.NewNode("e2e-fleet"), names, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFollower(h.name)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := d.Recv(ctx)
			if err != nil {
				f.fail(ctx, err)
				return
			}
			f.mu.Lock()
			held := make(map[string]*tlsv3.Secret, len(f.held))
			for k, v := range f.held {
				held[k] = v
			}
			f.mu.Unlock()
			for _, res := range r.Resources {
				held[res.Name] = res.Secret
			}
			for _, n := range r.Removed {
				delete(held, n)
			}
			f.update(held)
		}
	}()
	t.Cleanup(func() { cancel(); d.Close(); conn.Close(); <-done })
	return f
}

func (f *sdsFollower) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return // the test ended the stream
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = fmt.Errorf("%s: SDS stream: %w", f.name, err)
	}
}

// update replaces what the stream holds and records each SVID not seen before.
func (f *sdsFollower) update(held map[string]*tlsv3.Secret) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = held
	var roots []*x509.Certificate
	if sec := held[tdID]; sec != nil {
		roots, _ = envoy.TrustedCA(sec) // validated by the client already
	}
	for name, sec := range held {
		if sec.GetTlsCertificate() == nil {
			continue
		}
		chain, _, err := envoy.CertAndKey(sec)
		if err != nil {
			if f.err == nil {
				f.err = fmt.Errorf("%s: %s: %w", f.name, name, err)
			}
			continue
		}
		hist := f.history[name]
		if n := len(hist); n > 0 && hist[n-1].chain[0].Equal(chain[0]) {
			continue
		}
		f.history[name] = append(hist, svidReceipt{at: now, chain: chain, roots: roots})
	}
}

// holds reports whether the stream holds name now.
func (f *sdsFollower) holds(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[name] != nil
}

func (f *sdsFollower) receipts(name string) []svidReceipt {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]svidReceipt(nil), f.history[name]...)
}

func (f *sdsFollower) failure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// waitHolds waits until every follower holds (or no longer holds) each of names, failing at
// once on a stream error.
func waitHolds(t *testing.T, fs []*sdsFollower, names []string, want bool, within time.Duration) {
	t.Helper()
	for _, f := range fs {
		eventually(t, within, fmt.Sprintf("%s: SDS stream holds %v = %v", f.name, names, want), func() bool {
			if err := f.failure(); err != nil {
				t.Fatal(err)
			}
			for _, n := range names {
				if f.holds(n) != want {
					return false
				}
			}
			return true
		})
	}
}

// checkReceipts checks an SVID's history on one stream: each one verified (go-spiffe) at the
// time it arrived against the roots the stream held then, for id; and each arrived before the
// one it replaced expired, so the stream never held an expired SVID. It returns how many
// arrived after since.
func checkReceipts(t *testing.T, f *sdsFollower, id string, since time.Time) int {
	t.Helper()
	hist := f.receipts(id)
	if len(hist) == 0 {
		t.Fatalf("%s: no SVID for %s received", f.name, id)
	}
	n := 0
	for i, r := range hist {
		if r.at.After(since) {
			n++
		}
		got, _, err := x509svid.Verify(r.chain, x509bundle.FromX509Authorities(td, r.roots), x509svid.WithTime(r.at))
		if err != nil {
			t.Errorf("%s: SVID %x received %s does not verify against the bundle held then: %v", f.name, r.chain[0].SerialNumber, r.at.Format(time.TimeOnly), err)
		} else if got.String() != id {
			t.Errorf("%s: SVID for %s, want %s", f.name, got, id)
		}
		if i > 0 && !r.at.Before(hist[i-1].chain[0].NotAfter) {
			t.Errorf("%s: SVID %x expired at %s before its successor arrived at %s", f.name, hist[i-1].chain[0].SerialNumber,
				hist[i-1].chain[0].NotAfter.Format(time.TimeOnly+".000"), r.at.Format(time.TimeOnly+".000"))
		}
	}
	if last := hist[len(hist)-1].chain[0]; !time.Now().Before(last.NotAfter) {
		t.Errorf("%s: holds SVID %x expired at %s", f.name, last.SerialNumber, last.NotAfter.Format(time.TimeOnly+".000"))
	}
	return n
}
