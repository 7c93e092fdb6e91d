package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/test/envoy"
)

// When set, the test binary is fakeenvoy itself (for the signal test).
const beMainEnv = "FAKEENVOY_BE_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(beMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// cannedSDS sends its canned responses on every stream, SotW or delta, then waits.
type cannedSDS struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	sotw  []*discoveryv3.DiscoveryResponse
	delta []*discoveryv3.DeltaDiscoveryResponse
	first chan *discoveryv3.DiscoveryRequest
}

func (c *cannedSDS) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	select {
	case c.first <- req:
	default:
	}
	for _, r := range c.sotw {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

func (c *cannedSDS) DeltaSecrets(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	for _, r := range c.delta {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

func (c *cannedSDS) FetchSecrets(context.Context, *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return c.sotw[0], nil
}

func serve(t *testing.T, c *cannedSDS) string {
	t.Helper()
	dir := proctest.ShortDir(t)
	path := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(srv, c)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return path
}

func secrets(t *testing.T) (cert, ca *tlsv3.Secret) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://example.org/frontend")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), URIs: []*url.URL{u}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	pk8, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8})
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	cert = &tlsv3.Secret{Name: "spiffe://example.org/frontend", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(certPEM), PrivateKey: inline(keyPEM)}}}
	ca = &tlsv3.Secret{Name: "spiffe://example.org", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(certPEM)}}}
	return cert, ca
}

func resp(t *testing.T, v string, ss ...*tlsv3.Secret) *discoveryv3.DiscoveryResponse {
	t.Helper()
	r := &discoveryv3.DiscoveryResponse{VersionInfo: v, Nonce: "n" + v, TypeUrl: envoy.SecretTypeURL}
	for _, s := range ss {
		a, err := anypb.New(s)
		if err != nil {
			t.Fatal(err)
		}
		r.Resources = append(r.Resources, a)
	}
	return r
}

func decodeLines(t *testing.T, out string) []envoy.Summary {
	t.Helper()
	var sums []envoy.Summary
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var s envoy.Summary
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("stdout is not JSON lines: %v\n%s", err, out)
		}
		sums = append(sums, s)
	}
	return sums
}

func TestRun(t *testing.T) {
	cert, ca := secrets(t)
	anyOf := func(s *tlsv3.Secret) *anypb.Any { a, _ := anypb.New(s); return a }
	bad := &tlsv3.Secret{Name: cert.Name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{}}}}}
	tests := []struct {
		name      string
		srv       *cannedSDS
		args      []string
		wantCode  int
		wantLines int
		wantErr   string
		check     func(t *testing.T, s []envoy.Summary)
	}{
		{
			name: "sotw stops once every name arrived, across responses",
			srv:  &cannedSDS{sotw: []*discoveryv3.DiscoveryResponse{resp(t, "1", cert), resp(t, "2", cert, ca), resp(t, "3", cert)}},
			args: []string{"-names", cert.Name + "," + ca.Name}, wantLines: 2,
			check: func(t *testing.T, s []envoy.Summary) {
				r := s[1].Resources
				if s[1].Version != "2" || s[1].Nonce != "n2" || len(r) != 2 || r[0].Kind != "tls_certificate" ||
					!strings.Contains(r[0].KeyPEM, "PRIVATE KEY") || r[1].Kind != "validation_context" || r[1].TrustedCAPEM == "" {
					t.Errorf("second line = %+v", s[1])
				}
			},
		},
		{
			name: "count",
			srv:  &cannedSDS{sotw: []*discoveryv3.DiscoveryResponse{resp(t, "1", cert), resp(t, "2", cert), resp(t, "3", cert)}},
			args: []string{"-names", cert.Name, "-count", "3"}, wantLines: 3,
		},
		{
			name:     "timeout waiting for a name",
			srv:      &cannedSDS{sotw: []*discoveryv3.DiscoveryResponse{resp(t, "1", cert)}},
			args:     []string{"-names", cert.Name + ",spiffe://example.org/other", "-timeout", "300ms"},
			wantCode: 1, wantLines: 1, wantErr: "still waiting for spiffe://example.org/other",
		},
		{
			name: "follow ends at the timeout without error",
			srv:  &cannedSDS{sotw: []*discoveryv3.DiscoveryResponse{resp(t, "1", cert)}},
			args: []string{"-names", cert.Name, "-timeout", "300ms", "-follow"}, wantLines: 1,
		},
		{
			name: "invalid secret",
			srv:  &cannedSDS{sotw: []*discoveryv3.DiscoveryResponse{resp(t, "1", bad)}},
			args: []string{"-names", cert.Name}, wantCode: 1, wantErr: "invalid SDS response",
		},
		{
			name: "delta with removal",
			srv: &cannedSDS{delta: []*discoveryv3.DeltaDiscoveryResponse{
				{TypeUrl: envoy.SecretTypeURL, Nonce: "d1", Resources: []*discoveryv3.Resource{{Name: cert.Name, Version: "r1", Resource: anyOf(cert)}}},
				{TypeUrl: envoy.SecretTypeURL, Nonce: "d2", RemovedResources: []string{cert.Name}},
			}},
			args: []string{"-mode", "delta", "-names", cert.Name, "-count", "2"}, wantLines: 2,
			check: func(t *testing.T, s []envoy.Summary) {
				if s[0].Versions[cert.Name] != "r1" || len(s[1].Removed) != 1 || s[1].Removed[0] != cert.Name {
					t.Errorf("delta lines = %+v", s)
				}
			},
		},
		{
			name: "fetch",
			srv:  &cannedSDS{sotw: []*discoveryv3.DiscoveryResponse{resp(t, "1", ca)}},
			args: []string{"-mode", "fetch", "-names", ca.Name}, wantLines: 1,
		},
		{
			name: "bad mode",
			srv:  &cannedSDS{}, args: []string{"-mode", "ads"}, wantCode: 2, wantErr: "unknown -mode",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.srv.first = make(chan *discoveryv3.DiscoveryRequest, 1)
			path := serve(t, tt.srv)
			var stdout, stderr bytes.Buffer
			args := append([]string{"-socket", path, "-timeout", "5s"}, tt.args...)
			code := run(t.Context(), args, &stdout, &stderr)
			if code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and stderr containing %q", code, stderr.String(), tt.wantCode, tt.wantErr)
			}
			lines := decodeLines(t, stdout.String())
			if len(lines) != tt.wantLines {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), tt.wantLines, stdout.String())
			}
			if tt.check != nil {
				tt.check(t, lines)
			}
		})
	}
}

func TestSIGTERMIsCleanExit(t *testing.T) {
	srv := &cannedSDS{first: make(chan *discoveryv3.DiscoveryRequest, 1)}
	path := serve(t, srv)
	cmd := exec.Command(os.Args[0], "-socket", path, "-names", "spiffe://example.org/never", "-timeout", "30s", "-node-id", "sig")
	cmd.Env = append(os.Environ(), beMainEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-srv.first:
		if req.GetNode().GetId() != "sig" {
			t.Errorf("node = %v", req.GetNode())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("fakeenvoy never sent its first request")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("fakeenvoy after SIGTERM: %v, stderr %q", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("fakeenvoy did not exit on SIGTERM")
	}
}
