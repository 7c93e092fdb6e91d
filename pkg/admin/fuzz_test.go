package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// idPlaceholder in a fuzzed path or body stands for the ID of the entry every iteration starts
// with: the store assigns random IDs, which the fuzzer could never guess. cfgPlaceholder
// stands for the ID of the config-declared entry (configEntry).
const (
	idPlaceholder  = "@ID@"
	cfgPlaceholder = "@CFG@"
)

// baseEntry is in the store at the start of every iteration, so updates, deletes, gets and
// duplicate creates have something real to hit.
var baseEntry = admin.Entry{
	SPIFFEID:    "spiffe://example.org/web",
	Selectors:   []string{"unix:uid:1000", "unix:gid:1000"},
	X509SVIDTTL: 600,
	DNSNames:    []string{"web.local"},
}

// configEntry is in the store too, as the agent registers an `entry "cfg" {}` block of the
// config file: the API must neither change nor delete it.
var configEntry = entry.Entry{
	Name:      "cfg",
	SPIFFEID:  spiffeid.RequireFromString("spiffe://example.org/cfg"),
	Selectors: []entry.Selector{{Type: "unix", Value: "uid:1001"}},
}

// adminFuzzer is the admin handler over a real SQLite store, shared by the iterations of one
// fuzz worker (they run one at a time) and reset to {baseEntry, configEntry} whenever an
// iteration wrote.
type adminFuzzer struct {
	st            *store.SQLite
	h             http.Handler
	baseID, cfgID string
}

func newAdminFuzzer(f *testing.F) *adminFuzzer {
	// tmpfs when there is one: every committed write is fsynced (synchronous=FULL), and on a
	// disk that, not the handler, would be what the fuzzer spends its time on.
	parent := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		parent = "/dev/shm"
	}
	dir, err := os.MkdirTemp(parent, "svidd-adminfuzz-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	srv, err := admin.New(admin.Config{
		TrustDomain: td,
		Store:       st,
		Bundle:      func() *workload.Bundle { return &workload.Bundle{TrustDomain: td, PEM: []byte("PEM"), Sequence: 7} },
		CATTL:       24 * time.Hour,
	})
	if err != nil {
		f.Fatal(err)
	}
	a := &adminFuzzer{st: st, h: srv.Handler()}
	if err := a.reset(); err != nil {
		f.Fatal(err)
	}
	return a
}

// reset leaves exactly baseEntry in the store.
func (a *adminFuzzer) reset() error {
	ctx := context.Background()
	es, err := a.st.ListEntries(ctx, store.Filter{})
	if err != nil {
		return err
	}
	for _, e := range es {
		if _, err := a.st.DeleteEntry(ctx, e.ID); err != nil {
			return err
		}
	}
	e, err := baseEntry.FromWire(td)
	if err != nil {
		return err
	}
	out, err := a.st.CreateEntry(ctx, e)
	if err != nil {
		return err
	}
	a.baseID = out.ID
	if out, err = a.st.CreateEntry(ctx, configEntry); err != nil {
		return err
	}
	a.cfgID = out.ID
	return nil
}

// snapshot is the whole store, by ID, in wire form (what an operator can observe).
func (a *adminFuzzer) snapshot(t *testing.T) map[string]string {
	t.Helper()
	es, err := a.st.ListEntries(context.Background(), store.Filter{})
	if err != nil {
		t.Fatalf("listing the store: %v", err)
	}
	m := make(map[string]string, len(es))
	for _, e := range es {
		m[e.ID] = wireJSON(t, admin.EntryToWire(e))
	}
	return m
}

func wireJSON(t *testing.T, e admin.Entry) string {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// recordingBody keeps what the handler read, which is the body it acted on.
type recordingBody struct {
	r   io.Reader
	buf bytes.Buffer
}

func (b *recordingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.buf.Write(p[:n])
	return n, err
}
func (b *recordingBody) Close() error { return nil }

// FuzzAdminAPI sends one fuzzed request (method, path with query, body) to the real admin
// handler over a real SQLite store holding one entry, and checks: no panic; only the statuses
// the API documents (a 500 is a bug: this store does not fail); a refused request changes
// nothing; a create, update or delete changes exactly its entry, to exactly what was asked,
// and a GET returns what the write answered.
func FuzzAdminAPI(f *testing.F) {
	body := func(e admin.Entry) []byte {
		b, err := json.Marshal(e)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	valid := admin.Entry{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}}
	create := admin.Entry{Name: "n", SPIFFEID: "spiffe://example.org/web", Selectors: []string{"unix:uid:1000", "unix:gid:1000", "unix:uid:1000"}, X509SVIDTTL: 600, DNSNames: []string{"web.local", "*.web.local"}}
	f.Add("POST", "/v1/entries", body(create))
	f.Add("POST", "/v1/entries", body(valid))
	// The create table of TestBadInputChangesNothing.
	for _, e := range []admin.Entry{
		{SPIFFEID: "https://example.org/web", Selectors: []string{"unix:uid:1"}},
		{SPIFFEID: "spiffe://evil.org/web", Selectors: []string{"unix:uid:1"}},
		{SPIFFEID: "spiffe://example.org", Selectors: []string{"unix:uid:1"}},
		{SPIFFEID: "spiffe://example.org/a//b", Selectors: []string{"unix:uid:1"}},
		{SPIFFEID: "spiffe://example.org/x"},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"uid1000"}},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:pid:1"}},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:root"}},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, X509SVIDTTL: 5 * 3600},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, X509SVIDTTL: -1},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, X509SVIDTTL: 1}, // too short to rotate
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1"}, DNSNames: []string{"a b"}},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:path:relative"}},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1\nunix:uid:2"}},
		{SPIFFEID: "spiffe://example.org/x", Selectors: []string{"systemd:unit:web.service", "unix:namespace:host", "unix:cgroup:/system.slice/web.service"}},
		baseEntry, // duplicate: 409
	} {
		f.Add("POST", "/v1/entries", body(e))
	}
	// TestMalformedBodies.
	for _, b := range []string{
		"spiffe_id=x",
		`{"spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"],"admin":true}`,
		`{"spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"]} {}`,
		`{"spiffe_id":1,"selectors":["unix:uid:1"]}`,
		`{"spiffe_id":"spiffe://example.org/x","selectors":["` + strings.Repeat("a", 100) + `"]`,
		`{"spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"],"name":"a\u0000b"}`,
		`{"spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"],"x509_svid_ttl":1e30}`,
		`{"spiffe_id":"spiffe://example.org/x","selectors":null}`,
		`{"id":"@ID@","spiffe_id":"spiffe://example.org/x","selectors":["unix:uid:1"]}`,
		`null`,
		``,
	} {
		f.Add("POST", "/v1/entries", []byte(b))
	}
	// Every other route, with the existing ID, unknown IDs and odd paths.
	moved := baseEntry
	moved.Selectors = []string{"unix:uid:2000"}
	named := valid
	named.Name = "cfg"
	for _, r := range []struct{ method, path, body string }{
		// The config's entries are the config's: refused, 400 (a name) or 409 (its entry).
		{"POST", "/v1/entries", string(body(named))},
		{"PUT", "/v1/entries/@ID@", string(body(named))},
		{"PUT", "/v1/entries/@CFG@", string(body(valid))},
		{"PUT", "/v1/entries/@CFG@", string(body(named))},
		{"DELETE", "/v1/entries/@CFG@", ""},
		{"PUT", "/v1/entries/@ID@", string(body(moved))},
		{"PUT", "/v1/entries/@ID@", string(body(valid))},
		{"PUT", "/v1/entries/@ID@", `{"spiffe_id":"spiffe://example.org/x","selectors":["unix:path:relative"]}`},
		{"PUT", "/v1/entries/nope", string(body(valid))},
		{"PUT", "/v1/entries/..%2Fetc", string(body(valid))},
		{"DELETE", "/v1/entries/@ID@", ""},
		{"DELETE", "/v1/entries/nope", ""},
		{"GET", "/v1/entries/@ID@", ""},
		{"GET", "/v1/entries/@ID@/", ""},
		{"GET", "/v1/entries/%00", ""},
		{"GET", "/v1/entries", ""},
		{"GET", "/v1/entries?spiffe_id=spiffe://example.org/web&selector=unix:uid:1000", ""},
		{"GET", "/v1/entries?spiffe_id=spiffe://example.org", ""},
		{"GET", "/v1/entries?selector=uid", ""},
		{"GET", "/v1/entries?selector=unix:uid:1000&selector=unix:gid:1000", ""},
		{"GET", "/v1/bundle", ""},
		{"GET", "/v1/health", ""},
		{"GET", "/v1/status", ""},
		{"HEAD", "/v1/entries", ""},
		{"PATCH", "/v1/entries/@ID@", string(body(valid))},
		{"DELETE", "/v1/entries", ""},
		{"POST", "/v1/entries/@ID@", string(body(valid))},
		{"POST", "/v1/../v1/entries", string(body(valid))},
		{"GET", "//v1/entries", ""},
		{"OPTIONS", "*", ""},
		{"GET", "http://other/v1/entries", ""},
	} {
		f.Add(r.method, r.path, []byte(r.body))
	}

	a := newAdminFuzzer(f)
	f.Fuzz(func(t *testing.T, method, target string, reqBody []byte) {
		if len(reqBody) > 2*admin.MaxBodyBytes {
			return // past the limit one size is as good as another
		}
		target = strings.NewReplacer(idPlaceholder, a.baseID, cfgPlaceholder, a.cfgID).Replace(target)
		reqBody = bytes.ReplaceAll(reqBody, []byte(idPlaceholder), []byte(a.baseID))
		reqBody = bytes.ReplaceAll(reqBody, []byte(cfgPlaceholder), []byte(a.cfgID))
		// Parse the request as the server does off the socket; what it refuses never reaches
		// the handler. No CR, LF or space: they would make a different request line.
		if strings.ContainsAny(method+target, "\r\n ") {
			return
		}
		raw := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: svidd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, target, len(reqBody))
		req, err := http.ReadRequest(bufio.NewReader(io.MultiReader(strings.NewReader(raw), bytes.NewReader(reqBody))))
		if err != nil {
			return
		}
		rb := &recordingBody{r: req.Body}
		req.Body = rb

		before := a.snapshot(t)
		rec := httptest.NewRecorder()
		a.h.ServeHTTP(rec, req)
		code, resp := rec.Code, rec.Body.Bytes()
		after := a.snapshot(t)

		switch code {
		case 200, 201, 400, 404, 405, 409:
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect:
			// ServeMux redirects a path that is not clean ("//", "..") to the clean one, and
			// nothing else.
			if p := req.URL.Path; path.Clean(p) == p {
				t.Fatalf("%s %q: %d for a clean path", method, target, code)
			}
		default:
			t.Fatalf("%s %q %q: status %d: %s", method, target, rb.buf.Bytes(), code, resp)
		}

		wrote := false
		if code/100 == 2 && (req.Method == "POST" || req.Method == "PUT" || req.Method == "DELETE") {
			// No write through the API touches the config's entry or makes a named one: the
			// next reload would undo it after the API acknowledged it.
			if got := decodeEntry(t, resp); got.ID == a.cfgID || got.Name != "" {
				t.Fatalf("%s %q %q answered %d for a config-declared entry: %s", method, target, rb.buf.Bytes(), code, resp)
			}
		}
		switch {
		case code == http.StatusCreated:
			wrote = true
			if req.Method != "POST" {
				t.Fatalf("%s %q answered 201", method, target)
			}
			got := decodeEntry(t, resp)
			want := requested(t, rb.buf.Bytes())
			if _, ok := before[got.ID]; ok || len(after) != len(before)+1 {
				t.Fatalf("create answered %s but the store went from %d to %d entries", got.ID, len(before), len(after))
			}
			checkOthersUnchanged(t, before, after, got.ID)
			checkStored(t, a, after, got, want)
			if got.Revision != 1 || !got.CreatedAt.Equal(got.UpdatedAt) {
				t.Fatalf("created entry has revision %d, created %v, updated %v", got.Revision, got.CreatedAt, got.UpdatedAt)
			}
		case code == http.StatusOK && req.Method == "PUT":
			wrote = true
			got := decodeEntry(t, resp)
			want := requested(t, rb.buf.Bytes())
			old, ok := before[got.ID]
			if !ok || got.ID != req.PathValue("id") || len(after) != len(before) {
				t.Fatalf("update of %q answered %s; store went from %d to %d entries", req.PathValue("id"), got.ID, len(before), len(after))
			}
			checkOthersUnchanged(t, before, after, got.ID)
			checkStored(t, a, after, got, want)
			var o admin.Entry
			if err := json.Unmarshal([]byte(old), &o); err != nil {
				t.Fatal(err)
			}
			if got.Revision != o.Revision+1 || !got.CreatedAt.Equal(o.CreatedAt) {
				t.Fatalf("update: revision %d→%d, created %v→%v", o.Revision, got.Revision, o.CreatedAt, got.CreatedAt)
			}
		case code == http.StatusOK && req.Method == "DELETE":
			wrote = true
			got := decodeEntry(t, resp)
			if before[got.ID] != wireJSON(t, got) {
				t.Fatalf("delete answered %s, store had %s", wireJSON(t, got), before[got.ID])
			}
			if _, ok := after[got.ID]; ok || len(after) != len(before)-1 {
				t.Fatalf("delete of %s: store went from %d to %d entries", got.ID, len(before), len(after))
			}
			checkOthersUnchanged(t, before, after, got.ID)
		default:
			// Every read, every refusal (4xx) and every redirect leaves the store as it was.
			checkOthersUnchanged(t, before, after, "")
		}
		if wrote {
			if err := a.reset(); err != nil {
				t.Fatalf("resetting the store: %v", err)
			}
		}
	})
}

func decodeEntry(t *testing.T, b []byte) admin.Entry {
	t.Helper()
	var e admin.Entry
	if err := json.Unmarshal(b, &e); err != nil || e.ID == "" {
		t.Fatalf("answer %q is not an entry: %v", b, err)
	}
	return e
}

// requested is what a write that succeeded must have stored: the body, decoded and validated
// the way the API does, in the wire form the API answers with (selectors normalized).
func requested(t *testing.T, body []byte) admin.Entry {
	t.Helper()
	var in admin.Entry
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		t.Fatalf("write succeeded with a body that does not decode (%q): %v", body, err)
	}
	e, err := in.FromWire(td)
	if err != nil {
		t.Fatalf("write succeeded with an invalid entry (%q): %v", body, err)
	}
	e.Selectors = entry.Normalize(e.Selectors)
	if len(e.DNSNames) == 0 {
		e.DNSNames = nil
	}
	return admin.EntryToWire(e)
}

// checkStored: the store holds exactly the answer, the answer is what was asked, and a GET
// through the API returns it unchanged.
func checkStored(t *testing.T, a *adminFuzzer, after map[string]string, got, want admin.Entry) {
	t.Helper()
	if after[got.ID] != wireJSON(t, got) {
		t.Fatalf("write answered\n%s\nstore holds\n%s", wireJSON(t, got), after[got.ID])
	}
	if got.Name != want.Name || got.SPIFFEID != want.SPIFFEID || !slices.Equal(got.Selectors, want.Selectors) ||
		got.X509SVIDTTL != want.X509SVIDTTL || !slices.Equal(got.DNSNames, want.DNSNames) {
		t.Fatalf("stored\n%s\nbut the request asked for\n%s", wireJSON(t, got), wireJSON(t, want))
	}
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/entries/"+strings.ReplaceAll(got.ID, "/", "%2F"), nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET of the written entry %s: %d %s", got.ID, rec.Code, rec.Body)
	}
	if back := decodeEntry(t, rec.Body.Bytes()); wireJSON(t, back) != wireJSON(t, got) {
		t.Fatalf("GET returned\n%s\nthe write answered\n%s", wireJSON(t, back), wireJSON(t, got))
	}
}

// checkOthersUnchanged: every entry but except (if any) is in the store exactly as it was.
func checkOthersUnchanged(t *testing.T, before, after map[string]string, except string) {
	t.Helper()
	for id, b := range before {
		if id == except {
			continue
		}
		if a, ok := after[id]; !ok || a != b {
			t.Fatalf("entry %s changed by a request that did not write it:\nbefore %s\nafter  %s", id, b, a)
		}
	}
	for id := range after {
		if _, ok := before[id]; !ok && id != except {
			t.Fatalf("entry %s appeared from a request that did not create it: %s", id, after[id])
		}
	}
}
