package sds

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

func TestNewValidatesConfig(t *testing.T) {
	w := workloadtest.NewWatcher(nil)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{Watcher: w, TrustDomain: tdExample}, ""},
		{"custom names", Config{Watcher: w, TrustDomain: tdExample, DefaultSVIDName: "svid", DefaultBundleName: "ca", DefaultAllBundlesName: "all"}, ""},
		{"no watcher", Config{TrustDomain: tdExample}, "watcher is required"},
		{"no trust domain", Config{Watcher: w, TrustDomain: spiffeid.TrustDomain{}}, "trust domain is required"},
		{"duplicate names", Config{Watcher: w, TrustDomain: tdExample, DefaultBundleName: "ALL"}, `both "ALL"`},
		{"wildcard name", Config{Watcher: w, TrustDomain: tdExample, DefaultSVIDName: "*"}, "wildcard"},
		{"spiffe id as name", Config{Watcher: w, TrustDomain: tdExample, DefaultSVIDName: "spiffe://example.org/x"}, "looks like a SPIFFE ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil || s == nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestTokensAreUnique(t *testing.T) {
	a, _ := New(Config{Watcher: workloadtest.NewWatcher(nil), TrustDomain: tdExample})
	b, _ := New(Config{Watcher: workloadtest.NewWatcher(nil), TrustDomain: tdExample})
	seen := map[string]bool{}
	for range 1000 {
		for _, tok := range []string{a.token(), b.token()} {
			if seen[tok] {
				t.Fatalf("token %q repeated", tok)
			}
			seen[tok] = true
		}
	}
}

func TestRequestedNames(t *testing.T) {
	tests := []struct {
		name         string
		in           []string
		wildcardDflt bool
		want         []string
		wantWildcard bool
	}{
		{"first request, no names", nil, true, []string{}, true},
		{"later request, no names", nil, false, []string{}, false},
		{"dedup keeps order", []string{"b", "a", "b"}, true, []string{"b", "a"}, false},
		{"star", []string{"*", "a"}, false, []string{"a"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, wc := requestedNames(tt.in, tt.wildcardDflt)
			if strings.Join(got, ",") != strings.Join(tt.want, ",") || wc != tt.wantWildcard {
				t.Fatalf("got %v %v, want %v %v", got, wc, tt.want, tt.wantWildcard)
			}
		})
	}
	long := make([]string, 100)
	for i := range long {
		long[i] = string(rune('a' + i%20))
	}
	if got, _ := requestedNames(long, false); len(got) != 20 {
		t.Fatalf("long list deduplicated to %d names, want 20", len(got))
	}
}
