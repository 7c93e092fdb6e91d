package workloadtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/workload"
)

// CA is a small self-signed X.509 CA plus a JWT signing key for one trust domain: enough to
// make the SVIDs and bundles a View holds, as the agent would publish them.
type CA struct {
	TD     spiffeid.TrustDomain
	Cert   *x509.Certificate
	Key    *ecdsa.PrivateKey
	JWTKey *ecdsa.PrivateKey
	KID    string // the JWT key's ID
}

// NewCA makes a CA for td whose JWT key has the ID kid.
func NewCA(t testing.TB, td spiffeid.TrustDomain, kid string) *CA {
	t.Helper()
	key := genKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{Organization: []string{"svidd test"}, CommonName: td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{TD: td, Cert: cert, Key: key, JWTKey: genKey(t), KID: kid}
}

// Mint returns an X509-SVID for id (a SPIFFE ID string) as the agent would publish it, valid
// for 30 minutes.
func (ca *CA) Mint(t testing.TB, id string) *workload.SVID {
	t.Helper()
	sid := spiffeid.RequireFromString(id)
	key := genKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		URIs:                  []*url.URL{sid.URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(30 * time.Minute),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s, err := workload.NewSVID(sid, []*x509.Certificate{leaf}, key)
	if err != nil {
		t.Fatal(err)
	}
	s.EntryID = "entry-" + id
	s.RotateAt = leaf.NotBefore.Add(15 * time.Minute)
	return s
}

// Bundle returns the CA's bundle with sequence number seq: its X.509 root and its JWT key,
// the JWKS built as go-spiffe builds it.
func (ca *CA) Bundle(t testing.TB, seq uint64) *workload.Bundle {
	t.Helper()
	jb := jwtbundle.New(ca.TD)
	if err := jb.AddJWTAuthority(ca.KID, ca.JWTKey.Public()); err != nil {
		t.Fatal(err)
	}
	jwks, err := jb.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &workload.Bundle{
		TrustDomain:     ca.TD,
		X509Authorities: []*x509.Certificate{ca.Cert},
		PEM:             pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}),
		DER:             ca.Cert.Raw,
		JWTAuthorities:  map[string]crypto.PublicKey{ca.KID: ca.JWTKey.Public()},
		JWKS:            jwks,
		Sequence:        seq,
	}
}

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func randSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}
