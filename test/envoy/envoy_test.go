package envoy

import (
	"context"
	"crypto"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/internal/proctest"
)

const frontend = "spiffe://example.org/frontend"

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openSotW(t *testing.T, path string, names []string, opts ...Option) *SotW {
	t.Helper()
	ctx := testCtx(t)
	conn, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s, err := NewSotW(ctx, conn, NewNode("node-1"), names, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestSotWFirstRequestAndACK(t *testing.T) {
	f, path := startFake(t)
	pki := newPKI(t, frontend)
	names := []string{frontend, "spiffe://example.org"}
	s := openSotW(t, path, names)

	first := nextReq(t, f)
	if first.GetNode().GetId() != "node-1" || first.GetTypeUrl() != SecretTypeURL ||
		!slices.Equal(first.GetResourceNames(), names) || first.GetVersionInfo() != "" || first.GetResponseNonce() != "" {
		t.Fatalf("first request = %v", first)
	}

	push(t, f, response(t, "v1", "n1", pki.tlsSecret(frontend), pki.caSecret("spiffe://example.org")))
	resp, err := s.Recv(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if resp.VersionInfo != "v1" || resp.Nonce != "n1" || !slices.Equal(resp.Names(), names) {
		t.Fatalf("response = %+v", resp)
	}
	ack := nextReq(t, f)
	if ack.GetResponseNonce() != "n1" || ack.GetVersionInfo() != "v1" || ack.GetErrorDetail() != nil {
		t.Fatalf("ACK = %v, want version v1 nonce n1 and no error", ack)
	}
	if ack.GetNode() != nil {
		t.Errorf("ACK carries node %v; Envoy sends node only on the first request", ack.GetNode())
	}
	if !slices.Equal(ack.GetResourceNames(), names) {
		t.Errorf("ACK names = %v, want %v", ack.GetResourceNames(), names)
	}
	if s.Version() != "v1" || s.Nonce() != "n1" {
		t.Errorf("tracked version/nonce = %q/%q", s.Version(), s.Nonce())
	}
}

func TestSotWNACK(t *testing.T) {
	f, path := startFake(t)
	pki := newPKI(t, frontend)
	s := openSotW(t, path, []string{frontend})
	nextReq(t, f)

	push(t, f, response(t, "v1", "n1", pki.tlsSecret(frontend)))
	if _, err := s.Recv(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	nextReq(t, f) // ACK of v1

	s.NACK("cannot load certificate")
	push(t, f, response(t, "v2", "n2", pki.tlsSecret(frontend)))
	if _, err := s.Recv(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	nack := nextReq(t, f)
	if nack.GetVersionInfo() != "v1" || nack.GetResponseNonce() != "n2" {
		t.Fatalf("NACK version/nonce = %q/%q, want previous version v1 and nonce n2", nack.GetVersionInfo(), nack.GetResponseNonce())
	}
	if nack.GetErrorDetail().GetMessage() != "cannot load certificate" || nack.GetErrorDetail().GetCode() != int32(codes.Internal) {
		t.Fatalf("NACK error_detail = %v", nack.GetErrorDetail())
	}

	// The NACK was armed for one response only.
	push(t, f, response(t, "v3", "n3", pki.tlsSecret(frontend)))
	if _, err := s.Recv(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if ack := nextReq(t, f); ack.GetErrorDetail() != nil || ack.GetVersionInfo() != "v3" || ack.GetResponseNonce() != "n3" {
		t.Fatalf("request after a NACK = %v, want an ACK of v3", ack)
	}
}

func TestSotWRejectsInvalidResponses(t *testing.T) {
	pki := newPKI(t, frontend)
	wrongType := response(t, "v2", "n2", pki.tlsSecret(frontend))
	wrongType.TypeUrl = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	notASecret := &discoveryv3.DiscoveryResponse{VersionInfo: "v2", Nonce: "n2", TypeUrl: SecretTypeURL,
		Resources: append(response(t, "", "", pki.tlsSecret(frontend)).Resources, mustAny(t, &corev3.Node{Id: "x"}))}
	spiffeWithPrefix := pki.allSecret(t, "spiffe://example.org")
	tests := []struct {
		name string
		resp *discoveryv3.DiscoveryResponse
		want string
	}{
		{"ValidateAll fails", response(t, "v2", "n2", invalidSecret(frontend)), "Filename"},
		{"duplicate name", response(t, "v2", "n2", pki.tlsSecret(frontend), pki.tlsSecret(frontend)), "twice"},
		{"empty response", response(t, "v2", "n2"), "Missing SDS resources"},
		{"wrong response type", wrongType, "response type"},
		{"resource not a secret", notASecret, "resource type"},
		{"secret without name", response(t, "v2", "n2", pki.tlsSecret("")), "without a name"},
		{"SPIFFE validator trust domain with scheme", response(t, "v2", "n2", spiffeWithPrefix), "spiffe:// prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, path := startFake(t)
			s := openSotW(t, path, []string{frontend})
			nextReq(t, f)
			push(t, f, response(t, "v1", "n1", pki.tlsSecret(frontend)))
			if _, err := s.Recv(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			nextReq(t, f)

			push(t, f, tt.resp)
			resp, err := s.Recv(testCtx(t))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Recv = %v, %v; want ErrInvalid mentioning %q", resp, err, tt.want)
			}
			nack := nextReq(t, f)
			if nack.GetErrorDetail() == nil || nack.GetVersionInfo() != "v1" || nack.GetResponseNonce() != "n2" {
				t.Fatalf("answer to an invalid response = %v, want a NACK of n2 carrying v1", nack)
			}
			// The stream survives a NACK.
			push(t, f, response(t, "v3", "n3", pki.tlsSecret(frontend)))
			if _, err := s.Recv(testCtx(t)); err != nil {
				t.Fatalf("Recv after NACK: %v", err)
			}
		})
	}
}

func TestSotWSetNamesAndRecvWithin(t *testing.T) {
	f, path := startFake(t)
	pki := newPKI(t, frontend)
	s := openSotW(t, path, []string{frontend})
	nextReq(t, f)

	got, err := s.RecvWithin(testCtx(t), 100*time.Millisecond)
	if got != nil || err != nil {
		t.Fatalf("RecvWithin with nothing sent = %v, %v; want nil, nil", got, err)
	}

	push(t, f, response(t, "v1", "n1", pki.tlsSecret(frontend)))
	if _, err := s.Recv(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	nextReq(t, f)
	names := []string{frontend, "ROOTCA"}
	if err := s.SetNames(names); err != nil {
		t.Fatal(err)
	}
	req := nextReq(t, f)
	if !slices.Equal(req.GetResourceNames(), names) || req.GetVersionInfo() != "v1" || req.GetResponseNonce() != "n1" || req.GetNode() != nil {
		t.Fatalf("names change request = %v", req)
	}
	// The stream still works after a RecvWithin timeout.
	push(t, f, response(t, "v2", "n2", pki.tlsSecret(frontend), pki.caSecret("ROOTCA")))
	resp, err := s.RecvWithin(testCtx(t), 5*time.Second)
	if err != nil || resp == nil || resp.Get("ROOTCA") == nil {
		t.Fatalf("RecvWithin = %v, %v", resp, err)
	}
}

func TestSotWManualACK(t *testing.T) {
	f, path := startFake(t)
	pki := newPKI(t, frontend)
	s := openSotW(t, path, []string{frontend}, ManualACK())
	nextReq(t, f)
	push(t, f, response(t, "v1", "n1", pki.tlsSecret(frontend)))
	if _, err := s.Recv(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-f.reqs:
		t.Fatalf("ManualACK stream sent %v on its own", r)
	case <-time.After(100 * time.Millisecond):
	}
	if err := s.NACKLast("no"); err != nil {
		t.Fatal(err)
	}
	if r := nextReq(t, f); r.GetErrorDetail().GetMessage() != "no" || r.GetVersionInfo() != "" || r.GetResponseNonce() != "n1" {
		t.Fatalf("NACKLast sent %v", r)
	}
	if err := s.ACK(); err == nil {
		t.Fatal("ACK with no pending response succeeded")
	}
}

func TestStreamEndIsReported(t *testing.T) {
	f := newFakeSDS()
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	stop := serve(t, path, f)
	s := openSotW(t, path, []string{frontend})
	nextReq(t, f)
	stop()
	_, err := s.Recv(testCtx(t))
	if err == nil || errors.Is(err, ErrInvalid) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv after the server stopped = %v, want a stream error", err)
	}
}

func TestFetch(t *testing.T) {
	pki := newPKI(t, frontend)
	f := &fetchSDS{resp: response(t, "v1", "", pki.tlsSecret(frontend))}
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	serveFetch(t, path, f)
	conn, err := Dial(testCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := Fetch(testCtx(t), conn, NewNode("n"), []string{frontend})
	if err != nil || resp.Get(frontend) == nil {
		t.Fatalf("Fetch = %v, %v", resp, err)
	}
	if got := f.req.Load(); got == nil || got.GetNode().GetId() != "n" || !slices.Equal(got.GetResourceNames(), []string{frontend}) {
		t.Fatalf("FetchSecrets request = %v", got)
	}
}

func TestDelta(t *testing.T) {
	f, path := startFake(t)
	pki := newPKI(t, frontend)
	ctx := testCtx(t)
	conn, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	initial := map[string]string{frontend: "r0"}
	d, err := NewDelta(ctx, conn, NewNode("node-d"), []string{frontend}, initial)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	first := nextDeltaReq(t, f)
	if first.GetNode().GetId() != "node-d" || first.GetTypeUrl() != SecretTypeURL ||
		!slices.Equal(first.GetResourceNamesSubscribe(), []string{frontend}) || first.GetInitialResourceVersions()[frontend] != "r0" {
		t.Fatalf("first delta request = %v", first)
	}

	res := func(name, version string, s *tlsv3.Secret) *discoveryv3.Resource {
		return &discoveryv3.Resource{Name: name, Version: version, Resource: mustAny(t, s)}
	}
	pushDelta(t, f, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL, Nonce: "d1", SystemVersionInfo: "s1",
		Resources: []*discoveryv3.Resource{res(frontend, "r1", pki.tlsSecret(frontend))}})
	got, err := d.Recv(ctx)
	if err != nil || got.Get(frontend) == nil || got.Resources[0].Version != "r1" {
		t.Fatalf("delta Recv = %+v, %v", got, err)
	}
	if ack := nextDeltaReq(t, f); ack.GetResponseNonce() != "d1" || ack.GetErrorDetail() != nil || ack.GetNode() != nil {
		t.Fatalf("delta ACK = %v", ack)
	}
	if v := d.ResourceVersions(); v[frontend] != "r1" {
		t.Errorf("resource versions = %v", v)
	}

	if err := d.Subscribe("ROOTCA"); err != nil {
		t.Fatal(err)
	}
	if sub := nextDeltaReq(t, f); !slices.Equal(sub.GetResourceNamesSubscribe(), []string{"ROOTCA"}) {
		t.Fatalf("subscribe request = %v", sub)
	}

	d.NACK("bad bundle")
	pushDelta(t, f, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL, Nonce: "d2",
		Resources: []*discoveryv3.Resource{res("ROOTCA", "r2", pki.caSecret("ROOTCA"))}})
	if _, err := d.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	if nack := nextDeltaReq(t, f); nack.GetResponseNonce() != "d2" || nack.GetErrorDetail().GetMessage() != "bad bundle" {
		t.Fatalf("delta NACK = %v", nack)
	}
	if _, ok := d.ResourceVersions()["ROOTCA"]; ok {
		t.Error("a NACKed resource was recorded as held")
	}

	// Removal, and invalid delta responses.
	pushDelta(t, f, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL, Nonce: "d3", RemovedResources: []string{frontend}})
	got, err = d.Recv(ctx)
	if err != nil || !slices.Equal(got.Removed, []string{frontend}) {
		t.Fatalf("removal = %+v, %v", got, err)
	}
	nextDeltaReq(t, f)
	if _, ok := d.ResourceVersions()[frontend]; ok {
		t.Error("a removed resource is still recorded")
	}

	for _, bad := range []struct {
		name string
		resp *discoveryv3.DeltaDiscoveryResponse
	}{
		{"name mismatch", &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL, Nonce: "x1",
			Resources: []*discoveryv3.Resource{res("ROOTCA", "r", pki.caSecret("other"))}}},
		{"invalid secret", &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL, Nonce: "x2",
			Resources: []*discoveryv3.Resource{res(frontend, "r", invalidSecret(frontend))}}},
		{"updated and removed", &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretTypeURL, Nonce: "x3",
			Resources: []*discoveryv3.Resource{res("ROOTCA", "r", pki.caSecret("ROOTCA"))}, RemovedResources: []string{"ROOTCA"}}},
	} {
		t.Run(bad.name, func(t *testing.T) {
			pushDelta(t, f, bad.resp)
			if _, err := d.Recv(ctx); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Recv = %v, want ErrInvalid", err)
			}
			if nack := nextDeltaReq(t, f); nack.GetErrorDetail() == nil || nack.GetResponseNonce() != bad.resp.Nonce {
				t.Fatalf("answer = %v, want NACK of %s", nack, bad.resp.Nonce)
			}
		})
	}

	if err := d.Unsubscribe("ROOTCA"); err != nil {
		t.Fatal(err)
	}
	if un := nextDeltaReq(t, f); !slices.Equal(un.GetResourceNamesUnsubscribe(), []string{"ROOTCA"}) {
		t.Fatalf("unsubscribe request = %v", un)
	}
	if got := d.Subscribed(); !slices.Equal(got, []string{frontend}) {
		t.Errorf("subscribed = %v", got)
	}
}

func TestReconnectingCarriesVersionNonceAndNode(t *testing.T) {
	pki := newPKI(t, frontend)
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	f1 := newFakeSDS()
	stop1 := serve(t, path, f1)

	r, err := NewReconnecting(ReconnectConfig{SocketPath: path, Node: NewNode("node-r"), Names: []string{frontend},
		BaseBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := testCtx(t)

	recvc := make(chan *Response, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := r.Recv(ctx)
		if err != nil {
			errc <- err
			return
		}
		recvc <- resp
	}()
	nextReq(t, f1)
	push(t, f1, response(t, "v1", "n1", pki.tlsSecret(frontend)))
	select {
	case <-recvc:
	case err := <-errc:
		t.Fatal(err)
	}
	nextReq(t, f1) // ACK

	// The agent restarts: the old server goes away, a new one binds the same path a little later.
	stop1()
	go func() {
		resp, err := r.Recv(ctx)
		if err != nil {
			errc <- err
			return
		}
		recvc <- resp
	}()
	time.Sleep(150 * time.Millisecond) // several failed attempts against a dead socket
	f2 := newFakeSDS()
	serve(t, path, f2)
	first := nextReq(t, f2)
	if first.GetNode().GetId() != "node-r" || first.GetVersionInfo() != "v1" || first.GetResponseNonce() != "n1" ||
		!slices.Equal(first.GetResourceNames(), []string{frontend}) {
		t.Fatalf("first request after reconnect = %v, want node, v1, n1 and the names", first)
	}
	push(t, f2, response(t, "v2", "m1", pki.tlsSecret(frontend)))
	select {
	case resp := <-recvc:
		if resp.VersionInfo != "v2" {
			t.Fatalf("response after reconnect = %+v", resp)
		}
	case err := <-errc:
		t.Fatal(err)
	}
	if r.Streams() != 2 {
		t.Errorf("streams = %d, want 2", r.Streams())
	}
	if len(r.Errors()) < 2 {
		t.Errorf("errors = %v, want the break and at least one failed attempt", r.Errors())
	}
}

func TestBackoff(t *testing.T) {
	base, maxd := 500*time.Millisecond, 30*time.Second
	tests := []struct {
		attempt int
		ceil    time.Duration
	}{{0, 500 * time.Millisecond}, {1, time.Second}, {3, 4 * time.Second}, {6, 30 * time.Second}, {40, 30 * time.Second}}
	for _, tt := range tests {
		var sawHigh bool
		for range 200 {
			d := Backoff(base, maxd, tt.attempt)
			if d < 0 || d >= tt.ceil {
				t.Fatalf("Backoff(attempt %d) = %s, want in [0, %s)", tt.attempt, d, tt.ceil)
			}
			sawHigh = sawHigh || d > tt.ceil/2
		}
		if !sawHigh {
			t.Errorf("attempt %d: 200 draws never exceeded half of %s: not jittered up to the ceiling", tt.attempt, tt.ceil)
		}
	}
}

func TestHelpers(t *testing.T) {
	pki := newPKI(t, frontend)
	other := newPKI(t, frontend)

	chain, key, err := CertAndKey(pki.tlsSecret(frontend))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 1 || chain[0].URIs[0].String() != frontend || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pki.leafKey.Public()) {
		t.Fatalf("CertAndKey = %v, %v", chain, key)
	}
	roots, err := TrustedCA(pki.caSecret("spiffe://example.org"))
	if err != nil || len(roots) != 1 || !roots[0].Equal(pki.caCert) {
		t.Fatalf("TrustedCA = %v, %v", roots, err)
	}
	bundles, err := SPIFFEValidatorBundles(pki.allSecret(t, "example.org", "other.org"))
	if err != nil || len(bundles) != 2 || !bundles["other.org"][0].Equal(pki.caCert) {
		t.Fatalf("SPIFFEValidatorBundles = %v, %v", bundles, err)
	}

	mismatched := pki.tlsSecret(frontend)
	mismatched.GetTlsCertificate().PrivateKey = inline(other.keyPEM)
	sec1 := pki.tlsSecret(frontend)
	sec1.GetTlsCertificate().PrivateKey = inline([]byte(strings.Replace(string(pki.keyPEM), "PRIVATE KEY", "EC PRIVATE KEY", 2)))
	keyInChain := pki.tlsSecret(frontend)
	keyInChain.GetTlsCertificate().CertificateChain = inline(append(append([]byte{}, pki.leafPEM...), pki.keyPEM...))
	fromFile := pki.caSecret("x")
	fromFile.GetValidationContext().TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/ca.pem"}}
	notSPIFFE := pki.allSecret(t, "example.org")
	notSPIFFE.GetValidationContext().GetCustomValidatorConfig().Name = "envoy.tls.cert_validator.default"
	dupTD := pki.allSecret(t, "example.org", "example.org")

	bad := []struct {
		name string
		call func() error
		want string
	}{
		{"key does not match leaf", func() error { _, _, err := CertAndKey(mismatched); return err }, "does not match"},
		{"key not PKCS#8", func() error { _, _, err := CertAndKey(sec1); return err }, "PKCS#8"},
		{"key inside the chain", func() error { _, _, err := CertAndKey(keyInChain); return err }, "unexpected PEM block"},
		{"CertAndKey of a validation context", func() error { _, _, err := CertAndKey(pki.caSecret("x")); return err }, "not a tls_certificate"},
		{"TrustedCA from a file", func() error { _, err := TrustedCA(fromFile); return err }, "inline"},
		{"TrustedCA of a certificate", func() error { _, err := TrustedCA(pki.tlsSecret("x")); return err }, "not a validation_context"},
		{"wrong validator", func() error { _, err := SPIFFEValidatorBundles(notSPIFFE); return err }, "custom validator"},
		{"trust domain twice", func() error { _, err := SPIFFEValidatorBundles(dupTD); return err }, "twice"},
		{"no validator", func() error { _, err := SPIFFEValidatorBundles(pki.caSecret("x")); return err }, "no custom_validator_config"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// Secrets survive the trip through Any unchanged: what tests compare is what the agent sent.
func TestDecodeSecretRoundTrip(t *testing.T) {
	pki := newPKI(t, frontend)
	in := pki.allSecret(t, "example.org")
	out, err := decodeSecret(mustAny(t, in))
	if err != nil || !proto.Equal(in, out) {
		t.Fatalf("decodeSecret = %v, %v", out, err)
	}
}
