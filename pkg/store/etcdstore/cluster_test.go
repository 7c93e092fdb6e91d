package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// TestMemberKilledUnderWrites: while writers stream creates, updates and deletes, the
// cluster's leader is SIGKILLed and later restarted. Every write is acknowledged without an
// error (the store retries on the surviving members), exactly once (a create is stored once,
// an update bumps the revision once), none is lost; another instance keeps reading and its
// watcher sees each acknowledged change exactly once.
func TestMemberKilledUnderWrites(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3})
	retries := &countHandler{}
	w := openWith(t, etcdstore.Config{Endpoints: c.Endpoints(), Logger: slog.New(retries)})
	defer w.Close()
	r := open(t, c.Endpoints(), nil, "/svidd/")
	defer r.Close()

	type seenKey struct {
		op  store.Op
		id  string
		rev int64
	}
	var mu sync.Mutex
	seen := map[seenKey]int{}
	cancel := r.Watch(func(ch store.Change) {
		mu.Lock()
		seen[seenKey{ch.Op, ch.Entry.ID, ch.Entry.Revision}]++
		mu.Unlock()
	})
	defer cancel()

	var (
		stop     = make(chan struct{})
		errs     = make(chan error, 100)
		ackMu    sync.Mutex
		acked    = map[seenKey]int{}
		kept     = map[string]bool{} // created and not deleted
		ops      atomic.Int64
		wg       sync.WaitGroup
		readsOK  atomic.Int64
		writeCtx = func() (context.Context, context.CancelFunc) {
			// The caller's own deadline, far above an election: within it the store retries.
			return context.WithTimeout(context.Background(), 30*time.Second)
		}
	)
	var latencies []time.Duration // of every write, under ackMu
	ack := func(k seenKey, took time.Duration) {
		ackMu.Lock()
		latencies = append(latencies, took)
		acked[k]++
		switch k.op {
		case store.OpCreate:
			kept[k.id] = true
		case store.OpDelete:
			delete(kept, k.id)
		}
		ackMu.Unlock()
		ops.Add(1)
	}
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := writeCtx()
				start := time.Now()
				e, err := w.CreateEntry(ctx, entry.Entry{SPIFFEID: spiffeID(fmt.Sprintf("/kill/%d/%d", g, i)),
					Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}})
				if err != nil {
					cancel()
					errs <- fmt.Errorf("create %d/%d: %w", g, i, err)
					return
				}
				ack(seenKey{store.OpCreate, e.ID, e.Revision}, time.Since(start))
				start = time.Now()
				// The update moves the entry to another SPIFFE ID: its unique key moves too.
				e.SPIFFEID = spiffeID(fmt.Sprintf("/kill/%d/%d/moved", g, i))
				if e, err = w.UpdateEntry(ctx, e); err != nil {
					cancel()
					errs <- fmt.Errorf("update %d/%d: %w", g, i, err)
					return
				}
				ack(seenKey{store.OpUpdate, e.ID, e.Revision}, time.Since(start))
				start = time.Now()
				if i%2 == 0 {
					if _, err := w.DeleteEntry(ctx, e.ID); err != nil {
						cancel()
						errs <- fmt.Errorf("delete %d/%d: %w", g, i, err)
						return
					}
					ack(seenKey{store.OpDelete, e.ID, e.Revision}, time.Since(start))
				}
				cancel()
			}
		})
	}
	wg.Go(func() { // reads on the other instance go on through the kill
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := r.ListEntries(ctx, store.Filter{})
			cancel()
			if err != nil {
				errs <- fmt.Errorf("listing during the kill: %w", err)
				return
			}
			readsOK.Add(1)
		}
	})
	waitOps := func(n int64) {
		deadline := time.Now().Add(60 * time.Second)
		for ops.Load() < n && time.Now().Before(deadline) && len(errs) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitOps(40)
	killedAt := ops.Load()
	// Twice: each kill catches whatever writes are in flight at that instant.
	for range 2 {
		leader := c.Leader()
		c.Kill(leader)
		t.Logf("killed the leader, member %d, after %d writes", leader, ops.Load())
		waitOps(ops.Load() + 60)
		c.Restart(leader)
		t.Logf("restarted member %d after %d writes", leader, ops.Load())
		waitOps(ops.Load() + 60)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	slices.Sort(latencies)
	t.Logf("%d writes acknowledged, %d of them after the first kill; %d tries made again; %d reads; write latency median %v, p99 %v, max %v",
		ops.Load(), ops.Load()-killedAt, retries.n.Load(), readsOK.Load(),
		latencies[len(latencies)/2], latencies[len(latencies)*99/100], latencies[len(latencies)-1])

	// Exactly once in the watch, nothing else.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		got := maps.Clone(seen)
		mu.Unlock()
		if maps.Equal(got, acked) {
			break
		}
		if time.Now().After(deadline) {
			for k, n := range acked {
				if got[k] != n {
					t.Errorf("watch: %v %s revision %d seen %d times, acknowledged %d", k.op, k.id, k.rev, got[k], n)
				}
			}
			for k, n := range got {
				if acked[k] == 0 {
					t.Errorf("watch: %v %s revision %d seen %d times, never acknowledged", k.op, k.id, k.rev, n)
				}
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	// What is stored is what was acknowledged: every kept entry once, at revision 2.
	fresh := open(t, c.Endpoints(), nil, "/svidd/")
	defer fresh.Close()
	list, err := fresh.ListEntries(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(kept) {
		t.Errorf("stored %d entries, want %d", len(list), len(kept))
	}
	for _, e := range list {
		if !kept[e.ID] || e.Revision != 2 {
			t.Errorf("stored %s revision %d: not as acknowledged", e.ID, e.Revision)
		}
	}
}

// countHandler counts the store's "trying again" debug records.
type countHandler struct{ n atomic.Int64 }

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "trying again") {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

func spiffeID(path string) spiffeid.ID {
	return spiffeid.RequireFromString("spiffe://example.org" + path)
}

// TestLostAnswers: half of the store's calls go through a proxy that delivers requests but
// drops etcd's answers, so those writes commit and their caller never hears it; the store
// tries again on the direct connection. Each update still bumps the revision exactly once,
// each create stores one entry, and a delete whose first try committed succeeds.
func TestLostAnswers(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	u, err := url.Parse(c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	p := etcdtest.NewProxy(t, u.Host)
	retries := &countHandler{}
	// The store's watch starts on the direct connection (the only one at Open); then the
	// client takes the direct one and the proxy in turn for every call.
	cli, err := etcdstore.NewClient(etcdstore.Config{Endpoints: c.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s := openWith(t, etcdstore.Config{Client: cli, Logger: slog.New(retries), AttemptTimeout: 200 * time.Millisecond})
	defer s.Close()
	cli.SetEndpoints(c.Endpoints()[0], "http://"+p.Addr())
	check := open(t, c.Endpoints(), nil, "/svidd/")
	defer check.Close()
	ctx := context.Background()
	// Both connections up before answers are dropped (the client's keepalive would close
	// the muted one after 13 s without a byte: the test takes a few seconds).
	for range 4 {
		if _, err := s.GetEntry(ctx, "warm-up"); !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
	}
	p.DropReplies()
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 5*time.Second) }

	const n = 4
	var ids []string
	for i := range n {
		cctx, cancel := call()
		e, err := s.CreateEntry(cctx, entry.Entry{SPIFFEID: spiffeID(fmt.Sprintf("/lost/%d", i)), Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}})
		cancel()
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		ids = append(ids, e.ID)
	}
	for round := range 2 {
		for i, id := range ids {
			cctx, cancel := call()
			got, err := check.GetEntry(cctx, id)
			if err == nil && i%2 == 1 {
				// One more call through s: the client takes the two connections in turn, so
				// this shifts which of the update's calls goes through the proxy.
				_, err = s.GetEntry(cctx, id)
			}
			if err == nil {
				got.DNSNames = []string{fmt.Sprintf("r%d.example.org", round)}
				got, err = s.UpdateEntry(cctx, got)
			}
			cancel()
			if err != nil {
				t.Fatalf("update %d, round %d: %v", i, round, err)
			}
			if got.Revision != int64(round+2) {
				t.Fatalf("update %d, round %d: revision %d, want %d (one bump per update)", i, round, got.Revision, round+2)
			}
		}
	}
	for i, id := range ids {
		cctx, cancel := call()
		if i%2 == 1 {
			_, _ = s.GetEntry(cctx, id) // shifts which call goes through the proxy, as above
		}
		_, err := s.DeleteEntry(cctx, id)
		cancel()
		if err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if list, err := check.ListEntries(ctx, store.Filter{}); err != nil || len(list) != 0 {
		t.Fatalf("after deleting every entry: %d left, %v", len(list), err)
	}
	t.Logf("%d tries made again after lost answers", retries.n.Load())
	if retries.n.Load() == 0 {
		t.Fatal("no call went through the muted proxy: the test proved nothing")
	}
}
