package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
)

// TestTLSFromFiles opens the store as svidd will from its config: the CA and client
// certificate read from files. A client certificate from another CA is refused.
func TestTLSFromFiles(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{TLS: true})
	cert, key, err := c.CA.ClientFiles("host-1")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := etcdstore.TLSFromFiles(c.CA.CertFile, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, c.Endpoints(), tc, "/svidd/")
	defer s.Close()
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}

	other := etcdtest.NewCA(t, t.TempDir())
	oc, ok, err := other.ClientFiles("intruder")
	if err != nil {
		t.Fatal(err)
	}
	tc, err = etcdstore.TLSFromFiles(c.CA.CertFile, oc, ok)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if s, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: c.Endpoints(), TLS: tc}); err == nil {
		s.Close()
		t.Fatal("Open with a client certificate from another CA succeeded")
	}

	bad := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bad, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := etcdstore.TLSFromFiles(bad, "", ""); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("TLSFromFiles(bad CA) = %v", err)
	}
	if _, err := etcdstore.TLSFromFiles("", cert, ""); err == nil {
		t.Fatal("TLSFromFiles with a certificate and no key succeeded")
	}
}

// TestMemberKilledUnderWrites: with one of three members killed and restarted while another
// instance writes, a watcher sees every acknowledged create exactly once, in the order the
// writer made them.
func TestMemberKilledUnderWrites(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3})
	w := open(t, c.Endpoints(), nil, "/svidd/")
	defer w.Close()
	// The watcher connects to the member that will be killed first, so its watch has to
	// move to another member.
	a := open(t, c.Endpoints(), nil, "/svidd/")
	defer a.Close()

	var mu sync.Mutex
	var seen []string
	cancel := a.Watch(func(ch store.Change) {
		if ch.Op == store.OpCreate {
			mu.Lock()
			seen = append(seen, ch.Entry.ID)
			mu.Unlock()
		}
	})
	defer cancel()

	const n = 60
	var acked []string
	for i := range n {
		if i == n/3 {
			c.Kill(0)
		}
		if i == 2*n/3 {
			c.Restart(0)
		}
		e := entry.Entry{SPIFFEID: spiffeID(fmt.Sprintf("/kill/%d", i)), Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}}
		// A write in flight during the election may fail: the caller retries, as svidctl's
		// user would; the uniqueness rule makes a retry of an applied write fail cleanly.
		for attempt := 0; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			got, err := w.CreateEntry(ctx, e)
			cancel()
			if errors.Is(err, store.ErrAlreadyExists) {
				// The attempt before was applied though its answer was lost.
				list, lerr := w.ListEntries(context.Background(), store.Filter{SPIFFEID: e.SPIFFEID})
				if lerr != nil || len(list) != 1 {
					t.Fatalf("create %d: %v; then listing: %v, %d entries", i, err, lerr, len(list))
				}
				got, err = list[0], nil
			}
			if err == nil {
				acked = append(acked, got.ID)
				break
			}
			if attempt == 10 {
				t.Fatalf("create %d: %v", i, err)
			}
			t.Logf("create %d, attempt %d: %v", i, attempt, err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(seen)
		mu.Unlock()
		if len(got) >= len(acked) || time.Now().After(deadline) {
			// A write that timed out but was applied shows up too: every acked ID must be
			// there, in order, each once.
			var inOrder []string
			for _, id := range got {
				if slices.Contains(acked, id) {
					inOrder = append(inOrder, id)
				}
			}
			if !slices.Equal(inOrder, acked) {
				t.Fatalf("watcher saw %d of %d acknowledged creates (or out of order)", len(inOrder), len(acked))
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func spiffeID(path string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://example.org" + path)
}
