package conf

import (
	"errors"
	"io"
	"testing"
)

// FuzzLoad: Load never panics; it either returns a config that passes Validate, or a
// *DiagError with at least one error that renders.
func FuzzLoad(f *testing.F) {
	for _, tc := range badConfigs {
		f.Add([]byte(tc.src))
	}
	f.Add(DefaultFile)
	f.Add([]byte("entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = [\"unix:uid:1\"]\n  dns_names = [\"a.local\"]\n  x509_svid_ttl = \"10m\"\n}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Load("fuzz.hcl", src, Overrides{})
		if err == nil {
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Load accepted a config that does not validate: %v\n%s", err, src)
			}
			return
		}
		var de *DiagError
		if !errors.As(err, &de) {
			t.Fatalf("err = %v (%T), want *DiagError", err, err)
		}
		if !de.Diags.HasErrors() || de.Error() == "" {
			t.Fatalf("DiagError without errors: %#v", de.Diags)
		}
		if err := de.Write(io.Discard, false); err != nil {
			t.Fatal(err)
		}
	})
}
