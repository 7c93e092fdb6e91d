package admin_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// startServer runs the admin API over a real SQLite store on a Unix socket and returns a
// client and the store (to check what was, or was not, written).
func startServer(t *testing.T, ready func(context.Context) error) (*admin.Client, store.Store, string) {
	t.Helper()
	return startServerWith(t, ready, nil)
}

// startServerWith is startServer with mod applied to the server's Config (given the store).
func startServerWith(t *testing.T, ready func(context.Context) error, mod func(*admin.Config, store.Store)) (*admin.Client, store.Store, string) {
	t.Helper()
	dir := proctest.ShortDir(t)
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := admin.Config{
		TrustDomain: td,
		Store:       st,
		Bundle:      func() *workload.Bundle { return &workload.Bundle{TrustDomain: td, PEM: []byte("PEM"), Sequence: 7} },
		CATTL:       24 * time.Hour,
		Ready:       ready,
	}
	if mod != nil {
		mod(&cfg, st)
	}
	srv, err := admin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return admin.NewClient(sock), st, sock
}

func countEntries(t *testing.T, st store.Store) int {
	t.Helper()
	es, err := st.ListEntries(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func TestEntryLifecycle(t *testing.T) {
	c, _, _ := startServer(t, nil)
	ctx := context.Background()
	e, err := c.CreateEntry(ctx, admin.Entry{
		SPIFFEID:    "spiffe://example.org/web",
		Selectors:   []string{"unix:uid:1000", "unix:gid:1000"},
		X509SVIDTTL: 600,
		DNSNames:    []string{"web.local"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.ID == "" || e.Revision != 1 || e.X509SVIDTTL != 600 || strings.Join(e.Selectors, ",") != "unix:gid:1000,unix:uid:1000" {
		t.Fatalf("created entry = %+v (want ID, revision 1, TTL 600, normalized selectors)", e)
	}
	got, err := c.GetEntry(ctx, e.ID)
	if err != nil || got.SPIFFEID != e.SPIFFEID {
		t.Fatalf("get: %+v, %v", got, err)
	}
	e.DNSNames = []string{"web2.local"}
	up, err := c.UpdateEntry(ctx, e)
	if err != nil || up.Revision != 2 || up.DNSNames[0] != "web2.local" {
		t.Fatalf("update: %+v, %v", up, err)
	}
	list, err := c.ListEntries(ctx, "", []string{"unix:uid:1000"})
	if err != nil || len(list) != 1 {
		t.Fatalf("list by selector: %v, %v", list, err)
	}
	if list, _ := c.ListEntries(ctx, "spiffe://example.org/other", nil); len(list) != 0 {
		t.Fatalf("list by other SPIFFE ID returned %v", list)
	}
	if _, err := c.DeleteEntry(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetEntry(ctx, e.ID); !admin.IsNotFound(err) {
		t.Fatalf("get after delete: %v, want not found", err)
	}
}

// TestBadInputChangesNothing: every kind of bad request gets a message that names the problem
// and a 4xx code, and the store is untouched.
func TestBadInputChangesNothing(t *testing.T) {
	c, st, _ := startServer(t, nil)
	ctx := context.Background()
	existing, err := c.CreateEntry(ctx, admin.Entry{SPIFFEID: "spiffe://example.org/web", Selectors: []string{"unix:uid:1000"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		e        admin.Entry
		code     int
		contains string
	}{
		{"wrong scheme", admin.Entry{SPIFFEID: "https://example.org/web", Selectors: []string{"unix:uid:1"}}, 400, "scheme"},
		{"other trust domain", admin.Entry{SPIFFEID: "spiffe://evil.org/web", Selectors: []string{"unix:uid:1"}}, 400, "not in trust domain"},
		{"no path", admin.Entry{SPIFFEID: "spiffe://example.org", Selectors: []string{"unix:uid:1"}}, 400, "no path"},
		{"bad path", admin.Entry{SPIFFEID: "spiffe://example.org/a//b", Selectors: []string{"unix:uid:1"}}, 400, "spiffe ID"},
		{"no selectors", admin.Entry{SPIFFEID: "spiffe://example.org/x"}, 400, "selector"},
		{"malformed selector", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"uid1000"}}, 400, "type:value"},
		{"unknown selector", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:pid:1"}}, 400, "unknown selector"},
		{"non-numeric uid", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:root"}}, 400, "numeric"},
		{"TTL over CA limit", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, X509SVIDTTL: 5 * 3600}, 400, "longer than a sixth of ca_ttl 24h"},
		{"negative TTL", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, X509SVIDTTL: -1}, 400, "TTL"},
		{"TTL too short to rotate", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, X509SVIDTTL: 4}, 400, "4s is shorter than the minimum 5s"},
		{"a name: config-owned", admin.Entry{Name: "n", SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}}, 400, `"name" is set only by entry blocks`},
		{"bad DNS", admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, DNSNames: []string{"a b"}}, 400, "DNS"},
		{"duplicate", admin.Entry{SPIFFEID: "spiffe://example.org/web", Selectors: []string{"unix:uid:1000"}}, 409, "already exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateEntry(ctx, tc.e)
			var se *admin.StatusError
			if !errors.As(err, &se) || se.Code != tc.code || !strings.Contains(se.Message, tc.contains) {
				t.Fatalf("create: %v, want %d containing %q", err, tc.code, tc.contains)
			}
			if n := countEntries(t, st); n != 1 {
				t.Fatalf("store has %d entries after a refused create, want 1", n)
			}
		})
	}
	// A bad update leaves the stored entry as it was.
	bad := existing
	bad.Selectors = []string{"unix:path:relative"}
	if _, err := c.UpdateEntry(ctx, bad); err == nil {
		t.Fatal("update with a relative path selector succeeded")
	}
	if got, _ := c.GetEntry(ctx, existing.ID); got.Revision != existing.Revision || got.Selectors[0] != "unix:uid:1000" {
		t.Fatalf("refused update changed the entry: %+v", got)
	}
	for _, id := range []string{"nope", "../etc"} {
		if _, err := c.UpdateEntry(ctx, admin.Entry{ID: id, SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}}); !admin.IsNotFound(err) {
			t.Errorf("update unknown ID %q: %v, want not found", id, err)
		}
		if _, err := c.DeleteEntry(ctx, id); !admin.IsNotFound(err) {
			t.Errorf("delete unknown ID %q: %v, want not found", id, err)
		}
	}
}

func TestMalformedBodies(t *testing.T) {
	_, st, sock := startServer(t, nil)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, tc := range []struct{ name, body, contains string }{
		{"not JSON", "spiffe_id=x", "invalid request body"},
		{"unknown field", `{"spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"],"admin":true}`, "unknown field"},
		{"trailing data", `{"spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"]} {}`, "trailing"},
		{"wrong type", `{"spiffe_id":1,"selectors":["unix:uid:1"]}`, "invalid request body"},
		{"too large", `{"spiffe_id":"spiffe://example.org/x","selectors":["` + strings.Repeat("a", admin.MaxBodyBytes) + `"]}`, "invalid request body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := hc.Post("http://svidd/v1/entries", "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 || !strings.Contains(string(body), tc.contains) {
				t.Fatalf("%d %s, want 400 containing %q", resp.StatusCode, body, tc.contains)
			}
		})
	}
	if n := countEntries(t, st); n != 0 {
		t.Fatalf("malformed bodies stored %d entries", n)
	}
}

func TestBundleAndHealth(t *testing.T) {
	var notReady error = errors.New("CA not loaded")
	c, _, _ := startServer(t, func(context.Context) error { return notReady })
	ctx := context.Background()
	b, err := c.Bundle(ctx)
	if err != nil || b.PEM != "PEM" || b.Sequence != 7 || b.TrustDomain != "example.org" {
		t.Fatalf("bundle: %+v, %v", b, err)
	}
	h, err := c.Health(ctx)
	if err != nil || h.Ready || !strings.Contains(h.Reason, "CA not loaded") {
		t.Fatalf("health while not ready: %+v, %v", h, err)
	}
	notReady = nil
	if h, err := c.Health(ctx); err != nil || !h.Ready {
		t.Fatalf("health when ready: %+v, %v", h, err)
	}
}

func TestClientExplainsMissingAgent(t *testing.T) {
	c := admin.NewClient("/tmp/definitely-not-a-svidd.sock")
	_, err := c.Health(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is it running?") {
		t.Fatalf("error = %v, want a hint that svidd is not running", err)
	}
}
