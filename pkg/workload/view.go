// Package workload defines the View: everything one caller may receive (its SVIDs and the
// trust bundles), and the Subscription through which the agent pushes a new View whenever it
// changes. Protocol front-ends (SDS, the Workload API, the file writer) only translate Views
// into their wire formats; they never mint, attest or query the store.
package workload

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/peercred"
)

// SVID is one minted X509-SVID. It is immutable once published and shared by every stream
// entitled to it, so the PEM and DER encodings are computed once, when it is minted.
type SVID struct {
	// EntryID and EntryRevision name the entry (and the revision of it) this SVID was minted
	// for; the agent sets them, the CA leaves them empty.
	EntryID       string
	EntryRevision int64
	ID            spiffeid.ID
	// Certificates is the leaf first, then any intermediates up to (not including) the root.
	Certificates []*x509.Certificate
	PrivateKey   crypto.Signer
	// CertChainPEM is Certificates PEM-encoded; KeyPEM is the PKCS#8 key PEM-encoded; KeyDER
	// and CertChainDER are the raw forms the Workload API wants.
	CertChainPEM []byte
	CertChainDER []byte
	KeyPEM       []byte
	KeyDER       []byte
	NotBefore    time.Time
	NotAfter     time.Time
	// RotateAt is when the agent will replace this SVID (about half its lifetime, jittered).
	RotateAt time.Time
	// Serial is the leaf's serial number in lowercase hex: a stable resource version.
	Serial string
}

// NewSVID makes the SVID of id from its certificate chain (leaf first, then any
// intermediates) and the leaf's private key: it encodes the chain and the key once, and takes
// NotBefore, NotAfter and Serial from the leaf. It is the one way an SVID is made (the CA, the
// test CAs), so no producer leaves a field out. EntryID, EntryRevision and RotateAt are the
// agent's to set. The leaf must name exactly id.
func NewSVID(id spiffeid.ID, chain []*x509.Certificate, key crypto.Signer) (*SVID, error) {
	if len(chain) == 0 {
		return nil, errors.New("an SVID needs a certificate")
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		return nil, fmt.Errorf("the SVID certificate's URI SANs %v are not exactly %s", leaf.URIs, id)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding SVID key: %w", err)
	}
	var chainPEM, chainDER []byte
	for _, c := range chain {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		chainDER = append(chainDER, c.Raw...)
	}
	return &SVID{
		ID:           id,
		Certificates: slices.Clone(chain),
		PrivateKey:   key,
		CertChainPEM: chainPEM,
		CertChainDER: chainDER,
		KeyPEM:       pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		KeyDER:       keyDER,
		NotBefore:    leaf.NotBefore,
		NotAfter:     leaf.NotAfter,
		Serial:       leaf.SerialNumber.Text(16),
	}, nil
}

// Bundle is one trust domain's X.509 authorities.
type Bundle struct {
	TrustDomain     spiffeid.TrustDomain
	X509Authorities []*x509.Certificate
	// PEM is X509Authorities PEM-encoded; DER the concatenated DER (Workload API form).
	PEM []byte
	DER []byte
	// JWTAuthorities are the JWT-SVID signing keys by key ID, and JWKS the trust domain's
	// bundle in SPIFFE bundle (JWK Set) form, as FetchJWTBundles sends it. Empty when the
	// trust domain publishes no JWT keys.
	JWTAuthorities map[string]crypto.PublicKey
	JWKS           []byte
	// Sequence increases whenever the contents change: a stable resource version.
	Sequence uint64
}

// View is everything a caller is entitled to, at one moment. It is immutable once published.
// A caller that matches no entry gets an empty View (no SVIDs, no bundles): bundles are only
// served to callers with at least one identity.
type View struct {
	// SVIDs are ordered by the agent's stable rule (by SPIFFE ID, then entry ID); the first is
	// the caller's default identity. No two have the same SPIFFE ID.
	SVIDs []*SVID
	// Bundles: the agent's own trust domain first, then federated ones by name.
	Bundles []*Bundle
	// Partial is set while SVIDs for some of the caller's entries are still being minted
	// (the agent minted the ones the front-end asked for first, see Need, and mints the
	// rest in the background). SVIDs then holds only ready ones — at least those of the
	// identities asked for first that the caller is entitled to — in the same order and with
	// the same deduplication as a complete View (an SVID a Partial View holds is the one the
	// complete View will hold), but SVIDs[0] is NOT necessarily the caller's default identity,
	// and an identity missing from it may still come. Bundles are set as in the
	// complete View. A complete View (Partial false) follows on the same subscription; once
	// a subscription has received a complete View it never receives a Partial one. A
	// front-end that must send the full set (the Workload API) waits for the complete View.
	Partial bool

	// memo holds values derived from this View (encoded responses), shared by every stream
	// holding it; see Memo.
	memo sync.Map
}

// Memo returns the value memoized under key, calling build to make it on first use. It lets
// front-ends encode a response once per View instead of once per stream: a View is published
// to every stream of a caller group and never changes, so anything computed from it alone can
// be shared. key must be comparable and say everything build depends on besides the View
// (e.g. the resource name and how it is encoded).
//
// Concurrency: Memo is safe for concurrent use. build runs once per key: callers that ask for
// a key while it is being built wait for that build (thousands of streams of one caller
// receive a new View at the same instant; building it for each of them would defeat the
// purpose). The result is shared read-only by every stream of the group: neither build's
// caller nor anyone else may modify it afterwards. build must not call Memo on the same View
// with the same key. On a nil View, Memo just calls build. Memoized values live as long as
// the View.
func (v *View) Memo(key any, build func() any) any {
	if v == nil {
		return build()
	}
	m, ok := v.memo.Load(key)
	if !ok {
		m, _ = v.memo.LoadOrStore(key, new(memoEntry))
	}
	e := m.(*memoEntry)
	e.once.Do(func() { e.val = build() })
	return e.val
}

// memoEntry is one memoized value; once makes concurrent first callers share one build.
type memoEntry struct {
	once sync.Once
	val  any
}

// Empty reports whether the caller is entitled to nothing. A Partial View is never Empty,
// even before its first SVID is ready: the caller is entitled to something.
func (v *View) Empty() bool { return v == nil || (len(v.SVIDs) == 0 && !v.Partial) }

// SVIDByID returns the SVID for id, or nil.
func (v *View) SVIDByID(id spiffeid.ID) *SVID {
	if v == nil {
		return nil
	}
	for _, s := range v.SVIDs {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// BundleFor returns the bundle of td, or nil.
func (v *View) BundleFor(td spiffeid.TrustDomain) *Bundle {
	if v == nil {
		return nil
	}
	for _, b := range v.Bundles {
		if b.TrustDomain == td {
			return b
		}
	}
	return nil
}

// JWTSVID is one signed JWT-SVID.
type JWTSVID struct {
	ID        spiffeid.ID
	Token     string
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// ErrNotEntitled is returned when the caller asks for an identity it has no entry for (or has
// no identity at all); front-ends map it to codes.PermissionDenied.
var ErrNotEntitled = errors.New("caller is not entitled to that identity")

// JWTFetcher mints JWT-SVIDs for a caller. The agent implements it: it attests the caller and
// checks entitlement, so a front-end never mints for a caller itself.
type JWTFetcher interface {
	// FetchJWTSVIDs returns a JWT-SVID for audience for id, or, when id is zero, one for each
	// identity the caller holds (default first). ErrNotEntitled when the caller holds no such
	// identity; ErrUnavailable when the agent cannot sign now.
	FetchJWTSVIDs(ctx context.Context, peer *peercred.Peer, id spiffeid.ID, audience []string) ([]*JWTSVID, error)
}

// ErrUnavailable is returned by Watch when the agent cannot serve right now (stopping, CA not
// loaded); front-ends map it to codes.Unavailable.
var ErrUnavailable = errors.New("agent unavailable")

// Need is what a front-end needs in a subscription's first View before it can answer: Watch
// returns once that much is ready. The agent mints the SVIDs needed first and the rest in the
// background, publishing a Partial View until the complete one is ready (see View.Partial).
type Need struct {
	// All asks for a complete first View: every SVID the caller is entitled to. A front-end
	// that must send the full set, or the caller's default SVID, needs it.
	All bool
	// IDs are the SPIFFE IDs whose SVIDs are needed first (ignored with All). None: only
	// bundles are needed, and a Partial View holds them as the complete one does, so a
	// bundle-only call is answered without waiting for any SVID to be minted.
	IDs []spiffeid.ID
}

var (
	// NeedAll: the first View is complete.
	NeedAll = Need{All: true}
	// NeedBundles: only the caller's bundles are needed (and whether it is entitled at all).
	NeedBundles = Need{}
)

// NeedIDs: the SVIDs of ids are needed first. The slice must not be modified afterwards.
func NeedIDs(ids ...spiffeid.ID) Need { return Need{IDs: ids} }

// Watcher is the one thing front-ends need from the agent.
type Watcher interface {
	// Watch attests the caller and subscribes it to its View. The first View is the
	// subscription's Latest when Watch returns, so a front-end answers its first request
	// without waiting. It holds what need asks for: complete with NeedAll; otherwise it may
	// be Partial, holding the caller's bundles and at least the SVIDs of need.IDs the caller
	// is entitled to.
	// The caller must Close the subscription; cancelling ctx does not. Watch is safe for
	// concurrent use. An attestation failure (caller gone, /proc unreadable) is an error;
	// a caller entitled to nothing gets an empty View, not an error, and receives a new View
	// if an entry later entitles it. ErrNotEntitled (wrapped) refuses the caller for good (its
	// process runs another binary than when it connected): front-ends answer PermissionDenied
	// and leave the logging to the watcher.
	Watch(ctx context.Context, peer *peercred.Peer, need Need) (*Subscription, error)
}
