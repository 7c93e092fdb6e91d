package svidfiles

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, td string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert, key}
}

func (ca testCA) svid(t *testing.T, id string) *x509svid.SVID {
	t.Helper()
	sid := spiffeid.RequireFromString(id)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		URIs:         []*url.URL{sid.URL()},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func TestFromX509SVID(t *testing.T) {
	own, fed := newCA(t, "example.org"), newCA(t, "aaa.example") // fed sorts first by name
	s := own.svid(t, "spiffe://example.org/web")
	bundles := x509bundle.NewSet(
		x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("aaa.example"), []*x509.Certificate{fed.cert}),
		x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.org"), []*x509.Certificate{own.cert}),
	)
	set, err := FromX509SVID(s, bundles)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(set.SVID, set.Key); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(set.Key), "BEGIN PRIVATE KEY") {
		t.Errorf("key is not PKCS#8 PEM:\n%s", set.Key)
	}
	roots, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), set.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	got := roots.X509Authorities()
	if len(got) != 2 || !got[0].Equal(own.cert) || !got[1].Equal(fed.cert) {
		t.Errorf("bundle.pem holds %d roots, want own then federated", len(got))
	}
	// The SVID verifies against the file's roots, as a reader would use them.
	pool := x509.NewCertPool()
	for _, c := range got {
		pool.AddCert(c)
	}
	if _, err := s.Certificates[0].Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("SVID does not verify against bundle.pem: %v", err)
	}

	if _, err := FromX509SVID(s, x509bundle.NewSet(bundles.Bundles()[0])); err == nil {
		t.Error("FromX509SVID without the own trust domain's bundle succeeded")
	}
}

func TestJWTBundleJSON(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	out, err := JWTBundleJSON(jwtbundle.NewSet(jwtbundle.FromJWTAuthorities(td, map[string]crypto.PublicKey{"k1": &key.PublicKey})))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	b, err := jwtbundle.Parse(td, m["example.org"])
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasJWTAuthority("k1") {
		t.Errorf("jwt_bundle.json lost key k1: %s", out)
	}
}
