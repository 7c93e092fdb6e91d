package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestNewValidatesConfig(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: t0}
	tests := []struct {
		name string
		cfg  Config
		want string
		is   error
	}{
		{"no trust domain", Config{Dir: dir}, "trust domain is required", nil},
		{"no dir", Config{TrustDomain: td}, "data dir is required", nil},
		{"bad key type", Config{TrustDomain: td, Dir: dir, KeyType: "ed25519"}, `unknown key type "ed25519"`, nil},
		{"CA TTL too short", Config{TrustDomain: td, Dir: dir, CATTL: 5 * time.Second}, "shorter than the minimum", nil},
		{"SVID TTL above CA TTL/6", Config{TrustDomain: td, Dir: dir, CATTL: 6 * time.Hour, SVIDTTL: time.Hour + time.Second}, "SVID TTL 1h0m1s is longer than a sixth of ca_ttl 6h (1h)", ErrTTLTooLong},
		{"SVID TTL default 1h above 30m/6", Config{TrustDomain: td, Dir: dir, CATTL: 30 * time.Minute, SVIDTTL: time.Hour}, "is longer than a sixth of ca_ttl 30m (5m)", ErrTTLTooLong},
		{"negative SVID TTL", Config{TrustDomain: td, Dir: dir, SVIDTTL: -time.Second}, "negative", nil},
		{"SVID TTL too short to rotate", Config{TrustDomain: td, Dir: dir, SVIDTTL: time.Second}, "SVID TTL 1s is shorter than the minimum 5s", ErrTTLTooShort},
		{"JWT-SVID TTL too short", Config{TrustDomain: td, Dir: dir, JWTSVIDTTL: 4 * time.Second}, "JWT-SVID TTL 4s is shorter than the minimum 5s", ErrTTLTooShort},
		{"JWT-SVID TTL above CA TTL/6", Config{TrustDomain: td, Dir: dir, CATTL: 6 * time.Hour, JWTSVIDTTL: time.Hour + time.Second}, "JWT-SVID TTL 1h0m1s is longer than a sixth of ca_ttl 6h (1h)", ErrTTLTooLong},
		{"negative JWT-SVID TTL", Config{TrustDomain: td, Dir: dir, JWTSVIDTTL: -time.Second}, "JWT-SVID TTL -1s is negative", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Clock = clk.Now
			_, err := New(tt.cfg)
			mustContain(t, err, tt.want)
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("error %v is not %v", err, tt.is)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		c, err := New(Config{TrustDomain: td, Dir: t.TempDir(), Clock: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		if c.SVIDTTL() != time.Hour || c.MaxSVIDTTL() != 4*time.Hour || c.NotAfter() != t0.Add(24*time.Hour) {
			t.Fatalf("SVIDTTL %s MaxSVIDTTL %s NotAfter %s", c.SVIDTTL(), c.MaxSVIDTTL(), c.NotAfter())
		}
		if kt := c.Authorities()[0].KeyType; kt != KeyTypeECP256 {
			t.Fatalf("default key type %s", kt)
		}
		if c.JWTSVIDTTL() != 5*time.Minute {
			t.Fatalf("JWTSVIDTTL %s, want 5m", c.JWTSVIDTTL())
		}
	})
	t.Run("default SVID TTL shrinks to CA TTL/6", func(t *testing.T) {
		c, err := New(Config{TrustDomain: td, Dir: t.TempDir(), Clock: clk.Now, CATTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if c.SVIDTTL() != 10*time.Minute || c.JWTSVIDTTL() != 5*time.Minute {
			t.Fatalf("SVIDTTL %s, want 10m; JWTSVIDTTL %s, want 5m", c.SVIDTTL(), c.JWTSVIDTTL())
		}
	})
	t.Run("default JWT-SVID TTL shrinks to CA TTL/6", func(t *testing.T) {
		c, err := New(Config{TrustDomain: td, Dir: t.TempDir(), Clock: clk.Now, CATTL: 24 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if c.JWTSVIDTTL() != 4*time.Minute {
			t.Fatalf("JWTSVIDTTL %s, want 4m", c.JWTSVIDTTL())
		}
	})
}

func TestRootCertificate(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	auths := c.Authorities()
	if len(auths) != 1 || auths[0].State != StateActive {
		t.Fatalf("authorities %+v", auths)
	}
	root := auths[0].Certificate
	if !root.IsCA || !root.BasicConstraintsValid || root.MaxPathLen != 0 || !root.MaxPathLenZero {
		t.Errorf("basic constraints: IsCA %v valid %v maxPathLen %d", root.IsCA, root.BasicConstraintsValid, root.MaxPathLen)
	}
	if root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("key usage %b", root.KeyUsage)
	}
	if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("URIs %v", root.URIs)
	}
	if len(root.SubjectKeyId) == 0 || auths[0].SKI != hex.EncodeToString(root.SubjectKeyId) {
		t.Errorf("SKI %x / %s", root.SubjectKeyId, auths[0].SKI)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if !root.NotBefore.Equal(t0.Add(-10*time.Second)) || !root.NotAfter.Equal(t0.Add(testCA)) {
		t.Errorf("validity %s..%s", root.NotBefore, root.NotAfter)
	}
	if root.SerialNumber.BitLen() > 128 || root.SerialNumber.Sign() <= 0 {
		t.Errorf("serial %s", root.SerialNumber)
	}
	if err := checkCACert(root, td); err != nil {
		t.Errorf("checkCACert: %v", err)
	}
	// Two roots never share a serial or a subject.
	other := newTestCA(t, t.TempDir(), clk).Authorities()[0].Certificate
	if other.SerialNumber.Cmp(root.SerialNumber) == 0 || other.Subject.String() == root.Subject.String() {
		t.Errorf("two roots share serial %s / subject %s", root.SerialNumber, root.Subject)
	}
}

var oidKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 15}

func TestMintX509SVID(t *testing.T) {
	tests := []struct {
		keyType string
		dns     []string
		ttl     time.Duration
		wantTTL time.Duration
	}{
		{KeyTypeECP256, nil, 0, time.Hour},
		{KeyTypeECP256, []string{"backend.example.org", "backend"}, 30 * time.Minute, 30 * time.Minute},
		{KeyTypeECP384, []string{"db.internal"}, 0, time.Hour},
		{KeyTypeRSA2048, nil, 5 * time.Minute, 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.keyType+"/"+tt.wantTTL.String(), func(t *testing.T) {
			clk := &fakeClock{t: t0}
			c := newTestCA(t, t.TempDir(), clk, func(cfg *Config) { cfg.KeyType = tt.keyType })
			now := t0.Add(17 * time.Minute)
			clk.Set(now)
			svid, err := c.MintX509SVID(wlID, tt.ttl, tt.dns)
			if err != nil {
				t.Fatal(err)
			}
			root := verify(t, svid, c.Bundle(), now)
			if !root.Equal(c.Authorities()[0].Certificate) {
				t.Fatalf("chains to an unexpected root")
			}

			leaf := svid.Certificates[0]
			if len(svid.Certificates) != 1 || !bytes.Equal(leaf.Raw, svid.CertChainDER) {
				t.Fatalf("Certificates and CertChainDER disagree")
			}
			if b, _ := pem.Decode(svid.CertChainPEM); b == nil || b.Type != "CERTIFICATE" || !bytes.Equal(b.Bytes, leaf.Raw) {
				t.Fatalf("CertChainPEM does not hold the leaf")
			}
			if b, _ := pem.Decode(svid.KeyPEM); b == nil || b.Type != "PRIVATE KEY" || !bytes.Equal(b.Bytes, svid.KeyDER) {
				t.Fatalf("KeyPEM is not the PKCS#8 PEM of KeyDER")
			}
			k, err := x509.ParsePKCS8PrivateKey(svid.KeyDER)
			if err != nil {
				t.Fatalf("KeyDER: %v", err)
			}
			type pubKey interface{ Equal(crypto.PublicKey) bool }
			if !svid.PrivateKey.Public().(pubKey).Equal(leaf.PublicKey) ||
				!k.(crypto.Signer).Public().(pubKey).Equal(leaf.PublicKey) {
				t.Fatalf("key does not match leaf")
			}
			switch pub := leaf.PublicKey.(type) {
			case *ecdsa.PublicKey:
				want := map[string]elliptic.Curve{KeyTypeECP256: elliptic.P256(), KeyTypeECP384: elliptic.P384()}[tt.keyType]
				if pub.Curve != want {
					t.Fatalf("leaf curve %s for %s", pub.Curve.Params().Name, tt.keyType)
				}
			case *rsa.PublicKey:
				if tt.keyType != KeyTypeRSA2048 || pub.N.BitLen() != 2048 {
					t.Fatalf("leaf RSA %d bits for %s", pub.N.BitLen(), tt.keyType)
				}
			}

			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA %v BasicConstraintsValid %v", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
				t.Errorf("key usage %b", leaf.KeyUsage)
			}
			critical := false
			for _, e := range leaf.Extensions {
				if e.Id.Equal(oidKeyUsage) {
					critical = e.Critical
				}
			}
			if !critical {
				t.Errorf("key usage not critical")
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("EKU %v", leaf.ExtKeyUsage)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wlID.String() {
				t.Errorf("URIs %v", leaf.URIs)
			}
			if !slices.Equal(leaf.DNSNames, tt.dns) {
				t.Errorf("DNS %v, want %v", leaf.DNSNames, tt.dns)
			}
			if len(tt.dns) > 0 && leaf.Subject.CommonName != tt.dns[0] {
				t.Errorf("CN %q", leaf.Subject.CommonName)
			}
			if !slices.Equal(leaf.Subject.Organization, []string{"SPIFFE"}) {
				t.Errorf("subject %s", leaf.Subject)
			}
			if !bytes.Equal(leaf.AuthorityKeyId, root.SubjectKeyId) {
				t.Errorf("AKI %x, root SKI %x", leaf.AuthorityKeyId, root.SubjectKeyId)
			}
			if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 || svid.Serial != leaf.SerialNumber.Text(16) {
				t.Errorf("serial %s / %s", leaf.SerialNumber, svid.Serial)
			}
			if !leaf.NotBefore.Equal(now.Add(-10*time.Second)) || !leaf.NotAfter.Equal(now.Add(tt.wantTTL)) ||
				!svid.NotBefore.Equal(leaf.NotBefore) || !svid.NotAfter.Equal(leaf.NotAfter) {
				t.Errorf("validity %s..%s (svid %s..%s), want %s..%s", leaf.NotBefore, leaf.NotAfter,
					svid.NotBefore, svid.NotAfter, now.Add(-10*time.Second), now.Add(tt.wantTTL))
			}
			if svid.ID != wlID || svid.EntryID != "" || !svid.RotateAt.IsZero() {
				t.Errorf("ID %s EntryID %q RotateAt %s", svid.ID, svid.EntryID, svid.RotateAt)
			}
		})
	}
}

func TestMintClampsToCANotAfter(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	caNotAfter := c.NotAfter()
	tests := []struct {
		name string
		now  time.Time
		want time.Time
	}{
		{"well inside", t0.Add(time.Hour), t0.Add(2 * time.Hour)},
		{"exactly at the edge", caNotAfter.Add(-time.Hour), caNotAfter},
		{"past the edge", caNotAfter.Add(-20 * time.Minute), caNotAfter},
		{"one second left", caNotAfter.Add(-time.Second), caNotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.Set(tt.now) // no Rotate: the first CA stays active
			svid, err := c.MintX509SVID(wlID, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !svid.NotAfter.Equal(tt.want) {
				t.Fatalf("NotAfter %s, want %s", svid.NotAfter, tt.want)
			}
			verify(t, svid, c.Bundle(), tt.now)
		})
	}
	t.Run("CA expired", func(t *testing.T) {
		clk.Set(caNotAfter)
		_, err := c.MintX509SVID(wlID, 0, nil)
		if !errors.Is(err, ErrCAExpired) {
			t.Fatalf("got %v, want ErrCAExpired", err)
		}
	})
	t.Run("NotBefore not before the CA's", func(t *testing.T) {
		clk.Set(t0.Add(-time.Minute)) // a clock that went back
		_, err := c.MintX509SVID(wlID, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestMintRefuses(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	tests := []struct {
		name string
		id   spiffeid.ID
		ttl  time.Duration
		dns  []string
		want string
		is   error
	}{
		{"TTL above CA TTL/6", wlID, time.Hour + time.Nanosecond, nil, "is longer than a sixth of ca_ttl", ErrTTLTooLong},
		{"negative TTL", wlID, -time.Minute, nil, "TTL -1m is negative", nil},
		{"TTL too short to rotate", wlID, time.Second, nil, "TTL 1s is shorter than the minimum 5s", ErrTTLTooShort},
		{"zero ID", spiffeid.ID{}, 0, nil, "empty SPIFFE ID", nil},
		{"other trust domain", spiffeid.RequireFromString("spiffe://other.org/backend"), 0, nil, `not in trust domain "example.org"`, nil},
		{"trust domain ID", td.ID(), 0, nil, "needs a path", nil},
		{"empty DNS name", wlID, 0, []string{""}, "empty DNS name", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svid, err := c.MintX509SVID(tt.id, tt.ttl, tt.dns)
			mustContain(t, err, "minting X509-SVID", tt.want)
			if svid != nil {
				t.Fatal("got an SVID with the error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("%v is not %v", err, tt.is)
			}
		})
	}
}

// TestMintConcurrentWithRotation mints from many goroutines while the CA rotates through a
// whole cycle; every SVID must verify against the bundle published after it was minted.
func TestMintConcurrentWithRotation(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	now := t0.Add(3 * time.Hour)
	clk.Set(now)
	var wg sync.WaitGroup
	svids := make(chan string, 200)
	errs := make(chan error, 200)
	for range 4 {
		wg.Go(func() {
			for range 25 {
				s, err := c.MintX509SVID(wlID, 0, nil)
				if err != nil {
					errs <- err
					return
				}
				svids <- s.Serial
				if _, err := x509svidVerifyNow(s, c, now); err != nil {
					errs <- err
				}
			}
		})
	}
	for _, at := range []time.Duration{3 * time.Hour, 5 * time.Hour} {
		if _, err := c.Rotate(t0.Add(at)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	close(svids)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for s := range svids {
		if seen[s] {
			t.Fatalf("serial %s minted twice", s)
		}
		seen[s] = true
	}
	if len(seen) != 100 {
		t.Fatalf("%d SVIDs", len(seen))
	}
}

func TestStateFileLocation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "data")
	c := newTestCA(t, dir, &fakeClock{t: t0})
	if c.Path() != filepath.Join(dir, StateFileName) {
		t.Fatalf("Path %s", c.Path())
	}
}
