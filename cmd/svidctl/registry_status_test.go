package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

// TestStatusRegistryGolden: a host of a fleet shows its registry's state, and since when.
func TestStatusRegistryGolden(t *testing.T) {
	for _, tc := range []struct {
		golden    string
		reachable bool
		conflict  string
	}{
		{"status-registry-down.golden", false, ""},
		{"status-registry-up.golden", true, ""},
		{"status-node-conflict.golden", true, "/svidd/hosts/web-1/alive is held under lease 694d7e1b2c3a4f10, not this host's (since 2026-11-23T11:55:00Z)"},
	} {
		st := statusFixture()
		st.Identities = nil
		st.Registry = &admin.Registry{Kind: "etcd", Reachable: tc.reachable, Since: st.Now.Add(-7 * time.Minute), NodeNameConflict: tc.conflict}
		var buf bytes.Buffer
		if err := renderStatus(&buf, st); err != nil {
			t.Fatal(err)
		}
		golden(t, tc.golden, buf.Bytes())
	}
}

// TestStatusRegistrarGolden: a registrar-only host says what it is instead of an empty CA
// table and "No identities held".
func TestStatusRegistrarGolden(t *testing.T) {
	st := statusFixture()
	st.Authorities, st.Identities, st.Upstream, st.Streams = nil, nil, nil, 0
	st.Registry = &admin.Registry{Kind: "etcd", Reachable: true, Since: st.Now.Add(-7 * time.Minute)}
	st.RegistrarOnly = true
	var buf bytes.Buffer
	if err := renderStatus(&buf, st); err != nil {
		t.Fatal(err)
	}
	golden(t, "status-registrar.golden", buf.Bytes())
	if strings.Contains(buf.String(), "SKI") || strings.Contains(buf.String(), "streams") || strings.Contains(buf.String(), "No identities held") {
		t.Errorf("registrar status shows a CA table or identities:\n%s", buf.String())
	}
}
