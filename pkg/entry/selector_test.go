package entry

import (
	"errors"
	"strings"
	"testing"
)

var sha = strings.Repeat("ab", 32)

// parseSelectorTests is shared with the fuzz seeds.
var parseSelectorTests = []struct {
	in      string
	want    Selector
	wantErr string // substring of the error; empty means success
}{
	{in: "unix:uid:1000", want: Selector{"unix", "uid:1000"}},
	{in: "unix:uid:0", want: Selector{"unix", "uid:0"}},
	{in: "unix:uid:4294967295", want: Selector{"unix", "uid:4294967295"}},
	{in: "unix:gid:1000", want: Selector{"unix", "gid:1000"}},
	{in: "unix:supplementary_gid:27", want: Selector{"unix", "supplementary_gid:27"}},
	{in: "unix:user:envoy", want: Selector{"unix", "user:envoy"}},
	{in: "unix:group:proxy", want: Selector{"unix", "group:proxy"}},
	{in: "unix:path:/usr/bin/envoy", want: Selector{"unix", "path:/usr/bin/envoy"}},
	{in: "unix:path:/opt/a:b", want: Selector{"unix", "path:/opt/a:b"}}, // the value may hold colons
	{in: "unix:sha256:" + sha, want: Selector{"unix", "sha256:" + sha}},
	{in: "unix:cgroup:/system.slice/envoy.service", want: Selector{"unix", "cgroup:/system.slice/envoy.service"}},
	{in: "unix:namespace:host", want: Selector{"unix", "namespace:host"}},
	{in: "unix:namespace:container", want: Selector{"unix", "namespace:container"}},
	{in: "systemd:unit:envoy.service", want: Selector{"systemd", "unit:envoy.service"}},
	{in: "node:name:web-1", want: Selector{"node", "name:web-1"}},
	{in: "node:name:web-1.eu.example.com", want: Selector{"node", "name:web-1.eu.example.com"}},
	{in: "node:group:eu", want: Selector{"node", "group:eu"}},
	{in: "node:group:team/web", want: Selector{"node", "group:team/web"}},
	{in: "node:group:a:b", want: Selector{"node", "group:a:b"}},

	{in: "", wantErr: "not of the form"},
	{in: "unix", wantErr: "not of the form"},
	{in: ":uid:1000", wantErr: "not of the form"},
	{in: "unix:", wantErr: "not of the form"},
	{in: "unix:uid", wantErr: "has no kind"},
	{in: "k8s:ns:default", wantErr: "unknown selector"},
	{in: "unix:pid:12", wantErr: "unknown selector"},
	{in: "UNIX:uid:1000", wantErr: "unknown selector"},
	{in: "unix:uid:", wantErr: "empty value"},
	{in: "unix:uid:root", wantErr: "not a numeric id"},
	{in: "unix:uid:-1", wantErr: "not a numeric id"},
	{in: "unix:uid:+1", wantErr: "not a numeric id"},
	{in: "unix:uid:4294967296", wantErr: "not a numeric id"},
	{in: "unix:uid: 1000", wantErr: "not a numeric id"},
	{in: "unix:uid:01000", wantErr: "leading zeros"},
	{in: "unix:gid:1e3", wantErr: "not a numeric id"},
	{in: "unix:user:a b", wantErr: "not a valid user"},
	{in: "unix:user:a/b", wantErr: "not a valid user"},
	{in: "unix:group:a:b", wantErr: "not a valid user"},
	{in: "unix:path:usr/bin/envoy", wantErr: "must be absolute"},
	{in: "unix:path:./envoy", wantErr: "must be absolute"},
	{in: "unix:cgroup:system.slice", wantErr: "must be absolute"},
	{in: "unix:path:/usr/bin/env\x00oy", wantErr: "NUL or newline"},
	{in: "unix:path:/usr/bin/env\noy", wantErr: "NUL or newline"},
	{in: "unix:sha256:" + strings.ToUpper(sha), wantErr: "64 lowercase hex"},
	{in: "unix:sha256:" + sha[:63], wantErr: "64 lowercase hex"},
	{in: "unix:sha256:" + sha + "a", wantErr: "64 lowercase hex"},
	{in: "unix:sha256:" + strings.Repeat("g", 64), wantErr: "64 lowercase hex"},
	{in: "systemd:unit:envoy", wantErr: "unit name"},
	{in: "systemd:unit:a/b.service", wantErr: "unit name"},
	{in: "unix:namespace:pod", wantErr: "host or container"},
	{in: "node:web-1", wantErr: "node:name:NAME or node:group:GROUP"},
	{in: "node:host:web-1", wantErr: "node:name:NAME or node:group:GROUP"},
	{in: "node:uid:1000", wantErr: "node:name:NAME or node:group:GROUP"},
	{in: "node:name:", wantErr: "node name is empty"},
	{in: "node:group:", wantErr: "node group is empty"},
	{in: "node:name:web 1", wantErr: "whitespace or a control character"},
	{in: "node:group:e\tu", wantErr: "whitespace or a control character"},
	{in: "node:group:eu\x00", wantErr: "whitespace or a control character"},
	{in: "node:name:a/b", wantErr: "contains \"/\""},
	{in: "node:group:\xff", wantErr: "not valid UTF-8"},
	{in: "node:name:" + strings.Repeat("a", MaxNodeNameLen+1), wantErr: "longer than 253 bytes"},
	{in: "NODE:name:web-1", wantErr: "unknown selector"},
	{in: "unix:path:/" + strings.Repeat("a", MaxSelectorLen), wantErr: "longer than"},
}

func TestParseSelector(t *testing.T) {
	for _, tt := range parseSelectorTests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSelector(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseSelector(%q) = %v, want error containing %q", tt.in, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSelector(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				if got != (Selector{}) {
					t.Fatalf("ParseSelector(%q) returned %v with an error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSelector(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseSelector(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestValidateSelector(t *testing.T) {
	tests := []struct {
		name    string
		sel     Selector
		wantErr string
	}{
		{"ok", Selector{"unix", "uid:1000"}, ""},
		{"max length", Selector{"unix", "path:/" + strings.Repeat("a", MaxSelectorLen-len("unix:path:/"))}, ""},
		{"one over max length", Selector{"unix", "path:/" + strings.Repeat("a", MaxSelectorLen-len("unix:path:/")+1)}, "longer than"},
		{"empty type", Selector{"", "uid:1000"}, "unknown selector"},
		{"type with colon", Selector{"unix:uid", "x:1000"}, "unknown selector"},
		{"no kind", Selector{"unix", "1000"}, "has no kind"},
		{"empty value", Selector{"unix", "path:"}, "empty value"},
		{"empty", Selector{}, "has no kind"},
		{"unknown kind", Selector{"systemd", "uid:1"}, "unknown selector"},
		{"relative path", Selector{"unix", "path:bin/envoy"}, "must be absolute"},
		{"bad sha256", Selector{"unix", "sha256:xyz"}, "64 lowercase hex"},
		{"non-numeric gid", Selector{"unix", "supplementary_gid:wheel"}, "not a numeric id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateSelector(tt.sel)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateSelector(%#v): %v", tt.sel, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("ValidateSelector(%#v) = %v, want ErrInvalid containing %q", tt.sel, err, tt.wantErr)
			}
		})
	}
}

func TestParseSelectors(t *testing.T) {
	got, err := ParseSelectors([]string{"unix:uid:1000", "systemd:unit:envoy.service", "unix:path:/usr/bin/envoy", "unix:uid:1000"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Selector{{"systemd", "unit:envoy.service"}, {"unix", "path:/usr/bin/envoy"}, {"unix", "uid:1000"}}
	if len(got) != len(want) {
		t.Fatalf("ParseSelectors = %v, want %v (sorted, deduplicated)", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ParseSelectors = %v, want %v (sorted, deduplicated)", got, want)
		}
	}
	if _, err := ParseSelectors([]string{"unix:uid:1000", "unix:uid:x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ParseSelectors with a bad selector: err = %v, want ErrInvalid", err)
	}
}

func TestNormalizeAndSelectorKey(t *testing.T) {
	in := []Selector{{"unix", "uid:2"}, {"unix", "gid:1"}, {"unix", "uid:2"}, {"systemd", "unit:a.service"}}
	orig := append([]Selector(nil), in...)
	got := Normalize(in)
	if key, want := SelectorKey(got), "systemd:unit:a.service\nunix:gid:1\nunix:uid:2"; key != want {
		t.Fatalf("SelectorKey(Normalize) = %q, want %q", key, want)
	}
	for i := range orig {
		if in[i] != orig[i] {
			t.Fatalf("Normalize modified its input: %v, was %v", in, orig)
		}
	}
	if SelectorKey(nil) != "" {
		t.Fatalf("SelectorKey(nil) = %q, want empty", SelectorKey(nil))
	}
}
