package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// startAdminForCLI serves the admin API over a real SQLite store on a Unix socket.
func startAdminForCLI(t *testing.T) (sock string, st store.Store) {
	t.Helper()
	return startAdminForCLIWith(t, func(st *store.SQLite) store.Store { return st })
}

// startAdminForCLIWith is startAdminForCLI serving the store wrap makes of the SQLite one.
func startAdminForCLIWith(t *testing.T, wrap func(*store.SQLite) store.Store) (sock string, st store.Store) {
	t.Helper()
	dir := proctest.ShortDir(t)
	sq, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sq.Close() })
	st = wrap(sq)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	srv, err := admin.New(admin.Config{
		TrustDomain: td,
		Store:       st,
		Bundle: func() *workload.Bundle {
			return &workload.Bundle{TrustDomain: td, PEM: []byte("-----BEGIN CERTIFICATE-----\n")}
		},
		CATTL: 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock, st
}

// cli runs svidctl in-process and returns stdout, stderr and the exit code main would use.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), args, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	code := 0
	if err != nil {
		code = exitCode(err)
		if !errors.Is(err, errSilent) {
			errb.WriteString(err.Error())
		}
	}
	return out.String(), errb.String(), code
}

func TestEntryCommands(t *testing.T) {
	sock, _ := startAdminForCLI(t)

	// -socketPath before the subcommand…
	out, stderr, code := cli(t, "-socketPath", sock, "entry", "create", "-spiffeID", "spiffe://example.org/web",
		"-selector", "unix:uid:1000", "-selector", "unix:path:/usr/bin/envoy", "-dns", "web.local", "-x509SVIDTTL", "600", "-output", "json")
	if code != 0 {
		t.Fatalf("create: exit %d: %s", code, stderr)
	}
	var e admin.Entry
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("create -output json is not JSON: %v\n%s", err, out)
	}
	if e.ID == "" || e.X509SVIDTTL != 600 || len(e.Selectors) != 2 || e.DNSNames[0] != "web.local" {
		t.Fatalf("created %+v", e)
	}

	// …and after it, as SPIRE users type it.
	out, stderr, code = cli(t, "entry", "show", "-socketPath", sock, "-entryID", e.ID)
	if code != 0 {
		t.Fatalf("show: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"Entry ID", e.ID, "SPIFFE ID", "spiffe://example.org/web", "Selector", "unix:path:/usr/bin/envoy", "X509-SVID TTL", "600", "DNS name", "web.local", "Revision"} {
		if !strings.Contains(out, want) {
			t.Errorf("show output lacks %q:\n%s", want, out)
		}
	}

	// update changes only what is given.
	if _, stderr, code := cli(t, "entry", "update", "-socketPath", sock, "-entryID", e.ID, "-dns", "web2.local"); code != 0 {
		t.Fatalf("update: exit %d: %s", code, stderr)
	}
	out, _, _ = cli(t, "entry", "show", "-socketPath", sock, "-entryID", e.ID, "-output", "json")
	var shown spireListJSON
	if err := json.Unmarshal([]byte(out), &shown); err != nil || len(shown.Entries) != 1 {
		t.Fatalf("show -output json: %v\n%s", err, out)
	}
	if up := shown.Entries[0]; up.DNSNames[0] != "web2.local" || len(up.Selectors) != 2 || up.X509SVIDTTL != 600 || up.RevisionNumber != "2" {
		t.Fatalf("after update -dns: %+v (selectors and TTL must be kept)", up)
	}

	out, _, code = cli(t, "entry", "list", "-socketPath", sock, "-selector", "unix:uid:1000")
	if code != 0 || !strings.Contains(out, "Found 1 entry") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	out, _, _ = cli(t, "entry", "list", "-socketPath", sock, "-spiffeID", "spiffe://example.org/none", "-output", "json")
	if strings.Join(strings.Fields(out), " ") != `{ "entries": [], "next_page_token": "" }` {
		t.Fatalf("empty list as JSON = %q, want SPIRE's {\"entries\": [], \"next_page_token\": \"\"}", out)
	}

	out, _, code = cli(t, "entry", "delete", "-socketPath", sock, "-entryID", e.ID)
	if code != 0 || !strings.Contains(out, e.ID) {
		t.Fatalf("delete: exit %d %s", code, out)
	}
	if _, stderr, code := cli(t, "entry", "show", "-socketPath", sock, "-entryID", e.ID); code != 1 || !strings.Contains(stderr, "not found") {
		t.Fatalf("show deleted: exit %d %q", code, stderr)
	}
}

func TestEntryCommandErrors(t *testing.T) {
	sock, st := startAdminForCLI(t)
	if _, stderr, code := cli(t, "-socketPath", sock, "entry", "create", "-spiffeID", "spiffe://example.org/dup", "-selector", "unix:uid:1"); code != 0 {
		t.Fatal(stderr)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"no command", nil, 2, "no command"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"unknown subcommand", []string{"entry", "frob"}, 2, "unknown command"},
		{"missing spiffeID", []string{"entry", "create", "-selector", "unix:uid:1"}, 2, "-spiffeID is required"},
		{"missing selector", []string{"entry", "create", "-spiffeID", "spiffe://example.org/x"}, 2, "-selector is required"},
		{"unknown flag", []string{"entry", "create", "-spiffeId", "spiffe://example.org/x"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"entry", "list", "extra"}, 2, "unexpected arguments"},
		{"bad output", []string{"entry", "list", "-output", "yaml"}, 2, "want pretty or json"},
		{"negative TTL", []string{"entry", "create", "-spiffeID", "spiffe://example.org/x", "-selector", "unix:uid:1", "-x509SVIDTTL", "-5"}, 2, "negative"},
		{"wrong scheme", []string{"entry", "create", "-spiffeID", "http://example.org/x", "-selector", "unix:uid:1"}, 1, "scheme"},
		{"other trust domain", []string{"entry", "create", "-spiffeID", "spiffe://other.org/x", "-selector", "unix:uid:1"}, 1, "not in trust domain"},
		{"bad selector", []string{"entry", "create", "-spiffeID", "spiffe://example.org/x", "-selector", "unix:uid"}, 1, "selector"},
		{"duplicate", []string{"entry", "create", "-spiffeID", "spiffe://example.org/dup", "-selector", "unix:uid:1"}, 1, "already exists"},
		{"unknown entry update", []string{"entry", "update", "-entryID", "nope", "-dns", "x.local"}, 1, "not found"},
		{"update nothing", []string{"entry", "update", "-entryID", "nope"}, 2, "nothing to change"},
		{"unknown entry delete", []string{"entry", "delete", "-entryID", "nope"}, 1, "not found"},
		{"delete without ID", []string{"entry", "delete"}, 2, "-entryID is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if len(args) > 1 {
				args = append([]string{"-socketPath", sock}, args...)
			}
			_, stderr, code := cli(t, args...)
			if code != tc.code || !strings.Contains(stderr, tc.contains) {
				t.Fatalf("exit %d, stderr %q; want exit %d containing %q", code, stderr, tc.code, tc.contains)
			}
		})
	}
	es, err := st.ListEntries(context.Background(), store.Filter{})
	if err != nil || len(es) != 1 {
		t.Fatalf("store has %d entries after the failed commands (err %v), want 1", len(es), err)
	}
}

func TestHealthcheckAndBundle(t *testing.T) {
	sock, _ := startAdminForCLI(t)
	if out, stderr, code := cli(t, "healthcheck", "-socketPath", sock); code != 0 || !strings.Contains(out, "healthy") {
		t.Fatalf("healthcheck: exit %d %q %q", code, out, stderr)
	}
	if _, stderr, code := cli(t, "healthcheck", "-socketPath", "/tmp/no-svidd-here.sock"); code != 1 || !strings.Contains(stderr, "is it running?") {
		t.Fatalf("healthcheck without agent: exit %d %q", code, stderr)
	}
	if out, _, code := cli(t, "bundle", "show", "-socketPath", sock); code != 0 || !strings.HasPrefix(out, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("bundle show: exit %d %q", code, out)
	}
}

// TestEntryListSPIREJSON: `entry list -output json` is what `spire-server entry show -output
// json` prints (entries with spiffe_id {trust_domain, path}, selectors {type, value}, int64s as
// strings), so scripts written for SPIRE read it; config-declared entries are marked.
func TestEntryListSPIREJSON(t *testing.T) {
	sock, st := startAdminForCLI(t)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	sel, err := entry.ParseSelectors([]string{"unix:uid:1000", "unix:path:/usr/bin/envoy"})
	if err != nil {
		t.Fatal(err)
	}
	e := entry.Entry{Name: "web", SPIFFEID: spiffeid.RequireFromPath(td, "/web"), Selectors: sel, DNSNames: []string{"web.local"}}
	created, err := st.CreateEntry(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, code := cli(t, "entry", "list", "-socketPath", sock, "-output", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"next_page_token": "",
		"entries": []any{map[string]any{
			"id":              created.ID,
			"spiffe_id":       map[string]any{"trust_domain": "example.org", "path": "/web"},
			"parent_id":       map[string]any{"trust_domain": "example.org", "path": ""},
			"selectors":       []any{map[string]any{"type": "unix", "value": "path:/usr/bin/envoy"}, map[string]any{"type": "unix", "value": "uid:1000"}},
			"x509_svid_ttl":   0.0,
			"jwt_svid_ttl":    0.0,
			"federates_with":  []any{},
			"admin":           false,
			"downstream":      false,
			"expires_at":      "0",
			"dns_names":       []any{"web.local"},
			"revision_number": "1",
			"store_svid":      false,
			"hint":            "",
			"created_at":      strconv.FormatInt(created.CreatedAt.Unix(), 10),
			"name":            "web",
			"from_config":     true,
		}},
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Fatalf("entry list -output json:\n%s\nwant:\n%s", g, w)
	}
	// The pretty form says where it comes from.
	out, _, _ = cli(t, "entry", "list", "-socketPath", sock)
	if !strings.Contains(out, "from the config file") {
		t.Errorf("entry list does not mark the config entry:\n%s", out)
	}
	// Deleting it is refused, saying that the config would bring it back and where to change it.
	out, stderr, code = cli(t, "entry", "delete", "-socketPath", sock, "-entryID", created.ID)
	if code == 0 || !strings.Contains(stderr, "come back at the next reload") || !strings.Contains(stderr, `"web"`) {
		t.Fatalf("delete of a config entry: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}
