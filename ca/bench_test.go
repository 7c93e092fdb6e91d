package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"
	"time"
)

// BenchmarkMintX509SVID is the whole mint: key generation, signing, parsing back, PEM and
// PKCS#8 encodings. Compare with BenchmarkCryptoFloor for the cost of our own work.
func BenchmarkMintX509SVID(b *testing.B) {
	c := newTestCA(b, b.TempDir(), &fakeClock{t: t0})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintX509SVID(wlID, 0, []string{"backend.example.org"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCryptoFloor is the irreducible part of a mint: one P-256 key and one
// CreateCertificate of an equivalent leaf, signed by an equivalent P-256 root.
func BenchmarkCryptoFloor(b *testing.B) {
	c := newTestCA(b, b.TempDir(), &fakeClock{t: t0})
	root := c.state.Load().find(StateActive)
	u, _ := url.Parse(wlID.String())
	tmpl := &x509.Certificate{
		SerialNumber:          serialLimit,
		Subject:               pkix.Name{Organization: []string{"SPIFFE"}, CommonName: "backend.example.org"},
		NotBefore:             t0,
		NotAfter:              t0.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
		DNSNames:              []string{"backend.example.org"},
	}
	b.ReportAllocs()
	for b.Loop() {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, k.Public(), root.signer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMintX509SVIDParallel shows minting scales across cores (no lock is held).
func BenchmarkMintX509SVIDParallel(b *testing.B) {
	c := newTestCA(b, b.TempDir(), &fakeClock{t: t0})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.MintX509SVID(wlID, 0, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkMintJWTSVID is one JWT-SVID: claims, JSON, one ES256 signature.
func BenchmarkMintJWTSVID(b *testing.B) {
	c := newTestCA(b, b.TempDir(), &fakeClock{t: t0})
	aud := []string{"spiffe://example.org/db"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintJWTSVID(wlID, aud, 0); err != nil {
			b.Fatal(err)
		}
	}
}
