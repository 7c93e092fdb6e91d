package fleet

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key is one JWT-SVID signing key's public part, as a host publishes it.
type Key struct {
	// Node is the host that signs with it; KID its key ID (unique across the fleet: 128
	// random bits).
	Node string
	KID  string
	// Public is the public key; shared, do not modify.
	Public crypto.PublicKey
	// NotAfter is when the key stops being valid (its CA's NotAfter): no token it signed
	// expires later.
	NotAfter time.Time
}

// keyRecord is a Key as stored in etcd.
type keyRecord struct {
	KID      string          `json:"kid"`
	JWK      json.RawMessage `json:"jwk"`
	NotAfter time.Time       `json:"not_after"`
}

// The registry's names, below the prefix.
const (
	hostsDir   = "hosts/"
	jwtKeysDir = "/jwtkeys/"
)

// hostsPrefix is where every host's records live.
func hostsPrefix(prefix string) string { return prefix + hostsDir }

// keysPrefix is where node's JWT keys live.
func keysPrefix(prefix, node string) string { return prefix + hostsDir + node + jwtKeysDir }

// keyName splits a key below hostsPrefix into node and kid; ok is false for anything that is
// not a JWT key record (the node record, liveness keys).
func keyName(rel string) (node, kid string, ok bool) {
	node, kid, ok = strings.Cut(rel, jwtKeysDir)
	if !ok || node == "" || kid == "" || strings.Contains(node, "/") || strings.Contains(kid, "/") {
		return "", "", false
	}
	return node, kid, true
}

// CheckNodeName refuses a node name that cannot name a key in the registry.
func CheckNodeName(node string) error {
	if node == "" || strings.ContainsAny(node, "/\x00") {
		return fmt.Errorf("node name %q cannot be used in the registry (empty or holds a /)", node)
	}
	return nil
}

// encodeKey is k's record. The encoding is deterministic, so a record can be compared with
// what etcd holds byte for byte.
func encodeKey(k Key) ([]byte, error) {
	if err := checkPublic(k.Public); err != nil {
		return nil, fmt.Errorf("JWT key %s: %w", k.KID, err)
	}
	jwk, err := json.Marshal(jose.JSONWebKey{Key: k.Public, KeyID: k.KID, Use: "jwt-svid"})
	if err != nil {
		return nil, fmt.Errorf("encoding JWT key %s: %w", k.KID, err)
	}
	return json.Marshal(keyRecord{KID: k.KID, JWK: jwk, NotAfter: k.NotAfter.UTC()})
}

// decodeKey reads the record stored for node's key kid and checks it: a well-formed JWK of
// an allowed type, public only, whose kid is the record's and the key name's.
func decodeKey(node, kid string, value []byte) (Key, error) {
	var r keyRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return Key{}, fmt.Errorf("not a JWT key record: %w", err)
	}
	if r.KID != kid {
		return Key{}, fmt.Errorf("record's kid %q is not the key name's %q", r.KID, kid)
	}
	if r.NotAfter.IsZero() {
		return Key{}, errors.New("record has no not_after")
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(r.JWK); err != nil {
		return Key{}, fmt.Errorf("malformed JWK: %w", err)
	}
	switch {
	case jwk.KeyID != kid:
		return Key{}, fmt.Errorf("JWK's kid %q is not the key name's %q", jwk.KeyID, kid)
	case !jwk.IsPublic():
		return Key{}, errors.New("JWK holds a private key")
	case !jwk.Valid():
		return Key{}, errors.New("JWK is not valid")
	case jwk.Use != "" && jwk.Use != "jwt-svid":
		return Key{}, fmt.Errorf("JWK's use is %q, not jwt-svid", jwk.Use)
	}
	if err := checkPublic(jwk.Key); err != nil {
		return Key{}, err
	}
	return Key{Node: node, KID: kid, Public: jwk.Key, NotAfter: r.NotAfter}, nil
}

// checkPublic allows the key types svidd signs JWT-SVIDs with (ES256, ES384, RS256 of at
// least 2048 bits), all of which go-spiffe's jwtsvid accepts.
func checkPublic(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("JWT key curve %s is not allowed", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA JWT key of %d bits is too short", k.N.BitLen())
		}
		return nil
	}
	return fmt.Errorf("JWT key type %T is not allowed", pub)
}
