// Command floorsds is the floor svidd is measured against: a bare grpc-go SDS server on a
// Unix socket that does the least an SDS server can. It attests nobody, keeps no entries and
// mints nothing: it holds one pre-encoded pair of Secrets (an X509-SVID for
// spiffe://example.org/load/0 and the example.org bundle, generated at start) and answers the
// first request of every StreamSecrets stream with them, then reads the stream's ACKs until it
// ends. What svidd costs beyond it is what attestation, entries, Views and rotation cost.
//
//	floorsds -socket PATH
//
// The load tool (test/load) builds and starts it, with the same build tags as svidd, for the
// suite's one-entry scenarios, and drives it with the same client in the same run.
// LOAD_CPUPROFILE=FILE profiles it from SIGUSR1 to SIGUSR2, as test/load/profsvidd does svidd.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const (
	secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	trustDomain   = "spiffe://example.org"
	spiffeID      = trustDomain + "/load/0"
)

func main() {
	socket := flag.String("socket", "", "Unix socket to serve SDS on")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "floorsds: -socket is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, *socket)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "floorsds:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, socket string) error {
	resources, err := secrets()
	if err != nil {
		return err
	}
	if prof := os.Getenv("LOAD_CPUPROFILE"); prof != "" {
		stopProfile := profileOnSignal(prof)
		defer stopProfile()
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	// Every uid may connect, as to svidd's api socket.
	if err := os.Chmod(socket, 0o666); err != nil {
		return err
	}
	srv := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(srv, &server{resources: resources})
	// The load client's churn times a no-op Check at its pace: svidd serves health too.
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	return nil
}

type server struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	resources []*anypb.Any // encoded once, shared by every response
	nonce     atomic.Uint64
}

// StreamSecrets answers the first request with the two Secrets, whatever it names, and then
// only reads: ACKs and NACKs change nothing.
func (s *server) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(&discoveryv3.DiscoveryResponse{
		VersionInfo: "1",
		TypeUrl:     secretTypeURL,
		Nonce:       strconv.FormatUint(s.nonce.Add(1), 10),
		Resources:   s.resources,
	}); err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

// secrets builds a self-signed example.org root and an X509-SVID for spiffeID under it, and
// encodes them once as the tls_certificate and validation_context Secrets.
func secrets() ([]*anypb.Any, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	td, _ := url.Parse(trustDomain)
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"floorsds"}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, URIs: []*url.URL{td},
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id, _ := url.Parse(spiffeID)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, root, leafKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return nil, err
	}
	inline := func(typ string, der []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})}}
	}
	var out []*anypb.Any
	for _, s := range []*tlsv3.Secret{
		{Name: spiffeID, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline("CERTIFICATE", leafDER),
			PrivateKey:       inline("PRIVATE KEY", pkcs8),
		}}},
		{Name: trustDomain, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline("CERTIFICATE", rootDER),
		}}},
	} {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
		if err != nil {
			return nil, err
		}
		out = append(out, &anypb.Any{TypeUrl: secretTypeURL, Value: b})
	}
	return out, nil
}

// profileOnSignal writes a CPU profile to path from SIGUSR1 to SIGUSR2 (or the returned stop).
func profileOnSignal(path string) (stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	var f *os.File
	finish := func() {
		if f != nil {
			pprof.StopCPUProfile()
			f.Close()
			f = nil
		}
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGUSR1 && f == nil {
					var err error
					if f, err = os.Create(path); err == nil {
						if err = pprof.StartCPUProfile(f); err != nil {
							f.Close()
							f = nil
						}
					}
					if err != nil {
						fmt.Fprintln(os.Stderr, "floorsds: cpu profile:", err)
					}
				} else if sig == syscall.SIGUSR2 {
					finish()
				}
			case <-quit:
				finish()
				return
			}
		}
	}()
	return func() { signal.Stop(sigs); close(quit); <-done }
}
