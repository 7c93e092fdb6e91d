package entry

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateNodeNameAndGroup(t *testing.T) {
	tests := []struct {
		in                string
		nameErr, groupErr string // substrings; empty means accepted
	}{
		{in: "web-1"},
		{in: "web-1.eu.example.com"},
		{in: strings.Repeat("a", MaxNodeNameLen)},
		{in: "team/web", nameErr: `contains "/"`},
		{in: "", nameErr: "is empty", groupErr: "is empty"},
		{in: strings.Repeat("a", MaxNodeNameLen+1), nameErr: "longer than", groupErr: "longer than"},
		{in: "web 1", nameErr: "whitespace", groupErr: "whitespace"},
		{in: "web\u00a01", nameErr: "whitespace", groupErr: "whitespace"}, // no-break space
		{in: "web\n", nameErr: "control character", groupErr: "control character"},
		{in: "\x7f", nameErr: "control character", groupErr: "control character"},
		{in: "a\xffb", nameErr: "UTF-8", groupErr: "UTF-8"},
	}
	for _, tt := range tests {
		for _, c := range []struct {
			what string
			f    func(string) error
			want string
		}{{"name", ValidateNodeName, tt.nameErr}, {"group", ValidateNodeGroup, tt.groupErr}} {
			err := c.f(tt.in)
			if c.want == "" {
				if err != nil {
					t.Errorf("ValidateNode%s(%q): %v", c.what, tt.in, err)
				}
				continue
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalid) {
				t.Errorf("ValidateNode%s(%q) = %v, want ErrInvalid containing %q", c.what, tt.in, err, c.want)
			}
		}
	}
}

func TestNodeSelectors(t *testing.T) {
	got := NodeSelectors("web-1", []string{"web", "eu"})
	if k, want := SelectorKey(got), "node:group:eu\nnode:group:web\nnode:name:web-1"; k != want {
		t.Fatalf("NodeSelectors = %q, want %q (normalized)", k, want)
	}
	for _, s := range got {
		if err := ValidateSelector(s); err != nil {
			t.Fatalf("NodeSelectors made a selector entries cannot name: %v", err)
		}
	}
	caller := []Selector{{"unix", "uid:1000"}, {"unix", "gid:1000"}}
	with := WithNode(Normalize(caller), got)
	if k, want := SelectorKey(with), "node:group:eu\nnode:group:web\nnode:name:web-1\nunix:gid:1000\nunix:uid:1000"; k != want {
		t.Fatalf("WithNode = %q, want %q", k, want)
	}
	if caller[0] != (Selector{"unix", "uid:1000"}) {
		t.Fatal("WithNode modified its input")
	}
}

func TestCanMatchNode(t *testing.T) {
	groups := []string{"web", "eu"}
	tests := []struct {
		name string
		sel  []string
		want bool
	}{
		{"no node selectors: every host", []string{"unix:uid:1000"}, true},
		{"this host's name", []string{"unix:uid:1000", "node:name:web-1"}, true},
		{"another host's name", []string{"unix:uid:1000", "node:name:web-2"}, false},
		{"two different names match nowhere", []string{"node:name:web-1", "node:name:web-2"}, false},
		{"one of its groups", []string{"node:group:eu"}, true},
		{"both its groups", []string{"node:group:eu", "node:group:web"}, true},
		{"a group it is not in", []string{"node:group:us"}, false},
		{"one group in, one out", []string{"node:group:eu", "node:group:us"}, false},
		{"name and group", []string{"node:name:web-1", "node:group:web"}, true},
		{"name ok, group not", []string{"node:name:web-1", "node:group:db"}, false},
		{"a group named like the host", []string{"node:group:web-1"}, false},
		{"a name named like a group", []string{"node:name:web"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := ParseSelectors(tt.sel)
			if err != nil {
				t.Fatal(err)
			}
			e := Entry{Selectors: sel}
			if got := CanMatchNode(e, "web-1", groups); got != tt.want {
				t.Fatalf("CanMatchNode(%v, web-1, %v) = %v, want %v", tt.sel, groups, got, tt.want)
			}
			// The property the mirror relies on: an entry that can match on the host is
			// exactly one some caller of the host could match, given its other selectors.
			caller := WithNode(Normalize(nonNode(sel)), NodeSelectors("web-1", groups))
			if Matches(e, caller) != tt.want {
				t.Fatalf("Matches(%v, %v) = %v, disagrees with CanMatchNode", tt.sel, caller, !tt.want)
			}
		})
	}
}

func nonNode(sel []Selector) []Selector {
	var out []Selector
	for _, s := range sel {
		if !IsNodeSelector(s) {
			out = append(out, s)
		}
	}
	return out
}
