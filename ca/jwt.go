package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/workload"
)

// DefaultJWTSVIDTTL is the default JWT-SVID lifetime. JWT-SVIDs are bearer tokens that cannot
// be revoked, so they are kept much shorter than X509-SVIDs.
const DefaultJWTSVIDTTL = 5 * time.Minute

// maxRefreshHint caps the bundle's spiffe_refresh_hint so that federated peers notice a
// change within minutes.
const maxRefreshHint = 5 * time.Minute

// jwtKey is an authority's JWT-SVID signing key. It lives and dies with the authority: it is
// published when the authority is prepared, signs while it is active, and stays in the
// bundle (public part only) until the authority expires.
type jwtKey struct {
	kid    string
	pub    crypto.PublicKey
	signer crypto.Signer // nil once the authority is old
}

// public returns the key without its private part, for an authority that no longer signs.
func (k *jwtKey) public() *jwtKey {
	if k == nil {
		return nil
	}
	return &jwtKey{kid: k.kid, pub: k.pub}
}

// newJWTKey generates a signing key of type kt with a random key ID.
func newJWTKey(kt string) (*jwtKey, error) {
	signer, err := generateKey(kt)
	if err != nil {
		return nil, fmt.Errorf("generating JWT key: %w", err)
	}
	// 128 random bits: key IDs never collide, so a kid alone names a key across rotations.
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("generating JWT key ID: %w", err)
	}
	return &jwtKey{kid: hex.EncodeToString(b[:]), pub: signer.Public(), signer: signer}, nil
}

// jwtAlgorithm is the JWS algorithm for a key: ES256 for P-256, ES384 for P-384, RS256 for
// RSA. All are in the set go-spiffe's jwtsvid accepts.
func jwtAlgorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
		return "", fmt.Errorf("unsupported JWT key curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA JWT key of %d bits is too short", k.N.BitLen())
		}
		return jose.RS256, nil
	}
	return "", fmt.Errorf("unsupported JWT key type %T", pub)
}

// JWTKey is the public part of one authority's JWT-SVID signing key.
type JWTKey struct {
	KID    string
	Public crypto.PublicKey
	// NotAfter is the authority's: no JWT-SVID signed with the key expires later, and the key
	// leaves the bundle then.
	NotAfter time.Time
}

// JWTKeys lists the JWT keys in the bundle (active, prepared and old unexpired authorities),
// oldest authority first, from one consistent state: what a fleet host publishes for the
// others to trust.
func (c *CA) JWTKeys() []JWTKey {
	snap := c.state.Load()
	out := make([]JWTKey, 0, len(snap.authorities))
	for _, a := range snap.authorities {
		if a.jwt != nil {
			out = append(out, JWTKey{KID: a.jwt.kid, Public: a.jwt.pub, NotAfter: a.cert.NotAfter})
		}
	}
	return out
}

// JWTSVIDTTL returns the default JWT-SVID TTL (the one used when MintJWTSVID gets 0).
func (c *CA) JWTSVIDTTL() time.Duration { return c.cfg.JWTSVIDTTL }

// MintJWTSVID signs a JWT-SVID for id, which must be a workload ID (non-empty path) in the
// CA's trust domain, for audience (at least one, none empty). ttl 0 means the configured
// JWT-SVID TTL; exp is clamped to the active CA's NotAfter, because the signing key leaves
// the bundle when its authority expires. The header carries alg, kid and typ "JWT"; the claims
// sub, aud, iat and exp (whole seconds). Signing runs outside any lock.
func (c *CA) MintJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (*workload.JWTSVID, error) {
	svid, err := c.mintJWT(id, audience, ttl)
	if err != nil {
		return nil, fmt.Errorf("minting JWT-SVID for %s: %w", id, err)
	}
	return svid, nil
}

func (c *CA) mintJWT(id spiffeid.ID, audience []string, ttl time.Duration) (*workload.JWTSVID, error) {
	switch {
	case id.IsZero():
		return nil, errors.New("empty SPIFFE ID")
	case id.TrustDomain() != c.td:
		return nil, fmt.Errorf("ID is not in trust domain %q", c.td.Name())
	case id.Path() == "":
		return nil, errors.New("a JWT-SVID's SPIFFE ID needs a path")
	case len(audience) == 0:
		return nil, errors.New("a JWT-SVID needs at least one audience")
	case slices.Contains(audience, ""):
		return nil, errors.New("empty audience")
	}
	if ttl == 0 {
		ttl = c.cfg.JWTSVIDTTL
	}
	if err := entry.CheckSVIDTTL(ttl, c.cfg.CATTL); err != nil {
		return nil, fmt.Errorf("TTL %w", err)
	}

	act := c.state.Load().find(StateActive)
	if act.jwt == nil || act.jwt.signer == nil {
		return nil, errors.New("active CA has no JWT signing key") // New always adds one
	}
	// JWT times are whole seconds; truncating exp keeps it within the CA's NotAfter.
	now := c.clock()
	iat := now.Truncate(time.Second)
	exp := now.Add(ttl)
	if exp.After(act.cert.NotAfter) {
		exp = act.cert.NotAfter
	}
	exp = exp.Truncate(time.Second)
	if !exp.After(iat) {
		return nil, fmt.Errorf("%w at %s", ErrCAExpired, act.cert.NotAfter.UTC().Format(time.RFC3339))
	}

	alg, err := jwtAlgorithm(act.jwt.pub)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: act.jwt.signer, KeyID: act.jwt.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("creating signer: %w", err)
	}
	aud := slices.Clone(audience)
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(aud),
		IssuedAt: jwt.NewNumericDate(iat),
		Expiry:   jwt.NewNumericDate(exp),
	}).Serialize()
	if err != nil {
		return nil, fmt.Errorf("signing token: %w", err)
	}
	return &workload.JWTSVID{ID: id, Token: token, Audience: aud, IssuedAt: iat, ExpiresAt: exp}, nil
}

// refreshHint is the bundle's spiffe_refresh_hint: at most a fifteenth of the CA TTL, so that
// a successor is published (a third of the CA life before it signs) at least five refresh
// hints ahead, as SPIFFE federation recommends (3-5x); at most maxRefreshHint.
func refreshHint(caTTL time.Duration) time.Duration {
	return max(min(maxRefreshHint, caTTL/15), time.Second)
}

// jwksDoc is the SPIFFE bundle document for the JWT keys (SPIFFE Trust Domain and Bundle §4).
type jwksDoc struct {
	Keys        []jose.JSONWebKey `json:"keys"`
	Sequence    uint64            `json:"spiffe_sequence"`
	RefreshHint int64             `json:"spiffe_refresh_hint"`
}

// marshalJWKS encodes the JWT keys of auths, in their order, as a SPIFFE bundle: use
// "jwt-svid" and a kid on every key, plus spiffe_sequence and spiffe_refresh_hint. It holds
// only JWT keys: go-spiffe's jwtbundle.Parse, which Workload API clients run on
// FetchJWTBundles, rejects keys without a kid, and x509-svid keys must not have one.
func marshalJWKS(auths []*authority, seq uint64, hint time.Duration) (map[string]crypto.PublicKey, []byte, error) {
	doc := jwksDoc{
		Keys:        make([]jose.JSONWebKey, 0, len(auths)), // "keys" MUST be present, even empty
		Sequence:    seq,
		RefreshHint: int64((hint + time.Second - 1) / time.Second),
	}
	keys := make(map[string]crypto.PublicKey, len(auths))
	for _, a := range auths {
		if a.jwt == nil {
			continue // an old authority from before JWT keys existed
		}
		keys[a.jwt.kid] = a.jwt.pub
		doc.Keys = append(doc.Keys, jose.JSONWebKey{Key: a.jwt.pub, KeyID: a.jwt.kid, Use: "jwt-svid"})
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding JWT bundle: %w", err)
	}
	return keys, out, nil
}

// jwtKIDs lists the JWT key IDs of auths in order; a change in it is a bundle change.
func jwtKIDs(auths []*authority) []string {
	var out []string
	for _, a := range auths {
		if a.jwt != nil {
			out = append(out, a.jwt.kid)
		}
	}
	return out
}

// addMissingJWTKeys gives every active or prepared authority without a JWT key (a state file
// written before JWT-SVIDs existed) one, of the authority's own key type, and persists the
// result before it takes effect. Old authorities stay without: they never sign again.
func (c *CA) addMissingJWTKeys() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	cur := c.state.Load()
	var out []*authority
	added := 0
	for _, a := range cur.authorities {
		if a.jwt == nil && a.state != StateOld {
			kt := keyTypeOf(a.cert.PublicKey)
			if !validKeyType(kt) {
				kt = c.cfg.KeyType
			}
			k, err := newJWTKey(kt)
			if err != nil {
				return err
			}
			a = a.withJWT(k)
			added++
		}
		out = append(out, a)
	}
	if added == 0 {
		return nil
	}
	if err := c.commit(out); err != nil {
		return fmt.Errorf("adding JWT keys: %w", err)
	}
	c.log.Info("added JWT signing keys to CA state written without them", "authorities", added, "path", c.path)
	return nil
}
