package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/svidd/svidd/pkg/entry"
)

var _ Store = (*SQLite)(nil)

// schemaVersion is stored in PRAGMA user_version. Bump it and add a step to migrate when the
// schema changes; a database newer than this binary is refused rather than misread.
const schemaVersion = 3

var migrations = []string{
	// 0 → 1
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
	);
	CREATE UNIQUE INDEX entries_spiffe_id_selectors ON entries (spiffe_id, selectors);
	CREATE INDEX entries_name ON entries (name);`,
	// 1 → 2: federation. Existing entries federate with nothing ('[]').
	`ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';
	CREATE TABLE bundles (
		trust_domain TEXT    PRIMARY KEY NOT NULL,
		doc          BLOB    NOT NULL,
		source       TEXT    NOT NULL,
		sequence     INTEGER NOT NULL DEFAULT 0,
		updated_at   INTEGER NOT NULL
	);`,
	// 2 → 3: the fleet's JWT keys as last seen in the registry, and the bundle sequence
	// served (sqlite_fleet.go).
	`CREATE TABLE fleet_jwt_keys (
		name      TEXT    PRIMARY KEY NOT NULL,
		record    BLOB    NOT NULL,
		not_after INTEGER NOT NULL
	);
	CREATE TABLE fleet_bundle (
		id          INTEGER PRIMARY KEY CHECK (id = 1),
		revision    INTEGER NOT NULL DEFAULT 0,
		sequence    INTEGER NOT NULL DEFAULT 0,
		fingerprint BLOB    NOT NULL DEFAULT x''
	);`,
}

// SQLite is the embedded Store, one database file in the data dir. Every write is committed
// with synchronous=FULL before the call returns.
type SQLite struct {
	db  *sql.DB
	log *slog.Logger
	now func() time.Time

	// writeMu serializes write transactions so commit order is exactly the order Watch
	// callbacks run in; SQLite admits a single writer anyway.
	writeMu sync.Mutex

	watchMu   sync.Mutex
	watchers  map[uint64]func(Change)
	nextWatch uint64

	closeOnce sync.Once
	closeErr  error
}

// SQLiteOption configures OpenSQLite.
type SQLiteOption func(*SQLite)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) SQLiteOption {
	return func(s *SQLite) {
		if l != nil {
			s.log = l
		}
	}
}

// WithClock sets the clock used for CreatedAt and UpdatedAt (default time.Now), for tests.
func WithClock(now func() time.Time) SQLiteOption {
	return func(s *SQLite) {
		if now != nil {
			s.now = now
		}
	}
}

// OpenSQLite opens (creating it 0600 if missing) the database at path and brings its schema up
// to date. The parent directory must exist: svidd creates its data dir deliberately, and a
// typo in a path should not silently create a new, empty store elsewhere.
func OpenSQLite(ctx context.Context, path string, opts ...SQLiteOption) (*SQLite, error) {
	s := &SQLite{
		log:      slog.New(slog.DiscardHandler),
		now:      time.Now,
		watchers: make(map[uint64]func(Change)),
	}
	for _, o := range opts {
		o(s)
	}
	if path == "" {
		return nil, errors.New("opening SQLite store: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("opening SQLite store %s: %w", path, err)
	}
	if err := createFile(abs); err != nil {
		return nil, fmt.Errorf("opening SQLite store: %w", err)
	}
	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("opening SQLite store %s: %w", abs, err)
	}
	s.db = db
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening SQLite store %s: %w", abs, err)
	}
	s.log.Debug("opened SQLite store", "path", abs)
	return s, nil
}

// dsn builds a URI whose pragmas the driver applies to every pooled connection (a PRAGMA run
// once through database/sql would configure only whichever connection ran it).
func dsn(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	// FULL: the WAL is fsynced at every commit, so an acknowledged write survives a crash or
	// power loss, not only a kill of the process.
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(ON)")
	// Write transactions take the write lock at BEGIN, so a read-then-write transaction never
	// fails with SQLITE_BUSY on upgrade when another process holds the database.
	q.Set("_txlock", "immediate")
	// url.URL escapes '?', '#' and '%' in the path, which SQLite's URI parser would misread.
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

func createFile(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("directory %s does not exist (create the data dir first)", dir)
		}
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	return f.Close()
}

func (s *SQLite) migrate(ctx context.Context) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrating schema: %w", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	if v > schemaVersion {
		return fmt.Errorf("schema version %d is newer than this svidd understands (%d); use a newer svidd", v, schemaVersion)
	}
	if v == schemaVersion {
		return nil
	}
	for i := v; i < schemaVersion; i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migrating schema to version %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no bound parameters; schemaVersion is a constant.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion)); err != nil {
		return fmt.Errorf("setting schema version: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrating schema: committing: %w", err)
	}
	return nil
}

// newID returns a random 128-bit ID formatted like a UUID (version 4), as SPIRE users expect.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// timestamp truncates t to what the database stores (Unix nanoseconds, UTC, no monotonic
// reading), so an entry returned by a write equals the same entry read back.
func timestamp(t time.Time) time.Time { return time.Unix(0, t.UnixNano()).UTC() }

// row is an entry in its stored form.
type row struct {
	id, name, spiffeID, selectors, dnsNames, federatesWith string
	ttl, revision, createdAt, updatedAt                    int64
}

func toRow(e entry.Entry) (row, error) {
	dns := e.DNSNames
	if dns == nil {
		dns = []string{}
	}
	b, err := json.Marshal(dns)
	if err != nil {
		return row{}, fmt.Errorf("encoding DNS names: %w", err)
	}
	fed := make([]string, len(e.FederatesWith))
	for i, td := range e.FederatesWith {
		fed[i] = td.Name()
	}
	f, err := json.Marshal(fed)
	if err != nil {
		return row{}, fmt.Errorf("encoding federated trust domains: %w", err)
	}
	return row{
		id:            e.ID,
		name:          e.Name,
		spiffeID:      e.SPIFFEID.String(),
		selectors:     entry.SelectorKey(e.Selectors),
		dnsNames:      string(b),
		federatesWith: string(f),
		ttl:           int64(e.X509SVIDTTL),
		revision:      e.Revision,
		createdAt:     e.CreatedAt.UnixNano(),
		updatedAt:     e.UpdatedAt.UnixNano(),
	}, nil
}

func (r row) entry() (entry.Entry, error) {
	id, err := spiffeid.FromString(r.spiffeID)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("entry %s: stored SPIFFE ID: %w", r.id, err)
	}
	var sels []entry.Selector
	for line := range strings.SplitSeq(r.selectors, "\n") {
		typ, value, ok := strings.Cut(line, ":")
		if !ok {
			return entry.Entry{}, fmt.Errorf("entry %s: stored selector %q is malformed", r.id, line)
		}
		sels = append(sels, entry.Selector{Type: typ, Value: value})
	}
	var dns []string
	// Most entries have no DNS names; skip the JSON decoder for them (loading 10,000 entries
	// at start is on the cold-start path).
	if r.dnsNames != "[]" {
		if err := json.Unmarshal([]byte(r.dnsNames), &dns); err != nil {
			return entry.Entry{}, fmt.Errorf("entry %s: stored DNS names: %w", r.id, err)
		}
	}
	if len(dns) == 0 {
		dns = nil
	}
	var fed []spiffeid.TrustDomain
	if r.federatesWith != "[]" {
		var names []string
		if err := json.Unmarshal([]byte(r.federatesWith), &names); err != nil {
			return entry.Entry{}, fmt.Errorf("entry %s: stored federated trust domains: %w", r.id, err)
		}
		for _, n := range names {
			td, err := spiffeid.TrustDomainFromString(n)
			if err != nil {
				return entry.Entry{}, fmt.Errorf("entry %s: stored federated trust domain: %w", r.id, err)
			}
			fed = append(fed, td)
		}
	}
	return entry.Entry{
		ID:            r.id,
		Name:          r.name,
		SPIFFEID:      id,
		Selectors:     sels,
		X509SVIDTTL:   time.Duration(r.ttl),
		DNSNames:      dns,
		FederatesWith: fed,
		Revision:      r.revision,
		CreatedAt:     time.Unix(0, r.createdAt).UTC(),
		UpdatedAt:     time.Unix(0, r.updatedAt).UTC(),
	}, nil
}

const columns = "id, name, spiffe_id, selectors, x509_svid_ttl_ns, dns_names, federates_with, revision, created_at, updated_at"

type scanner interface{ Scan(dest ...any) error }

func scanEntry(sc scanner) (entry.Entry, error) {
	var r row
	if err := sc.Scan(&r.id, &r.name, &r.spiffeID, &r.selectors, &r.ttl, &r.dnsNames, &r.federatesWith, &r.revision, &r.createdAt, &r.updatedAt); err != nil {
		return entry.Entry{}, err
	}
	return r.entry()
}

// prepare normalizes e for storing. The caller has validated e against the trust domain; the
// store still applies entry.ValidateShape, so no caller can store an entry that would be
// dangerous or unreadable (no SPIFFE ID; no selectors, which would read as "every caller"; a
// selector with a newline, which would corrupt the stored selector key).
func prepare(e entry.Entry) (entry.Entry, error) {
	if err := e.ValidateShape(); err != nil {
		return e, err
	}
	e.Selectors = entry.Normalize(e.Selectors)
	e.DNSNames = slices.Clone(e.DNSNames)
	if len(e.DNSNames) == 0 {
		e.DNSNames = nil // read back as nil
	}
	e.FederatesWith = entry.NormalizeTrustDomains(e.FederatesWith)
	for _, td := range e.FederatesWith {
		if td.IsZero() {
			return e, fmt.Errorf("%w: federates with an empty trust domain", entry.ErrInvalid)
		}
	}
	return e, nil
}

// mapWriteErr turns uniqueness violations, enforced by the database itself, into
// ErrAlreadyExists.
func mapWriteErr(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		// The operator needs the rule that was broken, not SQLite's wording of it.
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return ErrAlreadyExists
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("entry ID is already in use: %w", ErrAlreadyExists)
		}
	}
	return err
}

// write runs fn in a write transaction and, once it has committed, tells the watchers. The
// write mutex is held throughout, so watchers see changes exactly in commit order; the
// transaction is finished before any callback runs.
func (s *SQLite) write(ctx context.Context, fn func(tx *sql.Tx) (Change, error)) (Change, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Change{}, fmt.Errorf("beginning transaction: %w", err)
	}
	ch, err := fn(tx)
	if err != nil {
		_ = tx.Rollback()
		return Change{}, err
	}
	if err := tx.Commit(); err != nil {
		return Change{}, fmt.Errorf("committing: %w", mapWriteErr(err))
	}
	s.notify(ch)
	return ch, nil
}

func (s *SQLite) notify(ch Change) {
	s.watchMu.Lock()
	fns := make([]func(Change), 0, len(s.watchers))
	ids := make([]uint64, 0, len(s.watchers))
	for id := range s.watchers {
		ids = append(ids, id)
	}
	// Registration order, so a watcher registered first always hears first.
	slices.Sort(ids)
	for _, id := range ids {
		fns = append(fns, s.watchers[id])
	}
	s.watchMu.Unlock()
	for _, fn := range fns {
		fn(ch)
	}
}

func getTx(ctx context.Context, tx *sql.Tx, id string) (entry.Entry, error) {
	e, err := scanEntry(tx.QueryRowContext(ctx, "SELECT "+columns+" FROM entries WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return entry.Entry{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e, err
}

// CreateEntry stores e with a new ID (unless e.ID is set), Revision 1 and the current time.
func (s *SQLite) CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	e, err := prepare(e)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("creating entry: %w", err)
	}
	if e.ID == "" {
		e.ID = newID()
	}
	now := timestamp(s.now())
	e.Revision, e.CreatedAt, e.UpdatedAt = 1, now, now
	r, err := toRow(e)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("creating entry: %w", err)
	}
	_, err = s.write(ctx, func(tx *sql.Tx) (Change, error) {
		_, err := tx.ExecContext(ctx, "INSERT INTO entries ("+columns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			r.id, r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.createdAt, r.updatedAt)
		if err != nil {
			return Change{}, mapWriteErr(err)
		}
		return Change{Op: OpCreate, Entry: e}, nil
	})
	if err != nil {
		return entry.Entry{}, fmt.Errorf("creating entry for %s: %w", e.SPIFFEID, err)
	}
	return cloneEntry(e), nil
}

// UpdateEntry replaces every field of the entry with e.ID but CreatedAt, and bumps Revision.
func (s *SQLite) UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	e, err := prepare(e)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("updating entry %s: %w", e.ID, err)
	}
	ch, err := s.write(ctx, func(tx *sql.Tx) (Change, error) {
		old, err := getTx(ctx, tx, e.ID)
		if err != nil {
			return Change{}, err
		}
		e.Revision = old.Revision + 1
		e.CreatedAt = old.CreatedAt
		e.UpdatedAt = timestamp(s.now())
		r, err := toRow(e)
		if err != nil {
			return Change{}, err
		}
		_, err = tx.ExecContext(ctx, `UPDATE entries SET name = ?, spiffe_id = ?, selectors = ?, x509_svid_ttl_ns = ?,
			dns_names = ?, federates_with = ?, revision = ?, updated_at = ? WHERE id = ?`,
			r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.updatedAt, r.id)
		if err != nil {
			return Change{}, mapWriteErr(err)
		}
		return Change{Op: OpUpdate, Entry: e, Old: old}, nil
	})
	if err != nil {
		return entry.Entry{}, fmt.Errorf("updating entry %s: %w", e.ID, err)
	}
	return cloneEntry(ch.Entry), nil
}

// DeleteEntry removes the entry and returns it as it was.
func (s *SQLite) DeleteEntry(ctx context.Context, id string) (entry.Entry, error) {
	ch, err := s.write(ctx, func(tx *sql.Tx) (Change, error) {
		old, err := getTx(ctx, tx, id)
		if err != nil {
			return Change{}, err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM entries WHERE id = ?", id); err != nil {
			return Change{}, err
		}
		return Change{Op: OpDelete, Entry: old}, nil
	})
	if err != nil {
		return entry.Entry{}, fmt.Errorf("deleting entry %s: %w", id, err)
	}
	return cloneEntry(ch.Entry), nil
}

// GetEntry returns the entry with the given ID, or ErrNotFound.
func (s *SQLite) GetEntry(ctx context.Context, id string) (entry.Entry, error) {
	e, err := scanEntry(s.db.QueryRowContext(ctx, "SELECT "+columns+" FROM entries WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return entry.Entry{}, fmt.Errorf("getting entry: %w: %s", ErrNotFound, id)
	}
	if err != nil {
		return entry.Entry{}, fmt.Errorf("getting entry %s: %w", id, err)
	}
	return e, nil
}

// ListEntries returns the entries matching f, ordered by SPIFFE ID then ID (byte order, the
// same as Go's string comparison).
func (s *SQLite) ListEntries(ctx context.Context, f Filter) ([]entry.Entry, error) {
	var where []string
	var args []any
	if !f.SPIFFEID.IsZero() {
		where = append(where, "spiffe_id = ?")
		args = append(args, f.SPIFFEID.String())
	}
	if f.Name != "" {
		where = append(where, "name = ?")
		args = append(args, f.Name)
	}
	want := entry.Normalize(f.Selectors)
	for _, sel := range want {
		// Narrow in SQL: selectors are stored newline-separated and cannot contain a newline,
		// so "\n" + key + "\n" occurs exactly when the selector is in the set. Matches are
		// re-checked in Go below.
		where = append(where, "instr(char(10) || selectors || char(10), ?) > 0")
		args = append(args, "\n"+sel.String()+"\n")
	}
	q := "SELECT " + columns + " FROM entries"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY spiffe_id, id"
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing entries: %w", err)
	}
	defer rows.Close()
	var out []entry.Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, fmt.Errorf("listing entries: %w", err)
		}
		if hasAll(e.Selectors, want) {
			out = append(out, e)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing entries: %w", err)
	}
	return out, nil
}

func hasAll(have, want []entry.Selector) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func cloneEntry(e entry.Entry) entry.Entry {
	e.Selectors = slices.Clone(e.Selectors)
	e.DNSNames = slices.Clone(e.DNSNames)
	e.FederatesWith = slices.Clone(e.FederatesWith)
	return e
}

// Watch registers fn for every committed write, in commit order. fn runs on the writing
// goroutine while the store's write lock is held: it must return quickly and must not call
// the store. The Change it receives shares no memory with what the writer's caller gets back.
func (s *SQLite) Watch(fn func(Change)) (cancel func()) {
	s.watchMu.Lock()
	id := s.nextWatch
	s.nextWatch++
	s.watchers[id] = fn
	s.watchMu.Unlock()
	return func() {
		s.watchMu.Lock()
		delete(s.watchers, id)
		s.watchMu.Unlock()
	}
}

// Ping checks that the database answers a query.
func (s *SQLite) Ping(ctx context.Context) error {
	var nonEmpty bool
	if err := s.db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM entries)").Scan(&nonEmpty); err != nil {
		return fmt.Errorf("pinging SQLite store: %w", err)
	}
	return nil
}

// Close closes the database. It is idempotent; calls after the first return the first
// result.
func (s *SQLite) Close() error {
	s.closeOnce.Do(func() {
		// Wait for an in-flight write (and its callbacks) to finish.
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("closing SQLite store: %w", err)
		}
	})
	return s.closeErr
}
