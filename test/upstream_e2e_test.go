package test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/svidd/svidd/internal/testpki"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/svidfiles"
	"github.com/svidd/svidd/test/envoy"
)

// fleetHost is one svidd "host" of a fleet test, with a go-spiffe mTLS server workload and a
// client workload that dials the next host's server.
type fleetHost struct {
	name   string
	a      *agent
	server *child
	addr   string
	client *child
	// id is the server workload's SPIFFE ID when every host's server has the same one (a
	// fleet registry); "" is spiffe://example.org/<name>/server.
	id string
}

func (h *fleetHost) serverID() string {
	if h.id != "" {
		return h.id
	}
	return "spiffe://example.org/" + h.name + "/server"
}

// diskUpstream is a fleet's upstream PKI on disk: a root, which every host serves as its
// bundle, and an intermediate whose key signs every host's CA.
type diskUpstream struct {
	root, inter *testpki.CA
	hcl         string // the upstream "disk" {} block for ca {}
}

func newDiskUpstream(t *testing.T) diskUpstream {
	t.Helper()
	dir := t.TempDir()
	up := diskUpstream{root: testpki.Root(t, "fleet root", testpki.NoPathLen, 48*time.Hour)}
	up.inter = up.root.Intermediate(t, "fleet upstream intermediate", 1, 24*time.Hour)
	testpki.Write(t, filepath.Join(dir, "up.pem"), testpki.CertPEM(up.inter.Cert), 0o644)
	testpki.Write(t, filepath.Join(dir, "up.key"), up.inter.KeyPEM(t), 0o600)
	testpki.Write(t, filepath.Join(dir, "roots.pem"), testpki.CertPEM(up.root.Cert), 0o644)
	up.hcl = fmt.Sprintf(`  upstream "disk" {
    cert_file   = %q
    key_file    = %q
    bundle_file = %q
  }`, filepath.Join(dir, "up.pem"), filepath.Join(dir, "up.key"), filepath.Join(dir, "roots.pem"))
	return up
}

// startFleet starts n svidd hosts with caHCL as their ca {} body (plus node_name), registers
// on each a server (uid 1001) and a client (uid 1002) identity, and starts the server
// workloads (opts apply to every host's agent). Clients are started by startClients.
func startFleet(t *testing.T, n int, caHCL string, opts ...agentOpt) []*fleetHost {
	t.Helper()
	var hosts []*fleetHost
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("host-%d", i)
		h := &fleetHost{name: name}
		h.a = startAgent(t, append([]agentOpt{withConfig(fmt.Sprintf("agent {\n  node_name = %q\n}\nca {\n%s\n}\n", name, caHCL))}, opts...)...)
		h.a.createEntry(h.serverID(), "-selector", "unix:uid:1001")
		h.a.createEntry("spiffe://example.org/"+name+"/client", "-selector", "unix:uid:1002")
		h.server = startAs(t, 1001, 1001, nil, bins.spiffeclient, "-socket", h.a.api, "-timeout", "10m", "mesh-serve")
		var first struct{ Addr string }
		if err := json.Unmarshal([]byte(h.server.next(t, 30*time.Second)), &first); err != nil {
			t.Fatal(err)
		}
		h.addr = first.Addr
		hosts = append(hosts, h)
	}
	return hosts
}

// startClients starts on each host a client that dials the next host's server (a ring) until
// stopped.
func startClients(t *testing.T, hosts []*fleetHost) {
	t.Helper()
	for i, h := range hosts {
		peer := hosts[(i+1)%len(hosts)]
		h.client = startAs(t, 1002, 1002, nil, bins.spiffeclient, "-socket", h.a.api, "-timeout", "10m",
			"mesh-dial", "-addr", peer.addr, "-authorize", peer.serverID(), "-every", "150ms", "-for", "0s")
	}
}

// meshSummary is what a mesh-dial client reports when stopped.
type meshSummary struct {
	Dials        int      `json:"dials"`
	DialFailures int      `json:"dial_failures"`
	SVIDChecks   int      `json:"svid_checks"`
	BadSVIDs     int      `json:"bad_svids"`
	Errors       []string `json:"errors"`
	OwnCAs       int      `json:"own_cas"`
	PeerCAs      int      `json:"peer_cas"`
	Serials      int      `json:"serials"`
	Bundles      []string `json:"bundles"`
}

// stopClients stops every client and checks what each saw: every dial succeeded, every SVID
// it held was unexpired and verified against the bundle it held, SVIDs from at least minCAs
// host CAs on both sides (so rotations happened under the traffic), and one and the same
// bundle on every host.
func stopClients(t *testing.T, hosts []*fleetHost, minCAs int) {
	t.Helper()
	var bundles []string
	for _, h := range hosts {
		_ = h.client.cmd.Process.Signal(syscall.SIGTERM)
		line := h.client.next(t, 30*time.Second)
		var s meshSummary
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("%s client: %v: %s", h.name, err, line)
		}
		t.Logf("%s client: %d dials, %d SVID checks, %d serials, own CAs %d, peer CAs %d, bundles %v", h.name, s.Dials, s.SVIDChecks, s.Serials, s.OwnCAs, s.PeerCAs, s.Bundles)
		if s.DialFailures != 0 || s.BadSVIDs != 0 {
			t.Errorf("%s client: %d of %d dials failed, %d of %d held SVIDs were expired or unverifiable: %s\nagent log:\n%s",
				h.name, s.DialFailures, s.Dials, s.BadSVIDs, s.SVIDChecks, strings.Join(s.Errors, "\n"), h.a.logs.String())
		}
		if s.Dials < 50 {
			t.Errorf("%s client dialled only %d times", h.name, s.Dials)
		}
		if s.OwnCAs < minCAs || s.PeerCAs < minCAs {
			t.Errorf("%s client saw SVIDs from %d own and %d peer host CAs, want at least %d each (rotations under traffic)", h.name, s.OwnCAs, s.PeerCAs, minCAs)
		}
		bundles = append(bundles, s.Bundles...)
	}
	slices.Sort(bundles)
	if bundles = slices.Compact(bundles); len(bundles) != 1 {
		t.Errorf("workloads held %d different bundles across the hosts, want one: %v", len(bundles), bundles)
	}
}

// activations counts the CA activations a host has logged.
func activations(a *agent) int {
	n := 0
	for _, l := range strings.Split(a.logs.String(), "\n") {
		if strings.Contains(l, "CA rotated") && strings.Contains(l, "activate") {
			n++
		}
	}
	return n
}

// waitActivations waits until every host has logged at least n CA activations.
func waitActivations(t *testing.T, hosts []*fleetHost, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, h := range hosts {
		for activations(h.a) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s logged %d CA activations in %s, want %d:\n%s", h.name, activations(h.a), within, n, h.a.logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// sameBundles checks that every host serves want, byte for byte, as its bundle.
func sameBundles(t *testing.T, hosts []*fleetHost, want []byte) {
	t.Helper()
	for _, h := range hosts {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b, err := admin.NewClient(h.a.admin).Bundle(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal([]byte(b.PEM), want) {
			t.Fatalf("%s serves a bundle that is not the upstream's roots:\n%s", h.name, b.PEM)
		}
	}
}

// TestFleetDiskUpstream: three svidd hosts (separate processes, data dirs, sockets, node
// names) under one disk upstream. go-spiffe workloads on each host do mTLS with a workload on
// the next host continuously while every host's CA rotates at least twice; every handshake
// succeeds, every held SVID verifies, and every host serves the upstream root as its bundle,
// byte for byte, throughout.
func TestFleetDiskUpstream(t *testing.T) {
	requireRoot(t)
	waitsInParallel(t)
	up := newDiskUpstream(t)
	hosts := startFleet(t, 3, "  ca_ttl   = \"30s\"\n  svid_ttl = \"5s\"\n"+up.hcl)
	want := testpki.CertPEM(up.root.Cert)
	sameBundles(t, hosts, want)
	checkChainsServed(t, hosts[0].a, up.inter.Cert)
	startClients(t, hosts)
	for range 2 {
		waitActivations(t, hosts, activations(hosts[len(hosts)-1].a)+1, 60*time.Second)
		sameBundles(t, hosts, want)
	}
	time.Sleep(2 * time.Second) // traffic on the newest CAs
	stopClients(t, hosts, 3)
	sameBundles(t, hosts, want)
}

// TestFleetStepCAUpstream: the same fleet under a real step-ca (the pinned version, built
// once into a cache outside the repository by test/tools/stepca.sh), whose JWK provisioner's
// template issues the host CAs. Then step-ca is stopped across a host's prepare time: the
// failures are retried and counted (svidd_ca_upstream_failures_total, svidctl status), /ready
// stays green, no workload ever holds an expired or unverifiable SVID nor fails a handshake,
// and rotation resumes on every host once step-ca is back.
func TestFleetStepCAUpstream(t *testing.T) {
	requireRoot(t)
	waitsInParallel(t)
	s := testpki.StartStepCA(t, t.TempDir(), 5*time.Second)
	hosts := startFleet(t, 3, fmt.Sprintf(`  ca_ttl   = "30s"
  svid_ttl = "5s"
  upstream "step_ca" {
    url                  = %q
    root_file            = %q
    provisioner          = %q
    provisioner_key_file = %q
    password_file        = %q
  }`, s.URL, s.RootFile, s.Provisioner, s.KeyFile, s.PasswordFile), plainBinaries())
	want := testpki.CertPEM(s.Root.Cert)
	sameBundles(t, hosts, want)
	for _, h := range hosts {
		// step-ca's log names the host that asked: the CSR's and token's subject.
		if !strings.Contains(s.Logs(), h.name) {
			t.Errorf("step-ca's log does not name %s", h.name)
		}
	}
	startClients(t, hosts)
	waitActivations(t, hosts, 1, 60*time.Second)

	// The earliest next prepare time among the hosts; step-ca goes down just before it and
	// stays down 6 s (plus its start-up), while that host's active CA has half its life (15 s)
	// left at its prepare time.
	var earliest time.Time
	for _, h := range hosts {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := admin.NewClient(h.a.admin).Status(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var prepared bool
		var active admin.Authority
		for _, a := range st.Authorities {
			prepared = prepared || a.State == "prepared"
			if a.State == "active" {
				active = a
			}
		}
		next := active.NotBefore.Add(active.NotAfter.Sub(active.NotBefore) / 2)
		if prepared || next.Before(time.Now().Add(2*time.Second)) {
			// Already prepared (or about to be): its next prepare is a life later.
			life := active.NotAfter.Sub(active.NotBefore)
			next = active.NotAfter.Add(-life / 6).Add(life / 2)
		}
		if earliest.IsZero() || next.Before(earliest) {
			earliest = next
		}
	}
	before := map[string]int{}
	for _, h := range hosts {
		before[h.name] = activations(h.a)
	}
	time.Sleep(time.Until(earliest.Add(-time.Second)))
	s.Stop()
	stoppedAt := time.Now()
	time.Sleep(6 * time.Second)
	var failed int
	for _, h := range hosts {
		st := statusOf(t, h.a)
		m := scrape(t, h.a.metricsAddr())
		n := m["svidd_ca_upstream_failures_total"]
		if st.Upstream == nil || st.Upstream.Name != "step_ca" || float64(st.Upstream.Failures) != n {
			t.Errorf("%s: status upstream %+v, metric %v: they disagree", h.name, st.Upstream, n)
		}
		if n > 0 {
			failed++
			if !strings.Contains(h.a.logs.String(), "upstream failed to sign a CA") {
				t.Errorf("%s counted %v failures but logged none", h.name, n)
			}
		}
		if out, err := h.a.svidctl("healthcheck"); err != nil {
			t.Errorf("%s not ready while step-ca is down but its CA is valid: %v %s", h.name, err, out)
		}
	}
	if failed == 0 {
		t.Fatalf("no host counted an upstream failure while step-ca was down since %s (earliest prepare %s)", stoppedAt.Format(time.TimeOnly), earliest.Format(time.TimeOnly))
	}
	s.Start()
	restarted := time.Now()
	// Every host rotates again with step-ca back; the ones that failed first retry with
	// backoff and succeed.
	for _, h := range hosts {
		for deadline := time.Now().Add(60 * time.Second); activations(h.a) <= before[h.name]+1; {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not resume rotating after step-ca came back at %s:\n%s", h.name, restarted.Format(time.TimeOnly), h.a.logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if st := statusOf(t, h.a); st.Upstream.Failures != 0 || st.Upstream.LastSuccess.Before(restarted) {
			t.Errorf("%s after recovery: %+v", h.name, st.Upstream)
		}
	}
	t.Logf("%d of %d hosts counted failures while step-ca was down", failed, len(hosts))
	stopClients(t, hosts, 3)
	sameBundles(t, hosts, want)
}

func statusOf(t *testing.T, a *agent) admin.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := admin.NewClient(a.admin).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkChainsServed checks that an SVID's chain (leaf, host CA, upstream intermediate; never the
// root) goes out over SDS (certificate_chain) and in `svidctl svid fetch -dir` files, and
// verifies there against the roots served alongside it.
func checkChainsServed(t *testing.T, a *agent, upstreamInter *x509.Certificate) {
	t.Helper()
	const id = "spiffe://example.org/host-1/tools"
	a.createEntry(id, "-selector", "unix:uid:0")
	check := func(where string, certs, roots []*x509.Certificate) {
		t.Helper()
		if len(certs) != 3 || !certs[2].Equal(upstreamInter) {
			t.Fatalf("%s: chain of %d certificates, want leaf, host CA, upstream intermediate", where, len(certs))
		}
		if _, _, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(td, roots)); err != nil {
			t.Fatalf("%s: chain does not verify against the roots served with it: %v", where, err)
		}
	}
	s := dialAgentNames(t, a, []string{id, tdID})
	var certs, roots []*x509.Certificate
	for ctx := ctxFor(t, 30*time.Second); certs == nil || roots == nil; {
		r, err := s.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sec := r.Get(id); sec != nil {
			if certs, _, err = envoy.CertAndKey(sec); err != nil {
				t.Fatal(err)
			}
		}
		if sec := r.Get(tdID); sec != nil {
			if roots, err = envoy.TrustedCA(sec); err != nil {
				t.Fatal(err)
			}
		}
	}
	check("SDS", certs, roots)

	dir := t.TempDir()
	if out, err := runSvidctl("svid", "fetch", "-socketPath", a.api, "-dir", dir); err != nil {
		t.Fatal(err, out)
	}
	read := func(name string) []*x509.Certificate {
		data, err := os.ReadFile(filepath.Join(dir, svidfiles.CurrentLink, name))
		if err != nil {
			t.Fatal(err)
		}
		var out []*x509.Certificate
		for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
		return out
	}
	check("svid fetch files", read(svidfiles.SVIDFile), read(svidfiles.BundleFile))
}
