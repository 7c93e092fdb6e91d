// Package entry holds registration entries and selectors: who is entitled to which SPIFFE ID.
// It is pure (no I/O) so the store, the agent, the config loader and the CLI share one
// definition of what a valid entry is.
package entry

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Entry registers a SPIFFE ID for every caller whose selectors include all of Selectors.
type Entry struct {
	// ID is assigned by the store on create and never changes.
	ID string `json:"id"`
	// Name is set for entries declared in the config file (`entry "name" {}`); those are
	// reconciled at start. Empty for entries created with svidctl.
	Name      string      `json:"name,omitempty"`
	SPIFFEID  spiffeid.ID `json:"spiffe_id"`
	Selectors []Selector  `json:"selectors"`
	// X509SVIDTTL overrides the agent's default SVID lifetime when non-zero.
	X509SVIDTTL time.Duration `json:"x509_svid_ttl,omitempty"`
	DNSNames    []string      `json:"dns_names,omitempty"`
	// FederatesWith lists the foreign trust domains whose bundles a caller holding this entry
	// receives (SPIRE's federatesWith), sorted and without duplicates (NormalizeTrustDomains).
	// A trust domain whose bundle svidd does not hold (yet) is allowed: its bundle is
	// delivered when it arrives.
	FederatesWith []spiffeid.TrustDomain `json:"federates_with,omitempty"`
	// Revision increases on every update; CreatedAt is set once.
	Revision  int64     `json:"revision"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Selector is one fact about a caller, written TYPE:VALUE on the command line, where TYPE is
// the attestor ("unix", "systemd") and VALUE may itself contain colons ("uid:1000").
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Compare orders selectors by type, then value.
func (s Selector) Compare(o Selector) int {
	if c := strings.Compare(s.Type, o.Type); c != 0 {
		return c
	}
	return strings.Compare(s.Value, o.Value)
}

// ErrInvalid is wrapped by every validation error, so callers (admin API, config loader) can
// tell bad input from a failing store.
var ErrInvalid = errors.New("invalid entry")

// Normalize returns the selectors sorted and without duplicates; it is the canonical form
// stored and compared (two entries with the same SPIFFE ID and the same normalized selector
// set are duplicates).
func Normalize(sel []Selector) []Selector {
	out := slices.Clone(sel)
	slices.SortFunc(out, Selector.Compare)
	return slices.Compact(out)
}

// SelectorKey is a canonical string for a normalized selector set (used for duplicate
// detection and grouping identical callers).
func SelectorKey(sel []Selector) string {
	var b strings.Builder
	for i, s := range sel {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(s.String())
	}
	return b.String()
}

// Validate checks the entry as an operator wrote it: the SPIFFE ID belongs to td and is a
// workload ID (non-root path), and ValidateShape's rules. Errors wrap ErrInvalid and name the
// offending field. Whether the TTL suits the CA is the caller's to check (CheckSVIDTTL with
// the CA's lifetime): an entry does not know it.
func (e Entry) Validate(td spiffeid.TrustDomain) error {
	if e.SPIFFEID.IsZero() {
		return fmt.Errorf("%w: spiffe ID is required", ErrInvalid)
	}
	if e.SPIFFEID.TrustDomain() != td {
		return fmt.Errorf("%w: spiffe ID %q is not in trust domain %q", ErrInvalid, e.SPIFFEID, td.Name())
	}
	if e.SPIFFEID.Path() == "" {
		return fmt.Errorf("%w: spiffe ID %q has no path; a workload ID needs one (%s/...)", ErrInvalid, e.SPIFFEID, td.IDString())
	}
	for _, f := range e.FederatesWith {
		if f == td {
			return fmt.Errorf("%w: federates with %q, its own trust domain; list foreign trust domains only", ErrInvalid, f.Name())
		}
	}
	return e.ValidateShape()
}

// ValidateShape checks what does not depend on the trust domain: a SPIFFE ID, at least one
// selector, every selector well-formed, the TTL zero (the agent's default) or at least
// MinSVIDTTL, DNS names plausible. Validate includes it; the store applies it to every write,
// so no caller can store an entry that would read as "every caller" or not read back.
func (e Entry) ValidateShape() error {
	if e.SPIFFEID.IsZero() {
		return fmt.Errorf("%w: spiffe ID is required", ErrInvalid)
	}
	if len(e.Selectors) == 0 {
		return fmt.Errorf("%w: at least one selector is required", ErrInvalid)
	}
	for _, s := range e.Selectors {
		if err := ValidateSelector(s); err != nil {
			return err
		}
	}
	if e.X509SVIDTTL < 0 {
		return fmt.Errorf("%w: x509 SVID TTL %s is negative", ErrInvalid, e.X509SVIDTTL)
	}
	if e.X509SVIDTTL != 0 {
		if err := CheckSVIDTTL(e.X509SVIDTTL, 0); err != nil {
			return fmt.Errorf("x509 SVID TTL %w", err)
		}
	}
	for _, d := range e.DNSNames {
		if err := validateDNSName(d); err != nil {
			return err
		}
	}
	for _, f := range e.FederatesWith {
		if f.IsZero() {
			return fmt.Errorf("%w: federates with an empty trust domain", ErrInvalid)
		}
	}
	return nil
}

// ParseTrustDomains parses trust domain names as operators write them ("other.org" or
// "spiffe://other.org") and returns them normalized. Errors wrap ErrInvalid.
func ParseTrustDomains(names []string) ([]spiffeid.TrustDomain, error) {
	out := make([]spiffeid.TrustDomain, 0, len(names))
	for _, n := range names {
		td, err := ParseTrustDomain(n)
		if err != nil {
			return nil, err
		}
		out = append(out, td)
	}
	return NormalizeTrustDomains(out), nil
}

// ParseTrustDomain parses "other.org" or "spiffe://other.org", refusing a SPIFFE ID with a
// path (a workload ID pasted where a trust domain belongs). Errors wrap ErrInvalid.
func ParseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	if strings.Contains(s, ":/") {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return spiffeid.TrustDomain{}, fmt.Errorf("%w: trust domain %q: %v", ErrInvalid, s, err)
		}
		if id.Path() != "" {
			return spiffeid.TrustDomain{}, fmt.Errorf("%w: trust domain %q has a path; write just the name, e.g. %q", ErrInvalid, s, id.TrustDomain().Name())
		}
		return id.TrustDomain(), nil
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: trust domain %q: %v", ErrInvalid, s, err)
	}
	return td, nil
}

// NormalizeTrustDomains returns tds sorted by name without duplicates (nil when empty): the
// canonical form of Entry.FederatesWith.
func NormalizeTrustDomains(tds []spiffeid.TrustDomain) []spiffeid.TrustDomain {
	if len(tds) == 0 {
		return nil
	}
	out := slices.Clone(tds)
	slices.SortFunc(out, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	return slices.Compact(out)
}

func validateDNSName(d string) error {
	if d == "" || len(d) > 253 {
		return fmt.Errorf("%w: DNS name %q must be 1 to 253 characters", ErrInvalid, d)
	}
	for _, label := range strings.Split(strings.TrimPrefix(d, "*."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%w: DNS name %q has an empty or over-long label", ErrInvalid, d)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%w: DNS name %q has invalid character %q", ErrInvalid, d, c)
			}
		}
	}
	return nil
}
