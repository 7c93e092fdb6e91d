package workload

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestNewSVID: every field is derived from the chain and the key, consistently (the PEM and
// DER forms parse back to them), and a certificate for another ID is refused.
func TestNewSVID(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	nb := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0xabc), URIs: []*url.URL{id.URL()}, NotBefore: nb, NotAfter: nb.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSVID(id, []*x509.Certificate{leaf}, key)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != id || s.Serial != "abc" || !s.NotBefore.Equal(nb) || !s.NotAfter.Equal(nb.Add(time.Hour)) || !bytes.Equal(s.CertChainDER, der) {
		t.Fatalf("SVID fields: %+v", s)
	}
	parsed, err := x509svid.Parse(s.CertChainPEM, s.KeyPEM)
	if err != nil || parsed.ID != id {
		t.Fatalf("the PEM forms do not parse back: %v", err)
	}
	if _, err := x509svid.ParseRaw(s.CertChainDER, s.KeyDER); err != nil {
		t.Fatalf("the DER forms do not parse back: %v", err)
	}
	if _, err := NewSVID(spiffeid.RequireFromString("spiffe://example.org/db"), []*x509.Certificate{leaf}, key); err == nil {
		t.Fatal("an SVID was made from a certificate of another ID")
	}
	if _, err := NewSVID(id, nil, key); err == nil {
		t.Fatal("an SVID was made without a certificate")
	}
}
