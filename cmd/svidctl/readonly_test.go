package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

// readOnlyStore is a host whose etcd credentials may only read the registry: the SQLite
// store for reads, every entry write refused as etcdstore refuses it.
type readOnlyStore struct{ *store.SQLite }

func (readOnlyStore) CreateEntry(_ context.Context, e entry.Entry) (entry.Entry, error) {
	return entry.Entry{}, fmt.Errorf("creating entry for %s: %w (etcd: etcdserver: permission denied)", e.SPIFFEID, store.ErrReadOnly)
}

// TestEntryCreateOnReadOnlyHost: svidctl prints the registry's refusal as it is, so the
// operator reads that this host may not write and where to register instead.
func TestEntryCreateOnReadOnlyHost(t *testing.T) {
	sock, _ := startAdminForCLIWith(t, func(st *store.SQLite) store.Store { return readOnlyStore{st} })
	_, stderr, code := cli(t, "-socketPath", sock, "entry", "create", "-spiffeID", "spiffe://example.org/web", "-selector", "unix:uid:1000")
	if code != 1 || !strings.Contains(stderr, "this host's etcd user may not write the registry") ||
		!strings.Contains(stderr, "register on a registrar host") {
		t.Fatalf("exit %d, stderr %q; want 1 and the read-only error", code, stderr)
	}
	if n := strings.Count(stderr, "\n"); n > 1 {
		t.Errorf("stderr has %d lines, want the one message: %q", n, stderr)
	}
}
