package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/svidd/svidd/test/envoy"
)

const (
	tdName      = "example.org"
	tdID        = "spiffe://example.org"
	frontendID  = "spiffe://example.org/frontend"
	backendID   = "spiffe://example.org/backend"
	uidFrontend = 1001
	uidBackend  = 1002
)

var td = spiffeid.RequireTrustDomainFromString(tdName)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// verifySVID parses a TlsCertificate summary and checks it with go-spiffe against the bundle
// PEM the agent sent: the SPIFFE X509-SVID rules, the chain, and the key matching the leaf.
func verifySVID(t *testing.T, certPEM, keyPEM, bundlePEM, wantID string) *x509svid.SVID {
	t.Helper()
	svid, err := x509svid.Parse([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatalf("x509svid.Parse: %v", err)
	}
	bundle, err := x509bundle.Parse(td, []byte(bundlePEM))
	if err != nil {
		t.Fatalf("parsing bundle: %v", err)
	}
	var raw [][]byte
	for _, c := range svid.Certificates {
		raw = append(raw, c.Raw)
	}
	id, _, err := x509svid.ParseAndVerify(raw, bundle)
	if err != nil {
		t.Fatalf("x509svid.ParseAndVerify against the bundle sent: %v", err)
	}
	if id.String() != wantID {
		t.Fatalf("SVID is for %s, want %s", id, wantID)
	}
	return svid
}

// fetchAs runs the fake Envoy as uid and returns the first response it prints.
func fetchAs(t *testing.T, a *agent, uid uint32, names ...string) envoy.Summary {
	t.Helper()
	c := startAs(t, uid, uid, nil, bins.fakeenvoy, "-socket", a.api, "-names", strings.Join(names, ","), "-timeout", "20s")
	var s envoy.Summary
	if err := json.Unmarshal([]byte(c.next(t, 25*time.Second)), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func resource(t *testing.T, s envoy.Summary, name string) envoy.SecretSummary {
	t.Helper()
	for _, r := range s.Resources {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("response has no resource %q (has %v)", name, s.Resources)
	return envoy.SecretSummary{}
}

// TestTwoWorkloadsGetTheirSVIDsAndHandshake is the headline: two Envoys under two uids each get
// their own SVID and the bundle over SDS, the SVIDs verify against the bundle, and the two
// workloads complete an mTLS handshake authorizing each other's SPIFFE ID.
func TestTwoWorkloadsGetTheirSVIDsAndHandshake(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(frontendID, "-selector", "unix:uid:1001")
	a.createEntry(backendID, "-selector", "unix:uid:1002", "-dns", "backend.local")

	fr := fetchAs(t, a, uidFrontend, frontendID, tdID)
	be := fetchAs(t, a, uidBackend, backendID, tdID)

	frCert := resource(t, fr, frontendID)
	frCA := resource(t, fr, tdID)
	if frCert.Kind != envoy.KindTLSCertificate || frCA.Kind != envoy.KindValidationContext {
		t.Fatalf("kinds: %s, %s", frCert.Kind, frCA.Kind)
	}
	beCert := resource(t, be, backendID)
	beCA := resource(t, be, tdID)
	frSVID := verifySVID(t, frCert.CertChainPEM, frCert.KeyPEM, frCA.TrustedCAPEM, frontendID)
	beSVID := verifySVID(t, beCert.CertChainPEM, beCert.KeyPEM, beCA.TrustedCAPEM, backendID)
	if got := beSVID.Certificates[0].DNSNames; len(got) != 1 || got[0] != "backend.local" {
		t.Errorf("backend DNS SANs = %v, want [backend.local]", got)
	}
	if frCA.TrustedCAPEM != beCA.TrustedCAPEM {
		t.Error("the two workloads got different bundles for one trust domain")
	}
	bundle, err := x509bundle.Parse(td, []byte(frCA.TrustedCAPEM))
	if err != nil {
		t.Fatal(err)
	}

	// Server = frontend, client = backend; each authorizes the other's exact ID.
	if err := handshake(frSVID, beSVID, bundle, spiffeid.RequireFromString(backendID), spiffeid.RequireFromString(frontendID)); err != nil {
		t.Fatalf("mTLS handshake between the two workloads: %v", err)
	}
	// The authorization is real: a client that expects someone else refuses the server.
	if err := handshake(frSVID, beSVID, bundle, spiffeid.RequireFromString(backendID), spiffeid.RequireFromString("spiffe://example.org/other")); err == nil {
		t.Fatal("handshake succeeded although the client authorized a different server ID")
	}
}

// handshake runs a TLS 1.3 mutual handshake over a loopback TCP connection, both sides
// trusting bundle.
func handshake(server, client *x509svid.SVID, bundle *x509bundle.Bundle, wantClient, wantServer spiffeid.ID) error {
	return handshakeWith(server, bundle, client, bundle, wantClient, wantServer)
}

// handshakeWith is handshake where each side trusts the bundle it holds.
func handshakeWith(server *x509svid.SVID, serverBundle *x509bundle.Bundle, client *x509svid.SVID, clientBundle *x509bundle.Bundle, wantClient, wantServer spiffeid.ID) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, tlsconfig.MTLSServerConfig(server, serverBundle, tlsconfig.AuthorizeID(wantClient)))
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte("ok"))
		}
		srvErr <- err
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, tlsconfig.MTLSClientConfig(client, clientBundle, tlsconfig.AuthorizeID(wantServer)))
	if err := tc.Handshake(); err != nil {
		<-srvErr
		return err
	}
	buf := make([]byte, 2)
	if _, err := tc.Read(buf); err != nil {
		return err
	}
	return <-srvErr
}

// TestOtherUIDGetsNothing: a caller asking for another workload's SPIFFE ID receives nothing
// (not an error that closes its stream, and never the SVID).
func TestOtherUIDGetsNothing(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(frontendID, "-selector", "unix:uid:1001")
	a.createEntry(backendID, "-selector", "unix:uid:1002")

	c := startAs(t, uidBackend, uidBackend, nil, bins.fakeenvoy, "-socket", a.api, "-names", frontendID, "-timeout", "2s", "-follow")
	if line, ok := c.nextOrNone(4 * time.Second); ok {
		t.Fatalf("uid %d asking for %s received: %s", uidBackend, frontendID, line)
	}
	<-c.done
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the stream was not kept open (fakeenvoy exit %d): %s", code, c.stderr.String())
	}
	// Wildcard from the same uid: only its own SVID.
	s := fetchAs(t, a, uidBackend)
	for _, r := range s.Resources {
		if r.Name == frontendID {
			t.Fatalf("wildcard request from uid %d returned %s", uidBackend, frontendID)
		}
	}
	resource(t, s, backendID)
}

// dialAgent connects in-process (as root, uid 0) like Envoy.
func dialAgent(t *testing.T, a *agent) *envoy.SotW {
	t.Helper()
	return dialAgentNames(t, a, nil)
}

func dialAgentNames(t *testing.T, a *agent, names []string, opts ...envoy.Option) *envoy.SotW {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	conn, err := envoy.Dial(ctx, a.api)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s, err := envoy.NewSotW(ctx, conn, envoy.NewNode("e2e"), names, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func leafOf(t *testing.T, r *envoy.Response, name string) *x509.Certificate {
	t.Helper()
	s := r.Get(name)
	if s == nil {
		t.Fatalf("response has no %s (has %v)", name, r.Names())
	}
	certs, _, err := envoy.CertAndKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// TestRotationPushedAtHalfLife: with a 5s TTL (the shortest accepted) the agent pushes a fresh SVID between 45% and
// 60% of the previous one's lifetime, several times over, and the stream never holds an
// expired certificate.
func TestRotationPushedAtHalfLife(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/short"
	a.createEntry(id, "-selector", "unix:uid:0", "-x509SVIDTTL", "5")
	s := dialAgentNames(t, a, []string{id})
	ctx := ctxFor(t, time.Minute)
	r, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prev := leafOf(t, r, id)
	for i := range 3 {
		r, err := s.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		cur := leafOf(t, r, id)
		if cur.SerialNumber.Cmp(prev.SerialNumber) == 0 {
			t.Fatalf("rotation %d: same serial pushed again", i)
		}
		life := prev.NotAfter.Sub(prev.NotBefore)
		frac := float64(now.Sub(prev.NotBefore)) / float64(life)
		t.Logf("rotation %d at %.1f%% of a %v lifetime", i, frac*100, life)
		if frac < 0.45 || frac > 0.60 {
			t.Errorf("rotation %d pushed at %.1f%% of the lifetime, want 45%%..60%%", i, frac*100)
		}
		if !now.Before(prev.NotAfter) {
			t.Fatalf("rotation %d arrived after the previous SVID expired", i)
		}
		if got := cur.NotAfter.Sub(cur.NotBefore); got > 6*time.Second {
			t.Errorf("TTL override ignored: lifetime %v", got)
		}
		prev = cur
	}
}

// TestEntryChangesReachOpenStream: a name asked for before the caller is entitled to it is
// remembered and pushed when the entry appears; an update re-mints and pushes; all on one
// stream that never reconnects.
func TestEntryChangesReachOpenStream(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/late"
	s := dialAgentNames(t, a, []string{id})
	ctx := ctxFor(t, time.Minute)
	if r, err := s.RecvWithin(ctx, 500*time.Millisecond); err != nil || r != nil {
		t.Fatalf("before any entry: got %v, %v; want nothing and the stream open", r, err)
	}
	entryID := a.createEntry(id, "-selector", "unix:uid:0")
	r, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := leafOf(t, r, id)

	a.mustSvidctl("entry", "update", "-entryID", entryID, "-dns", "late.local")
	r, err = s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second := leafOf(t, r, id)
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || len(second.DNSNames) != 1 || second.DNSNames[0] != "late.local" {
		t.Fatalf("after update: serial %v DNS %v, want a new SVID with late.local", second.SerialNumber, second.DNSNames)
	}
}

// TestNACKIsNotAnsweredByResend: after a NACK the agent sends nothing until something changes.
func TestNACKIsNotAnsweredByResend(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/nack"
	entryID := a.createEntry(id, "-selector", "unix:uid:0")
	s := dialAgentNames(t, a, []string{id}, envoy.ManualACK())
	ctx := ctxFor(t, time.Minute)
	if _, err := s.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.NACKLast("test: pretend the certificate was unusable"); err != nil {
		t.Fatal(err)
	}
	if r, err := s.RecvWithin(ctx, 1500*time.Millisecond); err != nil || r != nil {
		t.Fatalf("after NACK: got %v, %v; want silence (no resend loop)", r, err)
	}
	// The stream is still alive: a real change is pushed.
	a.mustSvidctl("entry", "update", "-entryID", entryID, "-dns", "after-nack.local")
	r, err := s.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := leafOf(t, r, id).DNSNames; len(got) != 1 || got[0] != "after-nack.local" {
		t.Fatalf("after NACK and update: DNS %v", got)
	}
	if n := logCount(a, "envoy rejected secrets"); n != 1 {
		t.Errorf("the NACK was logged %d times, want once:\n%s", n, a.logs.String())
	}
}

func logCount(a *agent, substr string) int { return strings.Count(a.logs.String(), substr) }

// TestDeltaRemovesDeletedEntry: only DeltaSecrets can take a secret away; deleting the entry
// sends removed_resources on the open stream.
func TestDeltaRemovesDeletedEntry(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/delta"
	entryID := a.createEntry(id, "-selector", "unix:uid:0")
	ctx := ctxFor(t, time.Minute)
	conn, err := envoy.Dial(ctx, a.api)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d, err := envoy.NewDelta(ctx, conn, envoy.NewNode("e2e-delta"), []string{id, tdID}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := map[string]bool{}
	for !got[id] || !got[tdID] {
		r, err := d.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range r.Resources {
			got[res.Name] = true
		}
	}
	a.mustSvidctl("entry", "delete", "-entryID", entryID)
	for {
		r, err := d.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Resources) > 0 && r.Get(id) != nil {
			t.Fatalf("after delete the SVID was sent again")
		}
		if containsStr(r.Removed, id) {
			return
		}
	}
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestRestartKeepsEntriesAndBundle: entries and the CA survive a restart (same bundle), and an
// Envoy that reconnects with its old version and nonce is answered.
func TestRestartKeepsEntriesAndBundle(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/persist"
	a.createEntry(id, "-selector", "unix:uid:0", "-dns", "persist.local")
	entriesBefore := a.mustSvidctl("entry", "list", "-output", "json")
	bundleBefore := a.mustSvidctl("bundle", "show")

	ctx := ctxFor(t, 2*time.Minute)
	rc, err := envoy.NewReconnecting(envoy.ReconnectConfig{SocketPath: a.api, Node: envoy.NewNode("e2e-restart"), Names: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.Recv(ctx); err != nil {
		t.Fatal(err)
	}

	a.restart()
	if got := a.mustSvidctl("entry", "list", "-output", "json"); got != entriesBefore {
		t.Fatalf("entries changed across restart:\nbefore %s\nafter %s", entriesBefore, got)
	}
	if got := a.mustSvidctl("bundle", "show"); got != bundleBefore {
		t.Fatal("bundle changed across restart")
	}
	r, err := rc.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(bundleBefore))
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOf(t, r, id)
	if err := leaf.CheckSignatureFrom(root); err != nil {
		t.Fatalf("after restart the SVID is not signed by the same CA: %v", err)
	}
	if rc.Streams() < 2 {
		t.Fatalf("client did not reconnect (streams=%d)", rc.Streams())
	}
}

// TestKill9KeepsAcknowledgedWrites: an entry the CLI saw acknowledged survives SIGKILL, and the
// stale sockets left behind do not stop the next start.
func TestKill9KeepsAcknowledgedWrites(t *testing.T) {
	a := startAgent(t)
	var want []string
	for i := range 10 {
		want = append(want, a.createEntry("spiffe://example.org/k"+string(rune('a'+i)), "-selector", "unix:uid:0"))
	}
	a.kill()
	a.start()
	out := a.mustSvidctl("entry", "list", "-output", "json")
	for _, id := range want {
		if !strings.Contains(out, id) {
			t.Fatalf("entry %s lost after kill -9:\n%s", id, out)
		}
	}
}
