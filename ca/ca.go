package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/ownership"
	"github.com/svidd/svidd/pkg/workload"
)

// Defaults and limits.
const (
	DefaultCATTL   = 24 * time.Hour
	DefaultSVIDTTL = time.Hour
	// MinCATTL is the shortest CA lifetime (entry.MinCATTL: six times the shortest SVID
	// lifetime). Lifetimes this short are for tests that watch several CA rotations (the
	// backdate scales down with them); production wants hours.
	MinCATTL = entry.MinCATTL
	// StateFileName is the CA state file inside Config.Dir.
	StateFileName = "ca.json"

	// backdate is subtracted from NotBefore so that peers whose clocks run slightly behind
	// accept a certificate minted this instant.
	backdate = 10 * time.Second
)

// ErrTTLTooLong and ErrTTLTooShort are returned (wrapped) by New and the Mint methods when an
// SVID TTL is outside entry.CheckSVIDTTL's bounds: longer than a sixth of the CA TTL (such an
// SVID could outlive the overlap window in which its signing CA is still published after the
// next one takes over), or too short to be rotated before it expires.
var (
	ErrTTLTooLong  = entry.ErrTTLTooLong
	ErrTTLTooShort = entry.ErrTTLTooShort
)

// ErrCAExpired is returned (wrapped) by MintX509SVID when the active CA has expired, which
// happens only if nothing called Rotate/Run since it did.
var ErrCAExpired = errors.New("active CA expired")

// Config configures a CA.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Dir is the data directory; the state lives in Dir/ca.json (0600). Created 0700 if missing;
	// an existing one must be svidd's (pkg/ownership).
	Dir string
	// KeyType of CA, SVID and JWT signing keys (JWT: ES256, ES384, RS256): "ec-p256"
	// (default), "ec-p384", "rsa-2048". A CA loaded from disk keeps its keys; a change applies
	// from the next prepared CA on.
	KeyType string
	// CATTL is the lifetime of each CA certificate (default 24h, at least MinCATTL).
	CATTL time.Duration
	// SVIDTTL is the default SVID lifetime: 1h, or CATTL/6 if that is shorter. An explicit
	// value outside entry.CheckSVIDTTL's bounds (above CATTL/6, below entry.MinSVIDTTL) is
	// refused.
	SVIDTTL time.Duration
	// JWTSVIDTTL is the default JWT-SVID lifetime: 5m, or CATTL/6 if that is shorter. An
	// explicit value above CATTL/6 is refused, for the same overlap reason as SVIDTTL.
	JWTSVIDTTL time.Duration
	Clock      func() time.Time
	Logger     *slog.Logger
	// OnStep, when set, is called after each rotation step is committed, with the step's name
	// (prepare, activate, prune, replace-expired); for metrics. It must not block.
	OnStep func(step string)

	// Upstream, when set, signs every CA this host uses (see Upstream): the host's CA is an
	// intermediate, SVIDs carry its chain, the bundle is the upstream's roots, and the CA
	// never falls back to self-signing. A failed signing is retried with backoff while the
	// active CA keeps signing until it expires.
	Upstream Upstream
	// NodeName names the host in the subject of the CA certificates it asks the upstream for.
	NodeName string
	// OnUpstreamError, when set, is called after each failed upstream signing; for metrics.
	// It must not block.
	OnUpstreamError func(err error)
}

// State is an authority's place in the rotation.
type State string

const (
	// StateActive signs new SVIDs. There is exactly one.
	StateActive State = "active"
	// StatePrepared is published in the bundle and will become active.
	StatePrepared State = "prepared"
	// StateOld was active; it stays in the bundle until it expires.
	StateOld State = "old"
)

// AuthorityInfo describes one CA certificate, for status output.
type AuthorityInfo struct {
	State     State
	NotBefore time.Time
	NotAfter  time.Time
	// SKI is the subject key identifier, Serial the serial number, both lowercase hex.
	SKI     string
	Serial  string
	KeyType string
	// JWTKeyID is the kid of the authority's JWT-SVID signing key; empty for an old
	// authority loaded from a state file written before JWT keys existed.
	JWTKeyID string
	// Certificate is shared; do not modify it.
	Certificate *x509.Certificate
}

// authority is immutable once part of a published snapshot.
type authority struct {
	state  State
	cert   *x509.Certificate
	signer crypto.Signer // nil for old authorities: they never sign again
	// chain holds the upstream intermediates above cert (never a root), roots the upstream's
	// roots when it was signed; both nil for a self-signed authority.
	chain []*x509.Certificate
	roots []*x509.Certificate
	// jwt is the JWT-SVID key; public only for old authorities, nil for an old authority
	// from a state file written before JWT keys existed.
	jwt *jwtKey
}

// retired returns a as an old authority: it keeps its certificates and JWT public key, and
// drops its private keys (an old authority never signs again).
func (a *authority) retired() *authority {
	return &authority{state: StateOld, cert: a.cert, chain: a.chain, roots: a.roots, jwt: a.jwt.public()}
}

// activated returns a copy of a in the active state.
func (a *authority) activated() *authority {
	b := *a
	b.state = StateActive
	return &b
}

// withJWT returns a copy of a with JWT key k.
func (a *authority) withJWT(k *jwtKey) *authority {
	b := *a
	b.jwt = k
	return &b
}

// snapshot is the whole CA state at one moment; immutable once published.
type snapshot struct {
	authorities []*authority // by NotBefore, then serial
	sequence    uint64
	bundle      *workload.Bundle
}

func (s *snapshot) find(st State) *authority {
	for _, a := range s.authorities {
		if a.state == st {
			return a
		}
	}
	return nil
}

// CA is the trust domain's certificate authority. All methods are safe for concurrent use.
type CA struct {
	cfg   Config
	td    spiffeid.TrustDomain
	path  string
	log   *slog.Logger
	clock func() time.Time

	// state is read without locks by MintX509SVID and Bundle: minting never waits for a
	// rotation's disk write.
	state atomic.Pointer[snapshot]
	// writeMu serialises transitions, including their disk write, so two of them never
	// interleave between computing and persisting.
	writeMu sync.Mutex

	notifyMu sync.Mutex
	notify   chan struct{}

	// kick wakes Run after a forced Prepare/Activate so it recomputes its timer.
	kick chan struct{}

	upstream upstreamState
}

// New validates cfg, then loads the CA state from cfg.Dir or, on first start, creates a root
// and persists it. Anything already due (an expired active CA after a long downtime, a
// rotation step) is applied before New returns. It starts no goroutines.
func New(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	if cfg.Dir == "" {
		return nil, errors.New("ca: data dir is required")
	}
	if cfg.KeyType == "" {
		cfg.KeyType = KeyTypeECP256
	}
	if !validKeyType(cfg.KeyType) {
		return nil, fmt.Errorf("ca: unknown key type %q (want %s, %s or %s)", cfg.KeyType, KeyTypeECP256, KeyTypeECP384, KeyTypeRSA2048)
	}
	if cfg.CATTL == 0 {
		cfg.CATTL = DefaultCATTL
	}
	if err := entry.CheckCATTL(cfg.CATTL); err != nil {
		return nil, fmt.Errorf("ca: CA TTL %w", err)
	}
	if cfg.SVIDTTL == 0 {
		cfg.SVIDTTL = min(DefaultSVIDTTL, entry.MaxSVIDTTL(cfg.CATTL))
	}
	if err := entry.CheckSVIDTTL(cfg.SVIDTTL, cfg.CATTL); err != nil {
		return nil, fmt.Errorf("ca: SVID TTL %w", err)
	}
	if cfg.JWTSVIDTTL == 0 {
		cfg.JWTSVIDTTL = min(DefaultJWTSVIDTTL, entry.MaxSVIDTTL(cfg.CATTL))
	}
	if err := entry.CheckSVIDTTL(cfg.JWTSVIDTTL, cfg.CATTL); err != nil {
		return nil, fmt.Errorf("ca: JWT-SVID TTL %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &CA{
		cfg:    cfg,
		td:     cfg.TrustDomain,
		path:   filepath.Join(cfg.Dir, StateFileName),
		log:    cfg.Logger.With("component", "ca"),
		clock:  cfg.Clock,
		notify: make(chan struct{}),
		kick:   make(chan struct{}, 1),
	}
	if cfg.Upstream != nil {
		c.upstream.st.Name = cfg.Upstream.Name()
	}
	// Anyone who can write the directory, or rename it, can replace ca.json (rename needs no
	// access to the file itself): it must be svidd's.
	if err := ownership.Dir("data dir", cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}

	auths, seq, err := loadState(c.path, c.td)
	var snap *snapshot
	switch {
	case errors.Is(err, fs.ErrNotExist):
		a, err := c.newAuthority(StateActive, c.clock())
		if err != nil {
			return nil, fmt.Errorf("ca: creating the first CA: %w", err)
		}
		if snap, err = c.newSnapshot([]*authority{a}, 1); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		if err := saveState(c.path, c.td, snap); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		c.log.Info("created CA", "trust_domain", c.td.Name(), "key_type", cfg.KeyType,
			"not_after", a.cert.NotAfter, "ski", hex.EncodeToString(a.cert.SubjectKeyId), "path", c.path)
	case err != nil:
		return nil, fmt.Errorf("ca: %w", err)
	default:
		if snap, err = c.newSnapshot(auths, seq); err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		c.log.Info("loaded CA", "trust_domain", c.td.Name(), "path", c.path, "authorities", len(snap.authorities))
	}
	c.state.Store(snap)
	if err := c.addMissingJWTKeys(); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}

	if _, err := c.Rotate(c.clock()); err != nil {
		// An upstream that is down must not stop a host whose CA still signs: Run retries.
		if cfg.Upstream == nil || !c.clock().Before(c.NotAfter()) {
			return nil, fmt.Errorf("ca: %w", err)
		}
		c.log.Warn("CA rotation failed at start; the active CA keeps signing and the rotation is retried", "error", err)
	}
	return c, nil
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Path returns the state file's path.
func (c *CA) Path() string { return c.path }

// SVIDTTL returns the default SVID TTL (the one used when MintX509SVID gets 0).
func (c *CA) SVIDTTL() time.Duration { return c.cfg.SVIDTTL }

// MaxSVIDTTL returns the longest SVID TTL MintX509SVID accepts: a sixth of the CA TTL.
func (c *CA) MaxSVIDTTL() time.Duration { return entry.MaxSVIDTTL(c.cfg.CATTL) }

// CATTL returns the lifetime of each CA certificate.
func (c *CA) CATTL() time.Duration { return c.cfg.CATTL }

// Bundle returns the current own-trust-domain bundle: every published authority (active,
// prepared, old-unexpired), oldest first, with their X.509 certificates and their JWT keys
// (JWTAuthorities, and JWKS: the SPIFFE bundle document of the JWT keys, as FetchJWTBundles
// sends it). The value is shared and immutable; do not modify it.
func (c *CA) Bundle() *workload.Bundle { return c.state.Load().bundle }

// BundleChanged returns a channel that is closed when Bundle() next changes. Take the
// channel before reading Bundle() so that no change is missed; then take it again.
func (c *CA) BundleChanged() <-chan struct{} {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	return c.notify
}

// NotAfter returns the active CA's NotAfter: no SVID minted now outlives it.
func (c *CA) NotAfter() time.Time { return c.state.Load().find(StateActive).cert.NotAfter }

// Authorities describes every authority in the state, oldest first.
func (c *CA) Authorities() []AuthorityInfo {
	snap := c.state.Load()
	out := make([]AuthorityInfo, 0, len(snap.authorities))
	for _, a := range snap.authorities {
		out = append(out, AuthorityInfo{
			State:       a.state,
			NotBefore:   a.cert.NotBefore,
			NotAfter:    a.cert.NotAfter,
			SKI:         hex.EncodeToString(a.cert.SubjectKeyId),
			Serial:      a.cert.SerialNumber.Text(16),
			KeyType:     keyTypeOf(a.cert.PublicKey),
			Certificate: a.cert,
		})
		if a.jwt != nil {
			out[len(out)-1].JWTKeyID = a.jwt.kid
		}
	}
	return out
}

// MintX509SVID mints an X509-SVID for id, which must be a workload ID (non-empty path) in
// the CA's trust domain. ttl 0 means the configured SVID TTL; NotAfter is clamped to the
// active CA's. The returned SVID has EntryID and RotateAt unset: they are the agent's.
// Key generation and signing run outside any lock.
func (c *CA) MintX509SVID(id spiffeid.ID, ttl time.Duration, dnsNames []string) (*workload.SVID, error) {
	svid, err := c.mint(id, ttl, dnsNames)
	if err != nil {
		return nil, fmt.Errorf("minting X509-SVID for %s: %w", id, err)
	}
	return svid, nil
}

func (c *CA) mint(id spiffeid.ID, ttl time.Duration, dnsNames []string) (*workload.SVID, error) {
	switch {
	case id.IsZero():
		return nil, errors.New("empty SPIFFE ID")
	case id.TrustDomain() != c.td:
		return nil, fmt.Errorf("ID is not in trust domain %q", c.td.Name())
	case id.Path() == "":
		return nil, errors.New("an X509-SVID's SPIFFE ID needs a path")
	}
	if ttl == 0 {
		ttl = c.cfg.SVIDTTL
	}
	if err := entry.CheckSVIDTTL(ttl, c.cfg.CATTL); err != nil {
		return nil, fmt.Errorf("TTL %w", err)
	}
	for _, n := range dnsNames {
		if n == "" {
			return nil, errors.New("empty DNS name")
		}
	}

	return c.mintWith(c.state.Load().find(StateActive), id, ttl, dnsNames, c.clock())
}

// mintWith signs an SVID with act at now; id, ttl and dnsNames are already checked.
func (c *CA) mintWith(act *authority, id spiffeid.ID, ttl time.Duration, dnsNames []string, now time.Time) (*workload.SVID, error) {
	// Backdate for clock skew, but by at most a tenth of the TTL: rotation happens at half of
	// [NotBefore, NotAfter], and a 10s backdate on a 4s SVID would put that point in the past.
	notBefore := now.Add(-min(backdate, ttl/10))
	if notBefore.Before(act.cert.NotBefore) {
		notBefore = act.cert.NotBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(act.cert.NotAfter) {
		notAfter = act.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("%w at %s", ErrCAExpired, act.cert.NotAfter.UTC().Format(time.RFC3339))
	}

	key, err := generateKey(c.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	// A non-empty subject means the URI SAN need not be critical (X509-SVID §3.1).
	subject := pkix.Name{Organization: []string{"SPIFFE"}}
	if len(dnsNames) > 0 {
		subject.CommonName = dnsNames[0]
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		ku |= x509.KeyUsageKeyEncipherment // RSA key transport; allowed by §4.3
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              slices.Clone(dnsNames),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, act.cert, key.Public(), act.signer)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing minted certificate: %w", err)
	}
	// Under an upstream, the chain up to (not including) the root goes with every SVID: a
	// peer holds only the roots.
	certs := []*x509.Certificate{leaf}
	if act.roots != nil {
		certs = append(append(certs, act.cert), act.chain...)
	}
	return workload.NewSVID(id, certs, key)
}

// newAuthority makes the next CA: signed by the upstream when there is one, else self-signed.
func (c *CA) newAuthority(st State, now time.Time) (*authority, error) {
	if c.cfg.Upstream != nil {
		return c.newUpstreamAuthority(st, now)
	}
	return c.newSelfSigned(st, now)
}

// encodeChain returns certs PEM-encoded and as concatenated DER.
func encodeChain(certs []*x509.Certificate) (pemOut, derOut []byte) {
	for _, c := range certs {
		pemOut = append(pemOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		derOut = append(derOut, c.Raw...)
	}
	return pemOut, derOut
}

// newSelfSigned generates a self-signed CA for the trust domain, valid from now (backdated)
// for CATTL, and its JWT signing key.
func (c *CA) newSelfSigned(st State, now time.Time) (*authority, error) {
	key, err := generateKey(c.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serial in the subject makes each root's name unique, so verifiers that look
		// issuers up by name (OpenSSL, BoringSSL in Envoy) never confuse two overlapping roots.
		Subject: pkix.Name{
			Organization: []string{"SPIFFE"},
			CommonName:   "svidd CA",
			SerialNumber: serial.Text(16),
		},
		// Backdated for clock skew, by at most a tenth of the life so the rotation schedule
		// (a function of NotBefore and NotAfter) keeps its shape for short test lifetimes.
		NotBefore:             now.Add(-min(backdate, c.cfg.CATTL/10)),
		NotAfter:              now.Add(c.cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// It signs only leaves.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		// The trust domain ID, no path: allowed for signing certificates (X509-SVID §3.2).
		URIs: []*url.URL{c.td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signing CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	jk, err := newJWTKey(c.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	return &authority{state: st, cert: cert, signer: key, jwt: jk}, nil
}

// newSnapshot orders the authorities and builds the bundle.
func (c *CA) newSnapshot(auths []*authority, seq uint64) (*snapshot, error) {
	auths = slices.Clone(auths)
	slices.SortFunc(auths, func(a, b *authority) int {
		if c := a.cert.NotBefore.Compare(b.cert.NotBefore); c != 0 {
			return c
		}
		return a.cert.SerialNumber.Cmp(b.cert.SerialNumber)
	})
	certs := bundleCerts(auths)
	pemBytes, derBytes := encodeChain(certs)
	jwtKeys, jwks, err := marshalJWKS(auths, seq, refreshHint(c.cfg.CATTL))
	if err != nil {
		return nil, err
	}
	return &snapshot{
		authorities: auths,
		sequence:    seq,
		bundle: &workload.Bundle{
			TrustDomain:     c.td,
			X509Authorities: certs,
			PEM:             pemBytes,
			DER:             derBytes,
			JWTAuthorities:  jwtKeys,
			JWKS:            jwks,
			Sequence:        seq,
		},
	}, nil
}
