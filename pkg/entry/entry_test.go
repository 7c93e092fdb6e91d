package entry

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// validateTests is shared with the fuzz seeds: id is parsed with spiffeid.FromString.
var validateTests = []struct {
	name    string
	id      string
	sel     []Selector
	ttl     time.Duration
	dns     []string
	fed     []string // FederatesWith, as trust domain names
	wantErr string
}{
	{name: "minimal", id: "spiffe://example.org/backend", sel: []Selector{{"unix", "uid:1000"}}},
	{name: "full", id: "spiffe://example.org/ns/prod/sa/web", sel: []Selector{{"unix", "uid:1000"}, {"unix", "path:/usr/bin/envoy"}},
		ttl: time.Hour, dns: []string{"web.example.org", "*.web.example.org", "localhost"}},
	{name: "zero TTL means default", id: "spiffe://example.org/a", sel: []Selector{{"systemd", "unit:envoy.service"}}, ttl: 0},

	{name: "no spiffe ID", id: "", sel: []Selector{{"unix", "uid:1000"}}, wantErr: "spiffe ID is required"},
	{name: "other trust domain", id: "spiffe://other.org/backend", sel: []Selector{{"unix", "uid:1000"}}, wantErr: "not in trust domain"},
	{name: "root ID", id: "spiffe://example.org", sel: []Selector{{"unix", "uid:1000"}}, wantErr: "has no path"},
	{name: "no selectors", id: "spiffe://example.org/a", wantErr: "at least one selector"},
	{name: "bad selector", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1000"}, {"unix", "uid:me"}}, wantErr: "not a numeric id"},
	{name: "negative TTL", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1000"}}, ttl: -time.Second, wantErr: "negative"},
	{name: "TTL too short to rotate", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1000"}}, ttl: time.Second, wantErr: "x509 SVID TTL 1s is shorter than the minimum 5s"},
	{name: "shortest TTL", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1000"}}, ttl: MinSVIDTTL},
	{name: "empty DNS name", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{""}, wantErr: "1 to 253"},
	{name: "DNS name too long", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{strings.Repeat("a.", 127)}, wantErr: "1 to 253"},
	{name: "DNS label too long", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{strings.Repeat("a", 64) + ".org"}, wantErr: "over-long label"},
	{name: "DNS empty label", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{"a..org"}, wantErr: "empty or over-long label"},
	{name: "DNS trailing dot", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{"a.org."}, wantErr: "empty or over-long label"},
	{name: "DNS bare wildcard", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{"*."}, wantErr: "empty or over-long label"},
	{name: "DNS inner wildcard", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{"a.*.org"}, wantErr: "invalid character"},
	{name: "DNS underscore", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{"a_b.org"}, wantErr: "invalid character"},
	{name: "DNS space", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, dns: []string{"a b.org"}, wantErr: "invalid character"},
	{name: "federates with", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, fed: []string{"other.org", "third.example"}},
	{name: "federates with own trust domain", id: "spiffe://example.org/a", sel: []Selector{{"unix", "uid:1"}}, fed: []string{"example.org"}, wantErr: "its own trust domain"},
}

func TestEntryValidate(t *testing.T) {
	for _, tt := range validateTests {
		t.Run(tt.name, func(t *testing.T) {
			var id spiffeid.ID
			if tt.id != "" {
				id = spiffeid.RequireFromString(tt.id)
			}
			e := Entry{SPIFFEID: id, Selectors: tt.sel, X509SVIDTTL: tt.ttl, DNSNames: tt.dns}
			for _, f := range tt.fed {
				e.FederatesWith = append(e.FederatesWith, spiffeid.RequireTrustDomainFromString(f))
			}
			err := e.Validate(td)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded, want error containing %q", tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseTrustDomains(t *testing.T) {
	got, err := ParseTrustDomains([]string{"spiffe://b.org", "a.org", "b.org"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name() != "a.org" || got[1].Name() != "b.org" {
		t.Fatalf("ParseTrustDomains = %v, want [a.org b.org] (sorted, deduplicated)", got)
	}
	if got, _ := ParseTrustDomains(nil); got != nil {
		t.Fatalf("ParseTrustDomains(nil) = %v, want nil", got)
	}
	for _, bad := range []string{"", "Other.org", "spiffe://other.org/workload", "other.org:8443", "https://other.org"} {
		if _, err := ParseTrustDomains([]string{bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseTrustDomains(%q) = %v, want an ErrInvalid error", bad, err)
		}
	}
}

// TestCheckSVIDTTL: the bounds every caller (CA, config, admin API) applies, and the reasons
// they branch on.
func TestCheckSVIDTTL(t *testing.T) {
	for _, tt := range []struct {
		ttl, caTTL time.Duration
		want       string
		is         error
	}{
		{MinSVIDTTL, 0, "", nil},
		{time.Hour, 24 * time.Hour, "", nil},
		{4 * time.Hour, 24 * time.Hour, "", nil},
		{MinSVIDTTL, MinCATTL, "", nil},
		{MinSVIDTTL - time.Nanosecond, 0, "is shorter than the minimum 5s", ErrTTLTooShort},
		{time.Second, 24 * time.Hour, "1s is shorter than the minimum 5s", ErrTTLTooShort},
		{-time.Second, 0, "-1s is negative", ErrTTLTooShort},
		{4*time.Hour + time.Second, 24 * time.Hour, "4h0m1s is longer than a sixth of ca_ttl 24h (4h)", ErrTTLTooLong},
		{time.Hour, 0, "", nil}, // no CA lifetime: the minimum only
	} {
		err := CheckSVIDTTL(tt.ttl, tt.caTTL)
		if tt.want == "" {
			if err != nil {
				t.Errorf("CheckSVIDTTL(%s, %s): %v", tt.ttl, tt.caTTL, err)
			}
			continue
		}
		if err == nil || !strings.HasPrefix(err.Error(), FormatDuration(tt.ttl)) || !strings.Contains(err.Error(), tt.want) ||
			!errors.Is(err, ErrInvalid) || !errors.Is(err, tt.is) {
			t.Errorf("CheckSVIDTTL(%s, %s) = %v; want %q wrapping ErrInvalid and %v", tt.ttl, tt.caTTL, err, tt.want, tt.is)
		}
	}
	if err := CheckCATTL(MinCATTL - time.Second); err == nil || !strings.Contains(err.Error(), "minimum 30s") {
		t.Errorf("CheckCATTL below the minimum: %v", err)
	}
	if err := CheckSVIDTTL(MinSVIDTTL, MinCATTL); err != nil {
		t.Errorf("the shortest CA lifetime must admit the shortest SVID lifetime: %v", err)
	}
}
