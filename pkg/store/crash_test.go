package store_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

// The crash and failure tests re-execute this test binary as a child that opens the store
// and writes; TestMain turns the child into the helper named by helperEnv instead of running
// tests.
const (
	helperEnv   = "SVIDD_STORE_TEST_HELPER"
	helperDBEnv = "SVIDD_STORE_TEST_DB"
)

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h, os.Getenv(helperDBEnv)))
	}
	os.Exit(m.Run())
}

// runHelper runs in the child. It prints one line per acknowledged write ("ID <id>") only
// after the store call has returned, so the parent knows exactly what was acknowledged.
func runHelper(name, path string) int {
	ctx := context.Background()
	if name == "fill" {
		// Simulate a full disk: any file write past 256 KiB fails with EFBIG (Go ignores
		// SIGXFSZ). Applies to this child only.
		lim := syscall.Rlimit{Cur: 256 << 10, Max: 256 << 10}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			fmt.Println("SETUP", err)
			return 2
		}
	}
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		fmt.Println("OPEN-ERR", err)
		return 0
	}
	defer s.Close()
	pid := os.Getpid()
	for i := 0; ; i++ {
		e := entry.Entry{
			SPIFFEID:  spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/%s/%d/%d", name, pid, i)),
			Selectors: []entry.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", i)}},
		}
		if name == "fill" {
			// Big rows fill the limit within a few dozen writes.
			e.DNSNames = []string{strings.Repeat("a", 60) + fmt.Sprintf(".n%d.example.org", i)}
			for len(e.DNSNames) < 100 {
				e.DNSNames = append(e.DNSNames, e.DNSNames[0])
			}
		}
		got, err := s.CreateEntry(ctx, e)
		if err != nil {
			fmt.Println("WRITE-ERR", err)
			// The store stays usable for reads after a failed write.
			list, lerr := s.ListEntries(ctx, store.Filter{})
			fmt.Println("LISTED", len(list), lerr)
			return 0
		}
		fmt.Println("ID", got.ID)
		if name == "readonly" || i > 100000 {
			fmt.Println("WROTE")
			return 0
		}
	}
}

type helperResult struct {
	ids   []string // acknowledged IDs
	lines []string // other output
	err   error    // from Wait
}

// startHelper runs the helper and calls stop after each acknowledged ID; when stop returns
// true the child is SIGKILLed.
// If budget is non-zero, the child is also SIGKILLed that long after its first acknowledged
// write.
func startHelper(t *testing.T, name, path string, budget time.Duration, stop func(n int) bool) helperResult {
	t.Helper()
	return startHelperBinary(t, os.Args[0], name, path, nil, budget, stop)
}

func startHelperBinary(t *testing.T, bin, name, path string, cred *syscall.Credential, budget time.Duration, stop func(n int) bool) helperResult {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	// Under -race the child would otherwise sleep a second at exit.
	cmd.Env = append(os.Environ(), helperEnv+"="+name, helperDBEnv+"="+path,
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Stderr = os.Stderr
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var res helperResult
	killed := false
	r := bufio.NewReader(out)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			// A partial last line was cut by the kill: not acknowledged.
			break
		}
		line = strings.TrimSuffix(line, "\n")
		if id, ok := strings.CutPrefix(line, "ID "); ok {
			res.ids = append(res.ids, id)
			if len(res.ids) == 1 && budget > 0 {
				timer := time.AfterFunc(budget, func() { _ = cmd.Process.Kill() })
				defer timer.Stop()
			}
			if !killed && stop != nil && stop(len(res.ids)) {
				// SIGKILL, then keep reading: lines already in the pipe are writes the child
				// saw acknowledged before it died, and must be counted (and checked).
				_ = cmd.Process.Kill()
				killed = true
			}
			continue
		}
		res.lines = append(res.lines, line)
	}
	_, _ = io.Copy(io.Discard, out)
	res.err = cmd.Wait()
	return res
}

// checkDB opens the database as svidd would, checks integrity and returns the stored IDs.
func checkDB(t *testing.T, path string) map[string]bool {
	t.Helper()
	ctx := context.Background()
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("reopening after the child: %v", err)
	}
	defer s.Close()
	list, err := s.ListEntries(ctx, store.Filter{})
	if err != nil {
		t.Fatalf("listing after the child: %v", err)
	}
	got := make(map[string]bool, len(list))
	for _, e := range list {
		got[e.ID] = true
	}
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil || res != "ok" {
		t.Fatalf("integrity_check = %q, %v", res, err)
	}
	return got
}

// TestSQLiteSurvivesKill9 kills a writing child at an arbitrary point, again and again, and
// checks that every write it acknowledged is there and the database is intact.
func TestSQLiteSurvivesKill9(t *testing.T) {
	path := filepath.Join(t.TempDir(), "entries.db")
	start := time.Now()
	var acked []string
	// Up to 20 rounds; on a disk shared with other busy jobs (fsync taking 100 ms) stop once
	// the time budget is spent, after at least minRounds.
	const maxRounds, minRounds, timeBudget = 20, 4, 8 * time.Second
	rounds := 0
	for round := 0; round < maxRounds && (round < minRounds || time.Since(start) < timeBudget); round++ {
		rounds++
		// Kill after a varying number of writes, so the kill lands at different points of
		// the commit. Every commit is fsynced, which on a busy disk can take tens of
		// milliseconds: the time budget bounds the test, the count varies the kill point.
		n := 100 + (round*37)%200
		budget := time.Duration(150+(round*53)%200) * time.Millisecond
		res := startHelper(t, "writer", path, budget, func(got int) bool { return got >= n })
		if len(res.ids) == 0 || len(res.lines) != 0 {
			t.Fatalf("round %d: child acknowledged %d writes (%v), output %q", round, len(res.ids), res.err, res.lines)
		}
		acked = append(acked, res.ids...)
		stored := checkDB(t, path)
		for _, id := range acked {
			if !stored[id] {
				t.Fatalf("round %d: acknowledged entry %s lost after kill -9", round, id)
			}
		}
		// At most the one write in flight may have landed unacknowledged.
		if len(stored) > len(acked)+round+1 {
			t.Fatalf("round %d: %d entries stored, only %d acknowledged", round, len(stored), len(acked))
		}
	}
	t.Logf("%d rounds, %d acknowledged writes, %s", rounds, len(acked), time.Since(start))
	if rounds < maxRounds {
		t.Logf("stopped after %d rounds: the disk is slow (fsync per commit)", rounds)
	}
}

// TestSQLiteFullDisk makes writes fail the way a full disk does (the child's file size limit
// is exceeded): the write returns an error, nothing panics, reads still work, and nothing
// stored before is lost.
func TestSQLiteFullDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "entries.db")
	res := startHelper(t, "fill", path, 0, nil)
	if res.err != nil {
		t.Fatalf("child failed (%v); output %q", res.err, res.lines)
	}
	if len(res.lines) < 2 || !strings.HasPrefix(res.lines[0], "WRITE-ERR") {
		t.Fatalf("child output %q after %d writes, want a WRITE-ERR", res.lines, len(res.ids))
	}
	if len(res.ids) < 5 {
		t.Fatalf("only %d writes before the limit; the test does not exercise a full disk after writes", len(res.ids))
	}
	if want := fmt.Sprintf("LISTED %d <nil>", len(res.ids)); res.lines[1] != want {
		t.Fatalf("reading after the failed write: %q, want %q", res.lines[1], want)
	}
	t.Logf("%d writes, then %s", len(res.ids), res.lines[0])
	stored := checkDB(t, path)
	for _, id := range res.ids {
		if !stored[id] {
			t.Fatalf("entry %s lost after the disk filled", id)
		}
	}
	// Once there is room again, writes work.
	s, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustCreate(t, s, "/after-full", "unix:uid:1")
}

// TestSQLiteReadOnly opens, as an unprivileged user, a database that user may read but not
// write (root is not stopped by file modes, hence another uid): the store refuses with an
// error at open or at the write, and the data is untouched.
func TestSQLiteReadOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the child under another uid") // we are root in dev and CI
	}
	ctx := context.Background()
	// The child binary and its data must be reachable by uid 1001: copy the test binary out
	// of go's private build dir.
	base := t.TempDir()
	if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "store.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(base, "data")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dataDir, "entries.db")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{mustCreate(t, s, "/a", "unix:uid:1").ID, mustCreate(t, s, "/b", "unix:uid:2").ID}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}

	res := startHelperBinary(t, bin, "readonly", path, &syscall.Credential{Uid: 1001, Gid: 1001}, 0, nil)
	if res.err != nil {
		t.Fatalf("child failed (%v); output %q", res.err, res.lines)
	}
	if len(res.ids) != 0 || len(res.lines) == 0 || !(strings.HasPrefix(res.lines[0], "OPEN-ERR") || strings.HasPrefix(res.lines[0], "WRITE-ERR")) {
		t.Fatalf("write to a read-only database: ids %v, output %q; want an error", res.ids, res.lines)
	}
	t.Logf("read-only: %s", res.lines[0])
	stored := checkDB(t, path)
	if len(stored) != len(want) || !stored[want[0]] || !stored[want[1]] {
		t.Fatalf("stored %v after the refused write, want %v", stored, want)
	}
}

func TestSQLiteRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "entries.db")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if s, err := store.OpenSQLite(ctx, path); err == nil {
		s.Close()
		t.Fatal("OpenSQLite accepted a database from a newer schema")
	} else if !strings.Contains(err.Error(), "schema version 99") {
		t.Fatalf("OpenSQLite error %q does not name the schema version", err)
	}
}

// TestSQLiteMigratesVersion1: a database written by a svidd before federation (schema 1, as
// that version created it) opens with every entry intact, federating with nothing, and takes
// entries with federated trust domains and bundles afterwards.
func TestSQLiteMigratesVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "entries.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`CREATE TABLE entries (
			id               TEXT    PRIMARY KEY NOT NULL,
			name             TEXT    NOT NULL DEFAULT '',
			spiffe_id        TEXT    NOT NULL,
			selectors        TEXT    NOT NULL,
			x509_svid_ttl_ns INTEGER NOT NULL DEFAULT 0,
			dns_names        TEXT    NOT NULL DEFAULT '[]',
			revision         INTEGER NOT NULL,
			created_at       INTEGER NOT NULL,
			updated_at       INTEGER NOT NULL
		)`,
		`CREATE UNIQUE INDEX entries_spiffe_id_selectors ON entries (spiffe_id, selectors)`,
		`CREATE INDEX entries_name ON entries (name)`,
		`INSERT INTO entries VALUES ('e1', 'web', 'spiffe://example.org/web', 'unix:uid:1000', 60000000000, '["web.local"]', 4, 1, 2)`,
		`INSERT INTO entries VALUES ('e2', '', 'spiffe://example.org/db', 'unix:gid:5` + "\n" + `unix:uid:1001', 0, '[]', 1, 3, 3)`,
		`PRAGMA user_version = 1`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()

	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("opening a schema-1 database: %v", err)
	}
	defer s.Close()
	list, err := s.ListEntries(ctx, store.Filter{})
	if err != nil || len(list) != 2 {
		t.Fatalf("ListEntries after migration = %v, %v; want both entries", list, err)
	}
	web := list[1]
	if web.ID != "e1" || web.Name != "web" || web.X509SVIDTTL != time.Minute || len(web.DNSNames) != 1 || web.Revision != 4 || web.FederatesWith != nil {
		t.Fatalf("migrated entry = %+v", web)
	}
	if db := list[0]; db.ID != "e2" || len(db.Selectors) != 2 || db.FederatesWith != nil {
		t.Fatalf("migrated entry = %+v", db)
	}
	other := spiffeid.RequireTrustDomainFromString("other.org")
	web.FederatesWith = []spiffeid.TrustDomain{other}
	if got, err := s.UpdateEntry(ctx, web); err != nil || got.Revision != 5 || len(got.FederatesWith) != 1 {
		t.Fatalf("UpdateEntry with FederatesWith after migration = %+v, %v", got, err)
	}
	if _, err := s.SetBundle(ctx, store.FederatedBundle{TrustDomain: other, Doc: []byte(`{"keys":[]}`), Source: store.BundleManual}); err != nil {
		t.Fatalf("SetBundle after migration: %v", err)
	}
}
