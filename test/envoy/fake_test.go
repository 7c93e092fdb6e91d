package envoy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/internal/proctest"
)

// fakeSDS is a minimal SDS server: it hands every request it receives to the test and sends
// whatever response the test pushes, nothing of its own.
type fakeSDS struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	reqs       chan *discoveryv3.DiscoveryRequest
	resps      chan *discoveryv3.DiscoveryResponse
	deltaReqs  chan *discoveryv3.DeltaDiscoveryRequest
	deltaResps chan *discoveryv3.DeltaDiscoveryResponse
}

func newFakeSDS() *fakeSDS {
	return &fakeSDS{
		reqs:       make(chan *discoveryv3.DiscoveryRequest, 64),
		resps:      make(chan *discoveryv3.DiscoveryResponse),
		deltaReqs:  make(chan *discoveryv3.DeltaDiscoveryRequest, 64),
		deltaResps: make(chan *discoveryv3.DeltaDiscoveryResponse),
	}
}

func (f *fakeSDS) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			f.reqs <- req
		}
	}()
	for {
		select {
		case r := <-f.resps:
			if err := stream.Send(r); err != nil {
				return err
			}
		case err := <-errc:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (f *fakeSDS) DeltaSecrets(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			f.deltaReqs <- req
		}
	}()
	for {
		select {
		case r := <-f.deltaResps:
			if err := stream.Send(r); err != nil {
				return err
			}
		case err := <-errc:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// serve runs f on a real Unix socket at path until the returned stop is called (or cleanup).
func serve(t *testing.T, path string, f *fakeSDS) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	stop = func() {
		srv.Stop()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

func startFake(t *testing.T) (*fakeSDS, string) {
	t.Helper()
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	f := newFakeSDS()
	serve(t, path, f)
	return f, path
}

func nextReq(t *testing.T, f *fakeSDS) *discoveryv3.DiscoveryRequest {
	t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no request reached the server")
		return nil
	}
}

func nextDeltaReq(t *testing.T, f *fakeSDS) *discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case r := <-f.deltaReqs:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no delta request reached the server")
		return nil
	}
}

func push(t *testing.T, f *fakeSDS, r *discoveryv3.DiscoveryResponse) {
	t.Helper()
	select {
	case f.resps <- r:
	case <-time.After(5 * time.Second):
		t.Fatal("no stream took the response")
	}
}

func pushDelta(t *testing.T, f *fakeSDS, r *discoveryv3.DeltaDiscoveryResponse) {
	t.Helper()
	select {
	case f.deltaResps <- r:
	case <-time.After(5 * time.Second):
		t.Fatal("no delta stream took the response")
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func response(t *testing.T, version, nonce string, secrets ...*tlsv3.Secret) *discoveryv3.DiscoveryResponse {
	t.Helper()
	r := &discoveryv3.DiscoveryResponse{VersionInfo: version, Nonce: nonce, TypeUrl: SecretTypeURL}
	for _, s := range secrets {
		r.Resources = append(r.Resources, mustAny(t, s))
	}
	return r
}

// testPKI is a CA and one leaf SVID, generated per test.
type testPKI struct {
	caCert   *x509.Certificate
	caPEM    []byte
	leafPEM  []byte
	keyPEM   []byte
	leafCert *x509.Certificate
	leafKey  crypto.Signer
}

func newPKI(t *testing.T, id string) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td, _ := url.Parse("spiffe://example.org")
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		URIs:                  []*url.URL{td},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	leafTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		URIs:                  []*url.URL{u},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(30 * time.Minute),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leafCert, _ := x509.ParseCertificate(leafDER)
	pk8, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{
		caCert:   caCert,
		caPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		leafPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		keyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}),
		leafCert: leafCert,
		leafKey:  leafKey,
	}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func (p *testPKI) tlsSecret(name string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(p.leafPEM),
		PrivateKey:       inline(p.keyPEM),
	}}}
}

func (p *testPKI) caSecret(name string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(p.caPEM),
	}}}
}

func (p *testPKI) allSecret(t *testing.T, tds ...string) *tlsv3.Secret {
	t.Helper()
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range tds {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: td, TrustBundle: inline(p.caPEM)})
	}
	return &tlsv3.Secret{Name: "ALL", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: SPIFFEValidatorName, TypedConfig: mustAny(t, cfg)},
	}}}
}

// invalidSecret fails the generated validation: a DataSource filename must not be empty.
func invalidSecret(name string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: ""}},
	}}}
}

// fetchSDS answers FetchSecrets with a canned response and keeps the request.
type fetchSDS struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	resp *discoveryv3.DiscoveryResponse
	req  atomic.Pointer[discoveryv3.DiscoveryRequest]
}

func (f *fetchSDS) FetchSecrets(_ context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	f.req.Store(req)
	return f.resp, nil
}

func serveFetch(t *testing.T, path string, f *fetchSDS) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
}
