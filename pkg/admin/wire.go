// Package admin is the operator API served on the admin socket (owner and root only) and its
// Go client, used by svidctl. It speaks JSON over HTTP/1.1 on a Unix socket: easy to inspect
// with curl --unix-socket, no generated code, and every request body is a small documented
// JSON object (see Entry below).
package admin

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
)

// Entry is a registration entry on the wire (and in `svidctl ... -output json`). TTLs are in
// seconds, selectors in their TYPE:KIND:VALUE text form, as SPIRE users write them.
type Entry struct {
	ID          string    `json:"id,omitempty"`
	Name        string    `json:"name,omitempty"`
	SPIFFEID    string    `json:"spiffe_id"`
	Selectors   []string  `json:"selectors"`
	X509SVIDTTL int64     `json:"x509_svid_ttl,omitempty"`
	DNSNames    []string  `json:"dns_names,omitempty"`
	Revision    int64     `json:"revision,omitempty"`
	CreatedAt   time.Time `json:"created_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
}

// EntryToWire converts a stored entry for the wire.
func EntryToWire(e entry.Entry) Entry {
	sel := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sel[i] = s.String()
	}
	return Entry{
		ID:          e.ID,
		Name:        e.Name,
		SPIFFEID:    e.SPIFFEID.String(),
		Selectors:   sel,
		X509SVIDTTL: int64(e.X509SVIDTTL / time.Second),
		DNSNames:    e.DNSNames,
		Revision:    e.Revision,
		CreatedAt:   e.CreatedAt,
		UpdatedAt:   e.UpdatedAt,
	}
}

// FromWire parses and validates a wire entry against td. Errors wrap entry.ErrInvalid.
func (w Entry) FromWire(td spiffeid.TrustDomain) (entry.Entry, error) {
	id, err := spiffeid.FromString(w.SPIFFEID)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("%w: spiffe ID %q: %v", entry.ErrInvalid, w.SPIFFEID, err)
	}
	sel, err := entry.ParseSelectors(w.Selectors)
	if err != nil {
		return entry.Entry{}, err
	}
	const maxTTL = int64(10 * 365 * 24 * time.Hour / time.Second)
	if w.X509SVIDTTL < 0 || w.X509SVIDTTL > maxTTL {
		return entry.Entry{}, fmt.Errorf("%w: x509 SVID TTL %d s is out of range", entry.ErrInvalid, w.X509SVIDTTL)
	}
	e := entry.Entry{
		ID:          w.ID,
		Name:        w.Name,
		SPIFFEID:    id,
		Selectors:   sel,
		X509SVIDTTL: time.Duration(w.X509SVIDTTL) * time.Second,
		DNSNames:    w.DNSNames,
	}
	if err := e.Validate(td); err != nil {
		return entry.Entry{}, err
	}
	return e, nil
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Bundle is the answer of GET /v1/bundle.
type Bundle struct {
	TrustDomain string `json:"trust_domain"`
	Sequence    uint64 `json:"sequence"`
	PEM         string `json:"pem"`
}

// Health is the answer of GET /v1/health: Ready is true when the CA is loaded, the store
// answers and the api socket is serving.
type Health struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// MaxBodyBytes bounds a request body; an entry is a few hundred bytes.
const MaxBodyBytes = 64 << 10

// Authority is one CA in the trust domain's bundle (GET /v1/ca, and in Status).
type Authority struct {
	State     string    `json:"state"` // active, prepared or old
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	SKI       string    `json:"ski"`
	Serial    string    `json:"serial,omitempty"`
	KeyType   string    `json:"key_type,omitempty"`
	JWTKeyID  string    `json:"jwt_key_id,omitempty"`
}

// Identity is one SVID the agent currently holds.
type Identity struct {
	SPIFFEID  string    `json:"spiffe_id"`
	EntryID   string    `json:"entry_id"`
	Serial    string    `json:"serial"`
	Streams   int       `json:"streams"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RotateAt  time.Time `json:"rotate_at"`
}

// Status is the answer of GET /v1/status: what an operator needs at a glance.
type Status struct {
	TrustDomain string      `json:"trust_domain"`
	Now         time.Time   `json:"now"`
	StartedAt   time.Time   `json:"started_at"`
	Entries     int         `json:"entries"`
	Streams     int         `json:"streams"`
	Authorities []Authority `json:"authorities"`
	Identities  []Identity  `json:"identities"`
	// Registry is the fleet registry's state; nil without one (store "sqlite").
	Registry *Registry `json:"registry,omitempty"`
}

// Registry is the state of a fleet registry (store "etcd") seen from this host.
type Registry struct {
	Kind      string    `json:"kind"`
	Reachable bool      `json:"reachable"`
	Since     time.Time `json:"since"` // when Reachable last changed (or svidd started)
}
