// Package testpki makes small X.509 PKIs for tests of the upstream CAs: a root and
// intermediates with a chosen pathLen, written as the PEM files operators give svidd or
// step-ca.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"testing"
	"time"
)

// CA is one certificate authority of a test PKI.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NoPathLen leaves the pathLenConstraint out.
const NoPathLen = -1

// Root makes a self-signed root valid from an hour ago for ttl; pathLen is NoPathLen or ≥ 0.
func Root(t testing.TB, name string, pathLen int, ttl time.Duration) *CA {
	t.Helper()
	return issue(t, nil, name, pathLen, ttl)
}

// Intermediate makes a CA signed by parent; mod, if any, adjust its template (e.g. name
// constraints).
func (p *CA) Intermediate(t testing.TB, name string, pathLen int, ttl time.Duration, mod ...func(*x509.Certificate)) *CA {
	t.Helper()
	return issue(t, p, name, pathLen, ttl, mod...)
}

func issue(t testing.TB, parent *CA, name string, pathLen int, ttl time.Duration, mod ...func(*x509.Certificate)) *CA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"svidd test"}, CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
	for _, m := range mod {
		m(tmpl)
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
}

// CertPEM returns certs PEM-encoded, in order.
func CertPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM returns the CA's key as PKCS#8 PEM.
func (c *CA) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Write writes data to path with mode perm, failing the test on error.
func Write(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatal(err)
	}
}
