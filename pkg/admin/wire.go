// Package admin is the operator API served on the admin socket (owner and root only) and its
// Go client, used by svidctl. It speaks JSON over HTTP/1.1 on a Unix socket: easy to inspect
// with curl --unix-socket, no generated code, and every request body is a small documented
// JSON object (see Entry below).
package admin

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
)

// Entry is a registration entry on the wire (and in `svidctl ... -output json`). TTLs are in
// seconds, selectors in their TYPE:KIND:VALUE text form, as SPIRE users write them.
type Entry struct {
	ID string `json:"id,omitempty"`
	// Name is set on entries declared in the config file (`entry "name" {}`); the API
	// refuses it in requests, and refuses to change or delete such entries (409).
	Name        string   `json:"name,omitempty"`
	SPIFFEID    string   `json:"spiffe_id"`
	Selectors   []string `json:"selectors"`
	X509SVIDTTL int64    `json:"x509_svid_ttl,omitempty"`
	DNSNames    []string `json:"dns_names,omitempty"`
	// FederatesWith are trust domain names (other.org), SPIRE's federatesWith.
	FederatesWith []string  `json:"federates_with,omitempty"`
	Revision      int64     `json:"revision,omitempty"`
	CreatedAt     time.Time `json:"created_at,omitzero"`
	UpdatedAt     time.Time `json:"updated_at,omitzero"`
	// Warnings, in answers to create and update only: why the entry can never match a caller
	// on this host (a selector svidd cannot derive here). The entry is stored all the same.
	Warnings []string `json:"warnings,omitempty"`
}

// EntryToWire converts a stored entry for the wire.
func EntryToWire(e entry.Entry) Entry {
	sel := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sel[i] = s.String()
	}
	return Entry{
		ID:            e.ID,
		Name:          e.Name,
		SPIFFEID:      e.SPIFFEID.String(),
		Selectors:     sel,
		X509SVIDTTL:   int64(e.X509SVIDTTL / time.Second),
		DNSNames:      e.DNSNames,
		FederatesWith: trustDomainNames(e.FederatesWith),
		Revision:      e.Revision,
		CreatedAt:     e.CreatedAt,
		UpdatedAt:     e.UpdatedAt,
	}
}

// FromWire parses and validates a wire entry against td. Errors wrap entry.ErrInvalid.
//
// Name is refused: it marks an entry as declared by an `entry "name" {}` block of the config
// file, and svidd makes the named entries equal to those blocks at every start and reload, so
// a named entry written through the API would be deleted or overwritten then, after the API
// had acknowledged it. Name is only ever set on the way out (EntryToWire).
func (w Entry) FromWire(td spiffeid.TrustDomain) (entry.Entry, error) {
	if w.Name != "" {
		return entry.Entry{}, fmt.Errorf("%w: \"name\" is set only by entry blocks of the config file (svidd replaces or removes named entries to match them at every start and reload); leave it out", entry.ErrInvalid)
	}
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
	fed, err := entry.ParseTrustDomains(w.FederatesWith)
	if err != nil {
		return entry.Entry{}, err
	}
	e := entry.Entry{
		FederatesWith: fed,
		ID:            w.ID,
		SPIFFEID:      id,
		Selectors:     sel,
		X509SVIDTTL:   time.Duration(w.X509SVIDTTL) * time.Second,
		DNSNames:      w.DNSNames,
	}
	if err := e.Validate(td); err != nil {
		return entry.Entry{}, err
	}
	return e, nil
}

func trustDomainNames(tds []spiffeid.TrustDomain) []string {
	if len(tds) == 0 {
		return nil
	}
	out := make([]string, len(tds))
	for i, td := range tds {
		out[i] = td.Name()
	}
	return out
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Bundle is the answer of GET /v1/bundle (the own trust domain's) and GET /v1/bundles/{td}
// (a federated one). SPIFFE is the SPIFFE bundle document (JWK Set) of the same bundle.
type Bundle struct {
	TrustDomain string          `json:"trust_domain"`
	Sequence    uint64          `json:"sequence"`
	PEM         string          `json:"pem"`
	SPIFFE      json.RawMessage `json:"spiffe,omitempty"`
}

// FederatedBundle is one foreign trust domain in GET /v1/bundles: its bundle, if svidd holds
// one, and its federates_with relationship, if one is configured.
type FederatedBundle struct {
	TrustDomain     string    `json:"trust_domain"`
	HasBundle       bool      `json:"has_bundle"`
	Source          string    `json:"source,omitempty"` // endpoint, file or manual
	Version         uint64    `json:"version,omitempty"`
	UpdatedAt       time.Time `json:"updated_at,omitzero"`
	X509Authorities int       `json:"x509_authorities"`
	JWTAuthorities  int       `json:"jwt_authorities"`
	// Configured: a federates_with block names this trust domain.
	Configured        bool      `json:"configured"`
	BundleEndpointURL string    `json:"bundle_endpoint_url,omitempty"`
	Profile           string    `json:"profile,omitempty"`
	ToAllWorkloads    bool      `json:"to_all_workloads,omitempty"`
	LastRefresh       time.Time `json:"last_refresh,omitzero"`
	NextRefresh       time.Time `json:"next_refresh,omitzero"`
	LastError         string    `json:"last_error,omitempty"`
}

// SetBundle is the body of PUT /v1/bundles/{td}: a bundle in Format "spiffe" (a SPIFFE
// bundle document) or "pem" (X.509 roots).
type SetBundle struct {
	Format string `json:"format"`
	Data   string `json:"data"`
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
	// Upstream is set when an upstream signs the host's CA.
	Upstream *Upstream `json:"upstream,omitempty"`
	// Registry is the fleet registry's state; nil without one (store "sqlite").
	Registry *Registry `json:"registry,omitempty"`
	// RegistrarOnly: a registrar-only host, with no CA and no identities by design.
	RegistrarOnly bool `json:"registrar_only,omitempty"`
}

// Upstream is the state of the PKI that signs the host's CA.
type Upstream struct {
	Name string `json:"name"` // disk or step_ca
	// LastSuccess is when it last signed a CA; zero if never since svidd started.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// Failures counts failed signings since the last success (each is retried with
	// backoff); LastError and LastFailure describe the newest.
	Failures    int       `json:"failures"`
	LastError   string    `json:"last_error,omitempty"`
	LastFailure time.Time `json:"last_failure,omitzero"`
}

// Registry is the state of a fleet registry (store "etcd") seen from this host.
type Registry struct {
	Kind      string    `json:"kind"`
	Reachable bool      `json:"reachable"`
	Since     time.Time `json:"since"` // when Reachable last changed (or svidd started)
	// NodeNameConflict says why another host is taken to run with this host's node_name
	// (this host then publishes no node record); empty when none is.
	NodeNameConflict string `json:"node_name_conflict,omitempty"`
}
