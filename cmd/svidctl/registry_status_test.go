package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

// TestStatusRegistryGolden: a host of a fleet shows its registry's state, and since when.
func TestStatusRegistryGolden(t *testing.T) {
	for _, tc := range []struct {
		golden    string
		reachable bool
	}{
		{"status-registry-down.golden", false},
		{"status-registry-up.golden", true},
	} {
		st := statusFixture()
		st.Identities = nil
		st.Registry = &admin.Registry{Kind: "etcd", Reachable: tc.reachable, Since: st.Now.Add(-7 * time.Minute)}
		var buf bytes.Buffer
		if err := renderStatus(&buf, st); err != nil {
			t.Fatal(err)
		}
		golden(t, tc.golden, buf.Bytes())
	}
}
