package entry

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func FuzzParseSelector(f *testing.F) {
	for _, tt := range parseSelectorTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSelector(in)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSelector(%q): error %v does not wrap ErrInvalid", in, err)
			}
			return
		}
		if s.String() != in {
			t.Fatalf("ParseSelector(%q).String() = %q", in, s.String())
		}
		again, err := ParseSelector(s.String())
		if err != nil || again != s {
			t.Fatalf("re-parsing %q = %v, %v; want %v", s.String(), again, err, s)
		}
		if err := ValidateSelector(s); err != nil {
			t.Fatalf("parsed selector %v does not validate: %v", s, err)
		}
		// A parsed selector never breaks the canonical key (newline-separated).
		if strings.Contains(SelectorKey([]Selector{s}), "\n") {
			t.Fatalf("selector %q contains a newline", in)
		}
	})
}

func FuzzSPIFFEIDAndEntry(f *testing.F) {
	for _, tt := range validateTests {
		var ss []string
		for _, s := range tt.sel {
			ss = append(ss, s.String())
		}
		f.Add(tt.id, strings.Join(ss, "\n"), int64(tt.ttl), strings.Join(tt.dns, ","))
	}
	f.Fuzz(func(t *testing.T, id, selectors string, ttl int64, dns string) {
		sid, err := spiffeid.FromString(id)
		if err != nil {
			sid = spiffeid.ID{}
		}
		var sels []Selector
		for _, line := range strings.Split(selectors, "\n") {
			typ, value, _ := strings.Cut(line, ":")
			sels = append(sels, Selector{Type: typ, Value: value})
		}
		var names []string
		if dns != "" {
			names = strings.Split(dns, ",")
		}
		e := Entry{ID: "x", SPIFFEID: sid, Selectors: sels, X509SVIDTTL: time.Duration(ttl), DNSNames: names}
		err = e.Validate(td)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// A valid entry: in our trust domain, with a path, every selector valid, and it is
		// found by a caller that has exactly its selectors.
		if !sid.MemberOf(td) || sid.Path() == "" || ttl < 0 {
			t.Fatalf("Validate accepted %+v", e)
		}
		for _, s := range sels {
			if _, err := ParseSelector(s.String()); err != nil {
				t.Fatalf("Validate accepted selector %q that does not parse: %v", s, err)
			}
		}
		x := NewIndex()
		x.Put(e)
		if got := x.Match(sels); len(got) != 1 || got[0].ID != "x" {
			t.Fatalf("valid entry not matched by its own selectors: %v", got)
		}
	})
}

// FuzzCanMatchNode: whether an entry can match on a host (what the host copies of a fleet
// registry) is exactly whether a caller of that host having every other selector of the
// entry matches it; never panics on any selectors.
func FuzzCanMatchNode(f *testing.F) {
	f.Add("node:name:web-1\nunix:uid:1", "web-1", "web\neu")
	f.Add("node:name:web-1\nnode:name:web-2", "web-1", "")
	f.Add("node:group:eu\nnode:group:us", "web-1", "eu")
	f.Add("node:group:web-1", "web-1", "web")
	f.Fuzz(func(t *testing.T, sels, name, groups string) {
		if ValidateNodeName(name) != nil {
			return
		}
		var gs []string
		for _, g := range strings.Split(groups, "\n") {
			if ValidateNodeGroup(g) == nil {
				gs = append(gs, g)
			}
		}
		var parsed []Selector
		for _, s := range strings.Split(sels, "\n") {
			if sel, err := ParseSelector(s); err == nil {
				parsed = append(parsed, sel)
			}
		}
		e := Entry{Selectors: Normalize(parsed)}
		got := CanMatchNode(e, name, gs)
		if len(parsed) == 0 {
			return // matches nobody, whatever the host
		}
		caller := WithNode(Normalize(nonNode(e.Selectors)), NodeSelectors(name, gs))
		if want := Matches(e, caller); got != want {
			t.Fatalf("CanMatchNode(%v, %q, %q) = %v, but a caller with %v matches: %v", e.Selectors, name, gs, got, caller, want)
		}
	})
}
