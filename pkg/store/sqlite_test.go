package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/storetest"
)

func openTemp(t *testing.T) (*store.SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "entries.db")
	s, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	return s, path
}

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openTemp(t)
		return s
	})
}

func mustCreate(t *testing.T, s store.Store, path string, sel ...string) entry.Entry {
	t.Helper()
	sels, err := entry.ParseSelectors(sel)
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.CreateEntry(context.Background(), entry.Entry{
		SPIFFEID:    spiffeid.RequireFromString("spiffe://example.org" + path),
		Selectors:   sels,
		X509SVIDTTL: 5 * time.Minute,
		DNSNames:    []string{"a.example.org"},
	})
	if err != nil {
		t.Fatalf("CreateEntry: %v", err)
	}
	return e
}

func TestSQLiteSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	e1 := mustCreate(t, s, "/one", "unix:uid:1", "unix:path:/bin/one")
	e2 := mustCreate(t, s, "/two", "unix:uid:2")
	upd := e2
	upd.Name = "renamed"
	e2, err := s.UpdateEntry(ctx, upd)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.GetEntry(ctx, e1.ID); err == nil {
		t.Fatal("GetEntry on a closed store succeeded")
	}
	if _, err := s.CreateEntry(ctx, entry.Entry{SPIFFEID: e1.SPIFFEID, Selectors: entry.Normalize([]entry.Selector{{Type: "unix", Value: "uid:9"}})}); err == nil {
		t.Fatal("CreateEntry on a closed store succeeded")
	}

	s, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatalf("reopening: %v", err)
	}
	defer s.Close()
	list, err := s.ListEntries(ctx, store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d entries after reopen, want 2", len(list))
	}
	for i, want := range []entry.Entry{e1, e2} {
		if d := storetest.Equal(list[i], want); d != "" {
			t.Fatalf("entry %d after reopen: %s", i, d)
		}
	}
	// Revisions continue where they were.
	e2.Name = "again"
	if got, err := s.UpdateEntry(ctx, e2); err != nil || got.Revision != 3 {
		t.Fatalf("UpdateEntry after reopen = revision %d, %v; want 3", got.Revision, err)
	}
}

func TestSQLiteFileMode(t *testing.T) {
	s, path := openTemp(t)
	defer s.Close()
	mustCreate(t, s, "/a", "unix:uid:1")
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
}

func TestSQLiteOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("this is not a database ", 200)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, wantErr string
	}{
		{"empty path", "", "empty path"},
		{"missing parent dir", filepath.Join(dir, "missing", "entries.db"), "does not exist"},
		{"parent is a file", filepath.Join(notDir, "entries.db"), "not a directory"},
		{"not a database", garbage, "not a database"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.OpenSQLite(context.Background(), tt.path)
			if err == nil {
				s.Close()
				t.Fatalf("OpenSQLite(%q) succeeded", tt.path)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("OpenSQLite(%q) = %q, want it to contain %q", tt.path, err, tt.wantErr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenSQLite created the missing parent dir (stat: %v)", err)
	}
}

func TestSQLitePathNeedingEscapes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a dir?with#odd%chars")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "entries.db")
	s, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "/a", "unix:uid:1")
	s.Close()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("database not at %s: %v", path, err)
	}
}
