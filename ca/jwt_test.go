package ca

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/svidd/svidd/pkg/workload"
)

const audDB = "spiffe://example.org/db"

// validateJWT checks token with go-spiffe against b's JWKS, as a Workload API client
// does: jwtbundle.Parse, then jwtsvid.ParseAndValidate (which uses the real clock, so tests
// calling it run their CA's fake clock at real time).
func validateJWT(token string, b *workload.Bundle, aud string) (*jwtsvid.SVID, error) {
	jb, err := jwtbundle.Parse(b.TrustDomain, b.JWKS)
	if err != nil {
		return nil, err
	}
	return jwtsvid.ParseAndValidate(token, jb, []string{aud})
}

// verifyJWTAt is validateJWT at an explicit time, for tests on a fake clock: the same steps
// go-spiffe takes (kid from the header, key from the bundle, signature, claims), no leeway.
func verifyJWTAt(token string, b *workload.Bundle, aud string, at time.Time) (spiffeid.ID, error) {
	jb, err := jwtbundle.Parse(b.TrustDomain, b.JWKS)
	if err != nil {
		return spiffeid.ID{}, err
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256})
	if err != nil {
		return spiffeid.ID{}, err
	}
	key, ok := jb.FindJWTAuthority(tok.Headers[0].KeyID)
	if !ok {
		return spiffeid.ID{}, errors.New("no JWT authority for kid " + tok.Headers[0].KeyID)
	}
	var claims jwt.Claims
	if err := tok.Claims(key, &claims); err != nil {
		return spiffeid.ID{}, err
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{AnyAudience: []string{aud}, Time: at}, 0); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromString(claims.Subject)
}

// jwtHeader returns a token's alg, kid and typ without verifying it.
func jwtHeader(t *testing.T, token string) (alg, kid, typ string) {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256})
	if err != nil {
		t.Fatalf("parsing token: %v", err)
	}
	h := tok.Headers[0]
	typ, _ = h.ExtraHeaders[jose.HeaderType].(string)
	return h.Algorithm, h.KeyID, typ
}

func kids(c *CA) map[State][]string {
	out := map[State][]string{}
	for _, a := range c.Authorities() {
		out[a.State] = append(out[a.State], a.JWTKeyID)
	}
	return out
}

// checkJWKS checks the bundle's JWKS is a SPIFFE bundle of exactly its JWTAuthorities that
// go-spiffe's jwtbundle and spiffebundle both read back, with sequence and refresh hint.
func checkJWKS(t *testing.T, b *workload.Bundle, wantHint time.Duration) {
	t.Helper()
	var raw struct {
		Keys        []map[string]any `json:"keys"`
		Sequence    *uint64          `json:"spiffe_sequence"`
		RefreshHint *int64           `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(b.JWKS, &raw); err != nil {
		t.Fatalf("JWKS is not JSON: %v", err)
	}
	if raw.Keys == nil || len(raw.Keys) != len(b.JWTAuthorities) {
		t.Fatalf("JWKS has %d keys, bundle %d JWT authorities", len(raw.Keys), len(b.JWTAuthorities))
	}
	for i, k := range raw.Keys {
		if k["use"] != "jwt-svid" || k["kid"] == "" || k["kid"] == nil || k["kty"] == nil || k["x5c"] != nil {
			t.Fatalf("JWKS key %d: %v", i, k)
		}
	}
	if raw.Sequence == nil || *raw.Sequence != b.Sequence {
		t.Fatalf("spiffe_sequence %v, bundle sequence %d", raw.Sequence, b.Sequence)
	}
	if raw.RefreshHint == nil || time.Duration(*raw.RefreshHint)*time.Second != wantHint {
		t.Fatalf("spiffe_refresh_hint %v, want %s", raw.RefreshHint, wantHint)
	}

	jb, err := jwtbundle.Parse(td, b.JWKS)
	if err != nil {
		t.Fatalf("jwtbundle.Parse: %v", err)
	}
	if !jwtbundle.FromJWTAuthorities(td, b.JWTAuthorities).Equal(jb) {
		t.Fatalf("jwtbundle.Parse(JWKS) differs from JWTAuthorities")
	}
	sb, err := spiffebundle.Parse(td, b.JWKS)
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v", err)
	}
	seq, _ := sb.SequenceNumber()
	hint, _ := sb.RefreshHint()
	if seq != b.Sequence || hint != wantHint || !maps.EqualFunc(sb.JWTAuthorities(), b.JWTAuthorities, pubEqual) {
		t.Fatalf("spiffebundle: sequence %d hint %s, %d keys", seq, hint, len(sb.JWTAuthorities()))
	}
}

func pubEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func TestMintJWTSVID(t *testing.T) {
	tests := []struct {
		keyType string
		alg     string
		aud     []string
		ttl     time.Duration
		wantTTL time.Duration
	}{
		{KeyTypeECP256, "ES256", []string{audDB}, 0, 5 * time.Minute},
		{KeyTypeECP256, "ES256", []string{audDB, "other"}, 90 * time.Second, 90 * time.Second},
		{KeyTypeECP384, "ES384", []string{audDB}, 0, 5 * time.Minute},
		{KeyTypeRSA2048, "RS256", []string{"other", audDB}, time.Hour, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.alg+"/"+tt.wantTTL.String(), func(t *testing.T) {
			now := time.Now()
			clk := &fakeClock{t: now}
			c := newTestCA(t, t.TempDir(), clk, func(cfg *Config) { cfg.KeyType = tt.keyType })
			b := c.Bundle()
			checkJWKS(t, b, 5*time.Minute)
			kid := c.Authorities()[0].JWTKeyID
			if len(kid) != 32 || len(b.JWTAuthorities) != 1 || b.JWTAuthorities[kid] == nil {
				t.Fatalf("kid %q, bundle JWT authorities %v", kid, slices.Collect(maps.Keys(b.JWTAuthorities)))
			}

			s, err := c.MintJWTSVID(wlID, tt.aud, tt.ttl)
			if err != nil {
				t.Fatal(err)
			}
			iat := now.Truncate(time.Second)
			if s.ID != wlID || !slices.Equal(s.Audience, tt.aud) || !s.IssuedAt.Equal(iat) ||
				!s.ExpiresAt.Equal(now.Add(tt.wantTTL).Truncate(time.Second)) {
				t.Fatalf("JWTSVID %+v", s)
			}
			if alg, hkid, typ := jwtHeader(t, s.Token); alg != tt.alg || hkid != kid || typ != "JWT" {
				t.Fatalf("header alg %q kid %q typ %q", alg, hkid, typ)
			}

			got, err := validateJWT(s.Token, b, audDB)
			if err != nil {
				t.Fatalf("ParseAndValidate: %v", err)
			}
			if got.ID != wlID || !slices.Equal(got.Audience, tt.aud) || !got.Expiry.Equal(s.ExpiresAt) {
				t.Fatalf("validated %s aud %v exp %s", got.ID, got.Audience, got.Expiry)
			}
			iatClaim, _ := got.Claims["iat"].(float64)
			if int64(iatClaim) != iat.Unix() || len(got.Claims) != 4 {
				t.Fatalf("claims %v", got.Claims)
			}
			if _, err := validateJWT(s.Token, b, "spiffe://example.org/web"); err == nil {
				t.Fatal("validated for another audience")
			}
			// Another CA's bundle does not hold the key.
			other := newTestCA(t, t.TempDir(), clk)
			if _, err := validateJWT(s.Token, other.Bundle(), audDB); err == nil {
				t.Fatal("validated against another CA's bundle")
			}
		})
	}
}

func TestMintJWTSVIDRefuses(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	tests := []struct {
		name string
		id   spiffeid.ID
		aud  []string
		ttl  time.Duration
		want string
		is   error
	}{
		{"no audience", wlID, nil, 0, "at least one audience", nil},
		{"empty audience", wlID, []string{audDB, ""}, 0, "empty audience", nil},
		{"TTL above CA TTL/6", wlID, []string{audDB}, time.Hour + time.Second, "is longer than a sixth of ca_ttl", ErrTTLTooLong},
		{"negative TTL", wlID, []string{audDB}, -time.Second, "TTL -1s is negative", nil},
		{"TTL too short", wlID, []string{audDB}, time.Second, "TTL 1s is shorter than the minimum 5s", ErrTTLTooShort},
		{"zero ID", spiffeid.ID{}, []string{audDB}, 0, "empty SPIFFE ID", nil},
		{"other trust domain", spiffeid.RequireFromString("spiffe://other.org/backend"), []string{audDB}, 0, `not in trust domain "example.org"`, nil},
		{"trust domain ID", td.ID(), []string{audDB}, 0, "needs a path", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := c.MintJWTSVID(tt.id, tt.aud, tt.ttl)
			mustContain(t, err, "minting JWT-SVID", tt.want)
			if s != nil {
				t.Fatal("got a JWT-SVID with the error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("%v is not %v", err, tt.is)
			}
		})
	}
	t.Run("CA expired", func(t *testing.T) {
		clk.Set(c.NotAfter()) // no Rotate: the expired CA is still active
		if _, err := c.MintJWTSVID(wlID, []string{audDB}, 0); !errors.Is(err, ErrCAExpired) {
			t.Fatalf("got %v, want ErrCAExpired", err)
		}
		// A millisecond left: exp is NotAfter itself (whole seconds here), still after iat.
		clk.Set(c.NotAfter().Add(-time.Millisecond))
		if s, err := c.MintJWTSVID(wlID, []string{audDB}, 0); err != nil || !s.ExpiresAt.Equal(c.NotAfter()) {
			t.Fatalf("got %v, want exp at NotAfter", err)
		}
	})
	t.Run("audience is copied", func(t *testing.T) {
		clk.Set(t0)
		aud := []string{audDB}
		s, err := c.MintJWTSVID(wlID, aud, 0)
		if err != nil {
			t.Fatal(err)
		}
		aud[0] = "changed"
		if s.Audience[0] != audDB {
			t.Fatal("JWTSVID shares the caller's audience slice")
		}
	})
}

// TestJWTSVIDClampedToCA: exp never passes the active CA's NotAfter, whose JWT key leaves
// the bundle when it expires.
func TestJWTSVIDClampedToCA(t *testing.T) {
	now := time.Now()
	// The CA was created 5h58m ago with a 6h TTL: 2 minutes of it are left.
	clk := &fakeClock{t: now.Add(-testCA + 2*time.Minute)}
	c := newTestCA(t, t.TempDir(), clk)
	clk.Set(now) // no Rotate: the first CA stays active
	notAfter := c.NotAfter()
	tests := []struct {
		name string
		ttl  time.Duration
		want time.Time
	}{
		{"inside", time.Minute, now.Add(time.Minute).Truncate(time.Second)},
		{"default 5m clamped", 0, notAfter.Truncate(time.Second)},
		{"1h clamped", time.Hour, notAfter.Truncate(time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := c.MintJWTSVID(wlID, []string{audDB}, tt.ttl)
			if err != nil {
				t.Fatal(err)
			}
			if !s.ExpiresAt.Equal(tt.want) || s.ExpiresAt.After(notAfter) {
				t.Fatalf("exp %s, want %s (CA NotAfter %s)", s.ExpiresAt, tt.want, notAfter)
			}
			got, err := validateJWT(s.Token, c.Bundle(), audDB)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Expiry.Equal(tt.want) {
				t.Fatalf("exp claim %s, want %s", got.Expiry, tt.want)
			}
		})
	}
}

// TestJWTRotation: JWT keys rotate with their authorities. The prepared key is published
// but does not sign; after activation new tokens carry the new kid, and tokens signed with
// the old key validate until the old authority is pruned. Times are real (go-spiffe
// validates against the real clock): the CA was created 3h ago with a 6h TTL.
func TestJWTRotation(t *testing.T) {
	base := time.Now()
	clk := &fakeClock{t: base.Add(-3 * time.Hour)}
	c := newTestCA(t, t.TempDir(), clk)
	firstKID := c.Authorities()[0].JWTKeyID
	seq := c.Bundle().Sequence

	clk.Set(base)
	if changed, err := c.Rotate(base); err != nil || !changed {
		t.Fatalf("Rotate at half life: %v %v", changed, err)
	}
	k := kids(c)
	preparedKID := k[StatePrepared][0]
	b := c.Bundle()
	if len(b.JWTAuthorities) != 2 || b.JWTAuthorities[firstKID] == nil || b.JWTAuthorities[preparedKID] == nil ||
		b.Sequence != seq+1 || preparedKID == firstKID {
		t.Fatalf("after prepare: kids %v, bundle keys %v, sequence %d", k, slices.Collect(maps.Keys(b.JWTAuthorities)), b.Sequence)
	}
	checkJWKS(t, b, 5*time.Minute)

	oldTok, err := c.MintJWTSVID(wlID, []string{audDB}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, kid, _ := jwtHeader(t, oldTok.Token); kid != firstKID {
		t.Fatalf("signed with %s before activation, want the active %s", kid, firstKID)
	}

	if err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	if k := kids(c); k[StateActive][0] != preparedKID || k[StateOld][0] != firstKID {
		t.Fatalf("after activate: %v", k)
	}
	b = c.Bundle()
	if b.Sequence != seq+1 || len(b.JWTAuthorities) != 2 {
		t.Fatalf("activation changed the bundle: sequence %d, %d keys", b.Sequence, len(b.JWTAuthorities))
	}
	newTok, err := c.MintJWTSVID(wlID, []string{audDB}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, kid, _ := jwtHeader(t, newTok.Token); kid != preparedKID {
		t.Fatalf("signed with %s after activation, want %s", kid, preparedKID)
	}
	for name, tok := range map[string]string{"new": newTok.Token, "old": oldTok.Token} {
		if _, err := validateJWT(tok, b, audDB); err != nil {
			t.Fatalf("%s token against the bundle after activation: %v", name, err)
		}
	}

	// The first authority expires at base+3h: it and its key leave the bundle (the third CA is
	// prepared at the same moment, at the second's half life).
	if changed, err := c.Rotate(base.Add(3 * time.Hour)); err != nil || !changed {
		t.Fatalf("Rotate at expiry: %v %v", changed, err)
	}
	b = c.Bundle()
	if b.JWTAuthorities[firstKID] != nil || b.JWTAuthorities[preparedKID] == nil || len(b.JWTAuthorities) != 2 {
		t.Fatalf("after prune: %v", kids(c))
	}
	if _, err := validateJWT(oldTok.Token, b, audDB); err == nil {
		t.Fatal("a token of the pruned authority still validates")
	}
	if _, err := validateJWT(newTok.Token, b, audDB); err != nil {
		t.Fatalf("new token after prune: %v", err)
	}
	checkJWKS(t, b, 5*time.Minute)
}

// TestJWTScheduledRotation follows the scheduled (not forced) rotation on a fake clock.
func TestJWTScheduledRotation(t *testing.T) {
	clk := &fakeClock{t: t0}
	c := newTestCA(t, t.TempDir(), clk)
	mint := func(at time.Duration) (string, time.Time) {
		t.Helper()
		now := t0.Add(at)
		clk.Set(now)
		if _, err := c.Rotate(now); err != nil {
			t.Fatal(err)
		}
		s, err := c.MintJWTSVID(wlID, []string{audDB}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return s.Token, now
	}
	first := kids(c)[StateActive][0]
	tok1, at1 := mint(3 * time.Hour) // prepared now, still signed by the first
	second := kids(c)[StatePrepared][0]
	tok2, at2 := mint(5 * time.Hour) // activated
	for _, tc := range []struct {
		tok     string
		wantKID string
		at      time.Time
	}{{tok1, first, at1}, {tok2, second, at2}} {
		if _, kid, _ := jwtHeader(t, tc.tok); kid != tc.wantKID {
			t.Fatalf("kid %s, want %s", kid, tc.wantKID)
		}
		if id, err := verifyJWTAt(tc.tok, c.Bundle(), audDB, tc.at.Add(time.Minute)); err != nil || id != wlID {
			t.Fatalf("verify: %s %v", id, err)
		}
		if _, err := verifyJWTAt(tc.tok, c.Bundle(), audDB, tc.at.Add(5*time.Minute+time.Second)); err == nil {
			t.Fatal("verified after exp")
		}
	}
}

func TestJWTKeysPersist(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: t0}
	c := newTestCA(t, dir, clk)
	reopen := func(t *testing.T) {
		t.Helper()
		before := c.Bundle()
		again := newTestCA(t, dir, clk)
		after := again.Bundle()
		if !equalKIDs(kids(c), kids(again)) || !bytes.Equal(before.JWKS, after.JWKS) ||
			!maps.EqualFunc(before.JWTAuthorities, after.JWTAuthorities, pubEqual) {
			t.Fatalf("reloaded JWT keys differ: %v -> %v", kids(c), kids(again))
		}
		// The reloaded key signs tokens that verify against the original bundle.
		s, err := again.MintJWTSVID(wlID, []string{audDB}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verifyJWTAt(s.Token, before, audDB, clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("fresh", reopen)
	t.Run("prepared", func(t *testing.T) {
		clk.Set(t0.Add(3 * time.Hour))
		if _, err := c.Rotate(clk.Now()); err != nil {
			t.Fatal(err)
		}
		reopen(t)
	})
	t.Run("activated", func(t *testing.T) {
		clk.Set(t0.Add(5 * time.Hour))
		if _, err := c.Rotate(clk.Now()); err != nil {
			t.Fatal(err)
		}
		reopen(t)
	})
	// Every authority has a kid and a public key; only those that still sign keep the private one.
	st := readState(t, c.Path())
	for _, a := range st.Authorities {
		if a.JWTKeyID == "" || a.JWTPublicKey == "" || (a.State == StateOld) != (a.JWTPrivateKey == "") {
			t.Errorf("%s authority: kid %q, public %v, private %v", a.State, a.JWTKeyID, a.JWTPublicKey != "", a.JWTPrivateKey != "")
		}
	}
}

func equalKIDs(a, b map[State][]string) bool {
	return equalSKIs(a, b) // same shape: state -> IDs in order
}

func readState(t *testing.T, path string) fileState {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st fileState
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func writeState(t *testing.T, path string, st fileState) {
	t.Helper()
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLoadPreJWTState: a state file written before JWT keys existed loads; the authorities
// that still sign get a JWT key, persisted before use, and the bundle sequence moves on; an
// old authority stays without one.
func TestLoadPreJWTState(t *testing.T) {
	tests := []struct {
		name     string
		rotateTo []time.Duration
		keyType  string
		want     []State
	}{
		{"active only", nil, KeyTypeECP256, []State{StateActive}},
		{"active and prepared", []time.Duration{3 * time.Hour}, KeyTypeECP384, []State{StateActive, StatePrepared}},
		{"old and active", []time.Duration{3 * time.Hour, 5 * time.Hour}, KeyTypeECP256, []State{StateOld, StateActive}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := &fakeClock{t: t0}
			c := newTestCA(t, dir, clk, func(cfg *Config) { cfg.KeyType = tt.keyType })
			for _, at := range tt.rotateTo {
				clk.Set(t0.Add(at))
				if _, err := c.Rotate(clk.Now()); err != nil {
					t.Fatal(err)
				}
			}
			st := readState(t, c.Path())
			for i := range st.Authorities {
				st.Authorities[i].JWTKeyID, st.Authorities[i].JWTPublicKey, st.Authorities[i].JWTPrivateKey = "", "", ""
			}
			writeState(t, c.Path(), st)
			// The stripped file is exactly what the code before JWT keys wrote.
			if data, _ := os.ReadFile(c.Path()); bytes.Contains(data, []byte("jwt")) {
				t.Fatalf("stripped state still mentions jwt: %s", data)
			}

			// A different configured key type: migrated keys follow their authority's.
			r := newTestCA(t, dir, clk, func(cfg *Config) { cfg.KeyType = KeyTypeRSA2048 })
			var states []State
			for _, a := range r.Authorities() {
				states = append(states, a.State)
				if (a.JWTKeyID == "") != (a.State == StateOld) {
					t.Errorf("%s authority has kid %q", a.State, a.JWTKeyID)
				}
			}
			if !slices.Equal(states, tt.want) || !equalSKIs(skis(c), skis(r)) {
				t.Fatalf("authorities changed: %+v", r.Authorities())
			}
			b := r.Bundle()
			if b.Sequence != st.BundleSequence+1 || !bytes.Equal(b.DER, c.Bundle().DER) {
				t.Fatalf("sequence %d (file had %d); X.509 unchanged %v", b.Sequence, st.BundleSequence, bytes.Equal(b.DER, c.Bundle().DER))
			}
			checkJWKS(t, b, 5*time.Minute)

			s, err := r.MintJWTSVID(wlID, []string{audDB}, 0)
			if err != nil {
				t.Fatal(err)
			}
			wantAlg := map[string]string{KeyTypeECP256: "ES256", KeyTypeECP384: "ES384"}[tt.keyType]
			if alg, _, _ := jwtHeader(t, s.Token); alg != wantAlg {
				t.Fatalf("alg %s, want %s (the authority's key type)", alg, wantAlg)
			}
			if _, err := verifyJWTAt(s.Token, b, audDB, clk.Now()); err != nil {
				t.Fatal(err)
			}
			// Persisted: a third start loads the same keys and changes nothing.
			again := newTestCA(t, dir, clk)
			if !equalKIDs(kids(r), kids(again)) || again.Bundle().Sequence != b.Sequence {
				t.Fatalf("keys not persisted: %v -> %v", kids(r), kids(again))
			}
			// The old authority, if any, stays without a key as it rotates out.
			if _, err := again.Rotate(t0.Add(testCA)); err != nil {
				t.Fatal(err)
			}
			if got := again.Bundle(); len(got.JWTAuthorities) != len(got.X509Authorities) {
				t.Fatalf("%d JWT keys for %d authorities after prune", len(got.JWTAuthorities), len(got.X509Authorities))
			}
		})
	}
}

// TestMintJWTSVIDConcurrent mints from many goroutines while the CA is prepared and
// activated; every token validates against the bundle published after it was minted.
func TestMintJWTSVIDConcurrent(t *testing.T) {
	clk := &fakeClock{t: time.Now().Add(-3 * time.Hour)}
	c := newTestCA(t, t.TempDir(), clk)
	clk.Set(time.Now())
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	tokens := make(chan string, 100)
	for range 4 {
		wg.Go(func() {
			for range 25 {
				s, err := c.MintJWTSVID(wlID, []string{audDB}, 0)
				if err != nil {
					errs <- err
					return
				}
				tokens <- s.Token
				if _, err := validateJWT(s.Token, c.Bundle(), audDB); err != nil {
					errs <- err
				}
			}
		})
	}
	if err := c.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := c.Activate(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	close(tokens)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for tok := range tokens {
		seen[tok] = true // ECDSA signatures are randomised: no two tokens are equal
	}
	if len(seen) != 100 {
		t.Fatalf("%d distinct tokens, want 100", len(seen))
	}
}

func TestRefreshHint(t *testing.T) {
	for _, tt := range []struct{ caTTL, want time.Duration }{
		{24 * time.Hour, 5 * time.Minute},
		{time.Hour, 4 * time.Minute},
		{time.Minute, 4 * time.Second},
		{MinCATTL, 2 * time.Second},
		{10 * time.Second, time.Second},
	} {
		if got := refreshHint(tt.caTTL); got != tt.want {
			t.Errorf("refreshHint(%s) = %s, want %s", tt.caTTL, got, tt.want)
		}
	}
	// The publish-ahead window (a third of the CA life) is at least five refresh hints, from a
	// one-minute CA up (below that, lifetimes are test-scale and the hint is floored at 1s).
	for _, ttl := range []time.Duration{time.Minute, time.Hour, 24 * time.Hour, 30 * 24 * time.Hour} {
		if h := refreshHint(ttl); ttl/3 < 5*h {
			t.Errorf("CA TTL %s: hint %s is more than a fifteenth", ttl, h)
		}
	}
}

// TestJWTKeys: JWTKeys lists the bundle's JWT keys with their authority's NotAfter, the
// prepared one included (a fleet host publishes it before it signs).
func TestJWTKeys(t *testing.T) {
	base := time.Now()
	clk := &fakeClock{t: base.Add(-3 * time.Hour)}
	c := newTestCA(t, t.TempDir(), clk)
	clk.Set(base)
	if _, err := c.Rotate(base); err != nil {
		t.Fatal(err)
	}
	ks := c.JWTKeys()
	as := c.Authorities()
	b := c.Bundle()
	if len(ks) != 2 || len(as) != 2 || len(b.JWTAuthorities) != 2 {
		t.Fatalf("%d keys, %d authorities, %d bundle keys; want 2 each", len(ks), len(as), len(b.JWTAuthorities))
	}
	for i, k := range ks {
		if k.KID != as[i].JWTKeyID || !k.NotAfter.Equal(as[i].NotAfter) {
			t.Errorf("key %d: %s until %s, authority's %s until %s", i, k.KID, k.NotAfter, as[i].JWTKeyID, as[i].NotAfter)
		}
		if pub, ok := b.JWTAuthorities[k.KID]; !ok || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public) {
			t.Errorf("key %s is not the bundle's", k.KID)
		}
	}
}
