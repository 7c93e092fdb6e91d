package test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
)

// TestAPICannotWriteConfigEntries: an entry written through the admin API is never one the
// config file owns (svidd makes named entries equal to the file's entry blocks at every start
// and reload, so such a write would be acknowledged, then undone). Against the real svidd and
// svidctl: a "name" in a create or update is refused with 400 naming the field; updating or
// deleting the config's entry is refused with 409 naming its block; nothing is written, and
// after a reload and a restart every acknowledged entry is still there, as acknowledged.
func TestAPICannotWriteConfigEntries(t *testing.T) {
	a := startAgent(t, withConfig("entry \"cfg\" {\n  spiffe_id = \"spiffe://example.org/cfg\"\n  selectors = [\"unix:uid:1001\"]\n}\n"))
	c := admin.NewClient(a.admin)
	ctx := context.Background()
	list := func() map[string]admin.Entry {
		t.Helper()
		es, err := c.ListEntries(ctx, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]admin.Entry{}
		for _, e := range es {
			m[e.ID] = e
		}
		return m
	}
	var cfgID string
	for id, e := range list() {
		if e.Name == "cfg" {
			cfgID = id
		}
	}
	if cfgID == "" {
		t.Fatal("the config's entry is not registered")
	}
	apiID := a.createEntry("spiffe://example.org/api", "-selector", "unix:uid:1002")
	before := list()

	wantStatus := func(err error, code int, words ...string) {
		t.Helper()
		var se *admin.StatusError
		if !errors.As(err, &se) || se.Code != code {
			t.Fatalf("got %v, want status %d", err, code)
		}
		for _, w := range words {
			if !strings.Contains(se.Message, w) {
				t.Errorf("message %q lacks %q", se.Message, w)
			}
		}
	}
	_, err := c.CreateEntry(ctx, admin.Entry{Name: "sneaky", SPIFFEID: "spiffe://example.org/x", Selectors: []string{"unix:uid:1003"}})
	wantStatus(err, http.StatusBadRequest, `"name"`, "config file")
	_, err = c.UpdateEntry(ctx, admin.Entry{ID: apiID, Name: "sneaky", SPIFFEID: "spiffe://example.org/api", Selectors: []string{"unix:uid:1002"}})
	wantStatus(err, http.StatusBadRequest, `"name"`)
	_, err = c.UpdateEntry(ctx, admin.Entry{ID: cfgID, SPIFFEID: "spiffe://example.org/cfg", Selectors: []string{"unix:uid:1003"}})
	wantStatus(err, http.StatusConflict, `entry "cfg"`, "config file")
	_, err = c.DeleteEntry(ctx, cfgID)
	wantStatus(err, http.StatusConflict, `entry "cfg"`)
	// svidctl says the same to an operator.
	if _, err := a.svidctl("entry", "update", "-entryID", cfgID, "-selector", "unix:uid:1003"); err == nil || !strings.Contains(err.Error(), `entry "cfg"`) {
		t.Errorf("svidctl entry update of the config's entry: %v", err)
	}
	if _, err := a.svidctl("entry", "delete", "-entryID", cfgID); err == nil || !strings.Contains(err.Error(), `entry "cfg"`) {
		t.Errorf("svidctl entry delete of the config's entry: %v", err)
	}
	// svidctl can still update an entry of its own.
	a.mustSvidctl("entry", "update", "-entryID", apiID, "-dns", "api.local")
	before[apiID] = list()[apiID]

	same := func(when string) {
		t.Helper()
		after := list()
		if len(after) != len(before) {
			t.Fatalf("%s: %d entries, want %d: %v", when, len(after), len(before), after)
		}
		for id, b := range before {
			if g, ok := after[id]; !ok || g.Revision != b.Revision || g.Name != b.Name || strings.Join(g.Selectors, ",") != strings.Join(b.Selectors, ",") {
				t.Fatalf("%s: entry %s is %+v, was acknowledged as %+v", when, id, g, b)
			}
		}
	}
	same("after the refusals")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, a, "configuration reloaded")
	same("after a reload")
	a.restart()
	same("after a restart")
}

// TestHalfADataDirRefused: a data dir holding the CA without the store, or the store without
// the CA, is not started from silently (a new CA would change the bundle everyone trusts; a new
// store would forget every entry). svidd exits naming what is missing and how to start anyway
// (-fresh), changes nothing, and starts again once the file is back; -fresh starts on purpose,
// keeping the half that is there.
func TestHalfADataDirRefused(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t)
	id := a.createEntry("spiffe://example.org/kept", "-selector", "unix:uid:1001")
	bundle := a.mustSvidctl("bundle", "show")
	a.stop()
	caPath, dbPath := filepath.Join(a.dataDir, "ca.json"), filepath.Join(a.dataDir, "svidd.db")
	aside := filepath.Join(a.dir, "aside")
	if err := os.Mkdir(aside, 0o700); err != nil {
		t.Fatal(err)
	}
	move := func(from, to string) {
		t.Helper()
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	files := func() string {
		t.Helper()
		ents, err := os.ReadDir(a.dataDir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return strings.Join(names, " ")
	}

	// No CA beside the store.
	move(caPath, filepath.Join(aside, "ca.json"))
	was := files()
	code, out := runSviddOnce(t, a.args()[1:]...)
	wantRefused(t, code, out, "holds a store (svidd.db) but no CA (ca.json is missing)")
	wantRefused(t, code, out, "-fresh")
	if now := files(); now != was {
		t.Fatalf("the refused data dir changed: %q → %q", was, now)
	}
	move(filepath.Join(aside, "ca.json"), caPath)

	// No store beside the CA: missing, then empty (SQLite would take a 0-byte file for a new
	// database).
	for _, name := range []string{"svidd.db", "svidd.db-wal", "svidd.db-shm"} {
		if _, err := os.Stat(filepath.Join(a.dataDir, name)); err == nil {
			move(filepath.Join(a.dataDir, name), filepath.Join(aside, name))
		}
	}
	code, out = runSviddOnce(t, a.args()[1:]...)
	wantRefused(t, code, out, "holds the CA (ca.json) but no store (svidd.db is missing or empty)")
	if _, err := os.Stat(dbPath); err == nil {
		t.Fatal("the refused start created a store")
	}
	if err := os.WriteFile(dbPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = runSviddOnce(t, a.args()[1:]...)
	wantRefused(t, code, out, "no store (svidd.db is missing or empty)")
	if err := os.Remove(dbPath); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"svidd.db", "svidd.db-wal", "svidd.db-shm"} {
		if _, err := os.Stat(filepath.Join(aside, name)); err == nil {
			move(filepath.Join(aside, name), filepath.Join(a.dataDir, name))
		}
	}

	// Both back: it starts, with the entry and the bundle it had.
	a.start()
	if out := a.mustSvidctl("entry", "show", "-entryID", id); !strings.Contains(out, "spiffe://example.org/kept") {
		t.Fatalf("entry lost:\n%s", out)
	}
	if got := a.mustSvidctl("bundle", "show"); got != bundle {
		t.Fatal("the bundle changed across the refusals")
	}
	a.stop()

	// -fresh with the store gone: an empty store, the same CA.
	for _, name := range []string{"svidd.db", "svidd.db-wal", "svidd.db-shm"} {
		os.Remove(filepath.Join(a.dataDir, name))
	}
	a.extra = append(a.extra, "-fresh")
	a.start()
	waitLog(t, a, "starting with a new, empty store beside the existing CA")
	if got := a.mustSvidctl("bundle", "show"); got != bundle {
		t.Fatal("-fresh without a store changed the CA")
	}
	if out := a.mustSvidctl("entry", "list"); !strings.Contains(out, "Found 0 entries") {
		t.Fatalf("-fresh store is not empty:\n%s", out)
	}
	a.stop()

	// -fresh with the CA gone (beside a store holding an entry): a new CA, said in a warning.
	a.start()
	a.createEntry("spiffe://example.org/again", "-selector", "unix:uid:1001")
	a.stop()
	if err := os.Remove(caPath); err != nil {
		t.Fatal(err)
	}
	a.start()
	waitLog(t, a, "starting with a new CA beside the existing store")
	if got := a.mustSvidctl("bundle", "show"); got == bundle {
		t.Fatal("a new CA was created but the bundle is the old one")
	}
}

// TestTTLTooShortToRotateRefused: an SVID lifetime too short to be replaced before it expires
// (1s used to be accepted and broke rotation) is refused by the real binaries, with the
// minimum named: by svidctl through the admin API (nothing is written), and by svidd for
// ca.svid_ttl, ca.jwt_svid_ttl and an entry's x509_svid_ttl in the config file.
func TestTTLTooShortToRotateRefused(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t)
	for _, ttl := range []string{"1", "4"} {
		out, err := a.svidctl("entry", "create", "-spiffeID", "spiffe://example.org/short", "-selector", "unix:uid:1001", "-x509SVIDTTL", ttl)
		if err == nil || !strings.Contains(err.Error(), ttl+"s is shorter than the minimum 5s") {
			t.Fatalf("svidctl entry create -x509SVIDTTL %s: %v\n%s", ttl, err, out)
		}
	}
	id := a.createEntry("spiffe://example.org/short", "-selector", "unix:uid:1001", "-x509SVIDTTL", "5")
	if _, err := a.svidctl("entry", "update", "-entryID", id, "-x509SVIDTTL", "2"); err == nil || !strings.Contains(err.Error(), "minimum 5s") {
		t.Fatalf("svidctl entry update -x509SVIDTTL 2: %v", err)
	}
	if out := a.mustSvidctl("entry", "list"); !strings.Contains(out, "Found 1 entry") || !strings.Contains(out, "X509-SVID TTL : 5") {
		t.Fatalf("the refused writes changed the store:\n%s", out)
	}
	a.stop()

	for _, tc := range []struct{ name, hcl, want string }{
		{"svid_ttl", "ca {\n  svid_ttl = \"1s\"\n}\n", "svid_ttl 1s is shorter than the minimum 5s"},
		{"jwt_svid_ttl", "ca {\n  jwt_svid_ttl = \"2s\"\n}\n", "jwt_svid_ttl 2s is shorter than the minimum 5s"},
		{"x509_svid_ttl", "entry \"e\" {\n  spiffe_id = \"spiffe://example.org/e\"\n  selectors = [\"unix:uid:1\"]\n  x509_svid_ttl = \"1s\"\n}\n", "x509_svid_ttl 1s is shorter than the minimum 5s"},
		{"ca_ttl", "ca {\n  ca_ttl = \"12s\"\n}\n", "ca_ttl 12s is shorter than the minimum 30s"},
	} {
		cfg := filepath.Join(a.dir, tc.name+".hcl")
		if err := os.WriteFile(cfg, []byte(testListeners+tc.hcl), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append(a.args()[1:], "-config", cfg)
		code, out := runSviddOnce(t, args...)
		wantRefused(t, code, out, tc.want)
	}
}
