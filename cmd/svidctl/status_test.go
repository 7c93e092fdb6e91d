package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// statusFixture covers every state the status view distinguishes: a CA mid-life, a prepared
// one, a healthy identity, one overdue for rotation, and an expired one.
func statusFixture() admin.Status {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	return admin.Status{
		TrustDomain: "example.org",
		Now:         now,
		StartedAt:   now.Add(-3*time.Hour - 12*time.Minute),
		Entries:     3,
		Streams:     7,
		Authorities: []admin.Authority{
			{State: "active", NotBefore: now.Add(-16 * time.Hour), NotAfter: now.Add(8 * time.Hour), SKI: "edcd2a9d3e6ab7845e34544662b87a6e2bcaa159", KeyType: "ec-p256"},
			{State: "prepared", NotBefore: now.Add(-4 * time.Hour), NotAfter: now.Add(20 * time.Hour), SKI: "074326e208070c7b2ea2e097431892056c97dbf5", KeyType: "ec-p256"},
		},
		Identities: []admin.Identity{
			{SPIFFEID: "spiffe://example.org/backend", EntryID: "b", Serial: "01", Streams: 4, NotBefore: now.Add(-10 * time.Minute), NotAfter: now.Add(50 * time.Minute), RotateAt: now.Add(20 * time.Minute)},
			{SPIFFEID: "spiffe://example.org/frontend", EntryID: "f", Serial: "02", Streams: 3, NotBefore: now.Add(-40 * time.Minute), NotAfter: now.Add(20 * time.Minute), RotateAt: now.Add(-10 * time.Minute)},
			{SPIFFEID: "spiffe://example.org/stale", EntryID: "s", Serial: "03", Streams: 0, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour), RotateAt: now.Add(-90 * time.Minute)},
		},
	}
}

func TestStatusGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := renderStatus(&buf, statusFixture()); err != nil {
		t.Fatal(err)
	}
	golden(t, "status.golden", buf.Bytes())

	st := statusFixture()
	st.Identities = nil
	buf.Reset()
	if err := renderStatus(&buf, st); err != nil {
		t.Fatal(err)
	}
	golden(t, "status-empty.golden", buf.Bytes())

	st = statusFixture()
	st.Upstream = &admin.Upstream{Name: "step_ca", LastSuccess: st.Now.Add(-9 * time.Hour), Failures: 14,
		LastError: "upstream step_ca: Post \"https://ca.example.org:9000/1.0/sign\": dial tcp 10.0.0.5:9000: connect: connection refused", LastFailure: st.Now.Add(-40 * time.Second)}
	buf.Reset()
	if err := renderStatus(&buf, st); err != nil {
		t.Fatal(err)
	}
	golden(t, "status-upstream-down.golden", buf.Bytes())
}

func TestLifetimeBar(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(100 * time.Minute)
	for _, tc := range []struct {
		at   time.Duration
		want string
	}{
		{0, "[████████████████████] 100% 1h40m"},
		{50 * time.Minute, "[██████████░░░░░░░░░░]  50% 50m0s"},
		{95 * time.Minute, "[█░░░░░░░░░░░░░░░░░░░]   5% 5m0s"},
		{100 * time.Minute, "[░░░░░░░░░░░░░░░░░░░░] EXPIRED"},
	} {
		if got := lifetime(nb, na, nb.Add(tc.at)); got != tc.want {
			t.Errorf("at %v: %q, want %q", tc.at, got, tc.want)
		}
	}
}
