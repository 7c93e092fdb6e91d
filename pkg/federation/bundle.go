package federation

import (
	"bytes"
	"cmp"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/workload"
)

// ErrInvalidBundle is wrapped by every error about a bundle document or file that cannot be
// used (malformed, no keys where keys are needed, sequence going backwards). The admin API
// answers it with 400: the operator's input is at fault, nothing was stored.
var ErrInvalidBundle = errors.New("invalid bundle")

// Format of a bundle given by an operator.
const (
	// FormatSPIFFE is the SPIFFE bundle document (a JWK Set with spiffe_sequence).
	FormatSPIFFE = "spiffe"
	// FormatPEM is X.509 root certificates, PEM-encoded (no JWT keys, no sequence).
	FormatPEM = "pem"
)

// ParseBundle parses a bundle of td given in format (FormatSPIFFE or FormatPEM). Errors
// wrap ErrInvalidBundle.
func ParseBundle(td spiffeid.TrustDomain, format string, data []byte) (*spiffebundle.Bundle, error) {
	switch format {
	case FormatSPIFFE:
		b, err := spiffebundle.Parse(td, data)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidBundle, err)
		}
		return b, nil
	case FormatPEM:
		certs, err := parsePEMCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidBundle, err)
		}
		return spiffebundle.FromX509Authorities(td, certs), nil
	}
	return nil, fmt.Errorf("%w: format %q is not %s or %s", ErrInvalidBundle, format, FormatSPIFFE, FormatPEM)
}

// ParseBundleAnyFormat parses data as a SPIFFE bundle document if it looks like JSON, else
// as PEM certificates: bundle_file takes either.
func ParseBundleAnyFormat(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		return ParseBundle(td, FormatSPIFFE, data)
	}
	return ParseBundle(td, FormatPEM, data)
}

func parsePEMCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("data after the last PEM block is not PEM")
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block of type %q; only CERTIFICATE blocks belong in a bundle", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d: %v", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// Marshal encodes b as a SPIFFE bundle document. Unlike spiffebundle's own Marshal it
// always writes "keys" (the spec requires it; an empty list means every SVID of the trust
// domain is invalid) and orders JWT keys by key ID, so the same bundle always encodes the
// same bytes.
func Marshal(b *spiffebundle.Bundle) ([]byte, error) {
	// spiffebundle encodes the keys correctly (use, x5c, kid); only the two gaps above need
	// filling, and both are in the envelope.
	data, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encoding bundle of %s: %w", b.TrustDomain().Name(), err)
	}
	return normalizeDoc(data)
}

// SameKeys reports whether a and b hold the same X.509 and JWT authorities, whatever their
// sequence numbers and refresh hints.
func SameKeys(a, b *spiffebundle.Bundle) bool {
	if a == nil || b == nil {
		return a == b
	}
	ac, bc := a.Clone(), b.Clone()
	for _, c := range []*spiffebundle.Bundle{ac, bc} {
		c.ClearSequenceNumber()
		c.ClearRefreshHint()
	}
	return ac.Equal(bc)
}

// ToWorkload turns a parsed foreign bundle into the View's form. version is the bundle's
// resource version (see Manager: the document's spiffe_sequence, or one svidd assigned).
func ToWorkload(b *spiffebundle.Bundle, version uint64) *workload.Bundle {
	certs := b.X509Authorities()
	var pemBuf, derBuf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&pemBuf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		derBuf.Write(c.Raw)
	}
	out := &workload.Bundle{
		TrustDomain:     b.TrustDomain(),
		X509Authorities: certs,
		PEM:             pemBuf.Bytes(),
		DER:             derBuf.Bytes(),
		Sequence:        version,
	}
	if keys := b.JWTAuthorities(); len(keys) > 0 {
		out.JWTAuthorities = keys
		// The Workload API's FetchJWTBundles form: JWT keys only (go-spiffe's jwtbundle.Parse
		// on the client side wants a kid on every key, which X.509 entries must not have).
		if jwks, err := jwtbundle.FromJWTAuthorities(b.TrustDomain(), keys).Marshal(); err == nil {
			out.JWKS = jwks
		}
	}
	return out
}

// FromWorkload is the SPIFFE bundle of the View's bundle b (this trust domain's own, as the
// CA publishes it), with refreshHint (0: none) and b.Sequence as spiffe_sequence.
func FromWorkload(b *workload.Bundle, refreshHint time.Duration) (*spiffebundle.Bundle, error) {
	out := spiffebundle.New(b.TrustDomain)
	out.SetX509Authorities(b.X509Authorities)
	for kid, key := range b.JWTAuthorities {
		if err := out.AddJWTAuthority(kid, key); err != nil {
			return nil, fmt.Errorf("JWT key %q of %s: %w", kid, b.TrustDomain.Name(), err)
		}
	}
	out.SetSequenceNumber(b.Sequence)
	if refreshHint > 0 {
		out.SetRefreshHint(refreshHint)
	}
	return out, nil
}

// normalizeDoc rewrites a bundle document with "keys" always present and JWT keys ordered by
// key ID after the X.509 authorities, which keep their order.
func normalizeDoc(data []byte) ([]byte, error) {
	var doc struct {
		Keys        []json.RawMessage `json:"keys"`
		Sequence    *uint64           `json:"spiffe_sequence,omitempty"`
		RefreshHint *int64            `json:"spiffe_refresh_hint,omitempty"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("re-reading encoded bundle: %w", err)
	}
	type sortKey struct {
		rank int
		kid  string
	}
	keyOf := func(raw json.RawMessage) sortKey {
		var k struct {
			Use string `json:"use"`
			Kid string `json:"kid"`
		}
		_ = json.Unmarshal(raw, &k) // written by spiffebundle a moment ago
		if k.Use == "x509-svid" {
			return sortKey{0, ""}
		}
		return sortKey{1, k.Use + "\x00" + k.Kid}
	}
	slices.SortStableFunc(doc.Keys, func(a, b json.RawMessage) int {
		ka, kb := keyOf(a), keyOf(b)
		if c := cmp.Compare(ka.rank, kb.rank); c != 0 {
			return c
		}
		return strings.Compare(ka.kid, kb.kid)
	})
	if doc.Keys == nil {
		doc.Keys = []json.RawMessage{}
	}
	return json.Marshal(doc)
}
