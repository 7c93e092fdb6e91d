package fleet

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func ecKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rawRecord is a record with any JWK (encodeKey refuses what decodeKey must also refuse).
func rawRecord(t testing.TB, kid string, key any, jwkKID, use string, notAfter time.Time) []byte {
	t.Helper()
	jwk, err := json.Marshal(jose.JSONWebKey{Key: key, KeyID: jwkKID, Use: use})
	if err != nil {
		t.Fatal(err)
	}
	v, err := json.Marshal(keyRecord{KID: kid, JWK: jwk, NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDecodeKey(t *testing.T) {
	na := time.Unix(1900000000, 0).UTC()
	p256 := ecKey(t, elliptic.P256())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	short, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	good, err := encodeKey(Key{KID: "k1", Public: p256.Public(), NotAfter: na})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		value []byte
		want  string // error substring; "" for success
	}{
		{"ec p256", good, ""},
		{"ec p384", rawRecord(t, "k1", ecKey(t, elliptic.P384()).Public(), "k1", "jwt-svid", na), ""},
		{"rsa 2048", rawRecord(t, "k1", rsaKey.Public(), "k1", "jwt-svid", na), ""},
		{"no use", rawRecord(t, "k1", p256.Public(), "k1", "", na), ""},
		{"not JSON", []byte("{"), "not a JWT key record"},
		{"record kid differs", rawRecord(t, "k2", p256.Public(), "k2", "jwt-svid", na), `record's kid "k2"`},
		{"jwk kid differs", rawRecord(t, "k1", p256.Public(), "k9", "jwt-svid", na), `JWK's kid "k9"`},
		{"private key", rawRecord(t, "k1", p256, "k1", "jwt-svid", na), "private key"},
		{"x509 use", rawRecord(t, "k1", p256.Public(), "k1", "x509-svid", na), "not jwt-svid"},
		{"p521", rawRecord(t, "k1", ecKey(t, elliptic.P521()).Public(), "k1", "jwt-svid", na), "not allowed"},
		{"short rsa", rawRecord(t, "k1", short.Public(), "k1", "jwt-svid", na), "too short"},
		{"no not_after", rawRecord(t, "k1", p256.Public(), "k1", "jwt-svid", time.Time{}), "no not_after"},
		{"malformed jwk", []byte(`{"kid":"k1","jwk":{"kty":"EC","kid":"k1"},"not_after":"2030-01-01T00:00:00Z"}`), "malformed JWK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := decodeKey("web-1", "k1", tc.value)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("decodeKey: %v", err)
				}
				if k.Node != "web-1" || k.KID != "k1" || !k.NotAfter.Equal(na) {
					t.Fatalf("decoded %+v", k)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decodeKey = %v, want an error with %q", err, tc.want)
			}
		})
	}
	k, err := decodeKey("web-1", "k1", good)
	if err != nil || !k.Public.(*ecdsa.PublicKey).Equal(p256.Public()) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := encodeKey(Key{KID: "k", Public: crypto.PublicKey(p256)}); err == nil {
		t.Fatal("encodeKey took a private key")
	}
}

func TestKeyName(t *testing.T) {
	for _, tc := range []struct {
		rel, node, kid string
		ok             bool
	}{
		{"web-1/jwtkeys/abc", "web-1", "abc", true},
		{"web-1/node", "", "", false},
		{"web-1/jwtkeys/", "", "", false},
		{"/jwtkeys/abc", "", "", false},
		{"a/b/jwtkeys/abc", "", "", false},
		{"web-1/jwtkeys/a/b", "", "", false},
	} {
		node, kid, ok := keyName(tc.rel)
		if node != tc.node || kid != tc.kid || ok != tc.ok {
			t.Errorf("keyName(%q) = %q, %q, %v", tc.rel, node, kid, ok)
		}
	}
	if CheckNodeName("a/b") == nil || CheckNodeName("") == nil || CheckNodeName("web-1") != nil {
		t.Error("CheckNodeName")
	}
}
