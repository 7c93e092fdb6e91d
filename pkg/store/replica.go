package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/svidd/svidd/pkg/entry"
)

// The writes of a local copy of a shared registry (pkg/store/mirror): entries arrive already
// stored elsewhere, with their ID, Revision and timestamps, and are kept as they are.

// ErrOwnEntry is Put refusing a registry entry because one of this host's own entries (one
// with a Name: the config file's) has the same (SPIFFE ID, selector set), or the same ID. The
// host's own entry wins; nothing was written.
var ErrOwnEntry = errors.New("one of this host's own (config file) entries has the same SPIFFE ID and selectors")

// Put stores e exactly as given, replacing the entry with its ID. The registry is the
// authority: a local entry with the same (SPIFFE ID, selector set) under another ID is stale
// (its deletion has not arrived yet) and is removed, unless it is one of the host's own
// (Name set) and e is not: then Put returns ErrOwnEntry and writes nothing. Watchers hear
// every change made.
func (s *SQLite) Put(ctx context.Context, e entry.Entry) error {
	return s.Apply(ctx, []entry.Entry{e}, nil)
}

// Remove deletes the entry with id if it is there (a copy may never have had it).
func (s *SQLite) Remove(ctx context.Context, id string) error {
	return s.Apply(ctx, nil, []string{id})
}

// Apply removes every entry of removes (if there), then stores every entry of puts as Put
// does, in one transaction: a full sync of thousands of entries commits (and syncs the disk)
// once, not once per entry. Watchers hear every change made, after the commit; on an error
// (ErrOwnEntry for any entry of puts included) nothing is applied.
func (s *SQLite) Apply(ctx context.Context, puts []entry.Entry, removes []string) error {
	prepared, rows := make([]entry.Entry, len(puts)), make([]row, len(puts))
	for i, e := range puts {
		p, err := prepare(e)
		if err == nil {
			prepared[i] = p
			rows[i], err = toRow(p)
		}
		if err != nil {
			return fmt.Errorf("copying entry %s: %w", e.ID, err)
		}
	}
	return s.writeMany(ctx, func(tx *sql.Tx) ([]Change, error) {
		// Sized up front: a full sync's thousands of Changes (two entries each) were
		// copied over and over by append.
		changes := make([]Change, 0, len(removes)+len(puts))
		st := &stmts{tx: tx, m: map[string]*sql.Stmt{}}
		for _, id := range removes {
			ch, err := removeTx(ctx, st, id)
			if err != nil {
				return nil, err
			}
			changes = append(changes, ch...)
		}
		// Into an empty table (a host's first copy of the registry) nothing can be replaced
		// and no duplicate can be stale but one from this batch: such a put is a plain insert,
		// without putTx's query (a fifth of a 10,000-entry first sync's CPU). Only a second
		// put of an ID or (SPIFFE ID, selectors) of the batch goes through putTx.
		var fresh bool
		var seenID, seenKey map[string]bool
		if len(prepared) > 1 {
			var one int
			err := tx.QueryRowContext(ctx, "SELECT 1 FROM entries LIMIT 1").Scan(&one)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return nil, err
			}
			fresh = errors.Is(err, sql.ErrNoRows)
			seenID, seenKey = make(map[string]bool, len(prepared)), make(map[string]bool, len(prepared))
		}
		for i, e := range prepared {
			r := rows[i]
			key := r.spiffeID + "\n" + r.selectors
			if fresh && !seenID[r.id] && !seenKey[key] {
				seenID[r.id], seenKey[key] = true, true
				err := st.exec(ctx, insertEntry, r.id, r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.createdAt, r.updatedAt)
				if err != nil {
					return nil, mapWriteErr(err)
				}
				changes = append(changes, Change{Op: OpCreate, Entry: e})
				continue
			}
			if fresh {
				seenID[r.id], seenKey[key] = true, true
			}
			ch, err := putTx(ctx, st, e, r)
			if err != nil {
				return nil, err
			}
			changes = append(changes, ch...)
		}
		return changes, nil
	})
}

// stmts prepares each statement once per transaction: Apply runs the same few for each of
// thousands of entries, and parsing them again every time was a third of a full sync's CPU.
// The transaction's end closes them.
type stmts struct {
	tx *sql.Tx
	m  map[string]*sql.Stmt
}

func (s *stmts) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := s.m[q]; ok {
		return st, nil
	}
	st, err := s.tx.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	s.m[q] = st
	return st, nil
}

func (s *stmts) scan(ctx context.Context, q string, args ...any) (entry.Entry, error) {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return entry.Entry{}, err
	}
	return scanEntry(st.QueryRowContext(ctx, args...))
}

func (s *stmts) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

func (s *stmts) exec(ctx context.Context, q string, args ...any) error {
	st, err := s.stmt(ctx, q)
	if err == nil {
		_, err = st.ExecContext(ctx, args...)
	}
	return err
}

const (
	selectSame  = "SELECT " + columns + " FROM entries WHERE id = ? OR (spiffe_id = ? AND selectors = ?)"
	selectByID  = "SELECT " + columns + " FROM entries WHERE id = ?"
	deleteByID  = "DELETE FROM entries WHERE id = ?"
	insertEntry = "INSERT INTO entries (" + columns + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
	updateEntry = `UPDATE entries SET name = ?, spiffe_id = ?, selectors = ?, x509_svid_ttl_ns = ?,
		dns_names = ?, federates_with = ?, revision = ?, created_at = ?, updated_at = ? WHERE id = ?`
)

func putTx(ctx context.Context, st *stmts, e entry.Entry, r row) ([]Change, error) {
	// One query finds both what e replaces (its ID) and a stale duplicate (its SPIFFE ID and
	// selectors under another ID): a full sync runs this for every entry.
	q, err := st.query(ctx, selectSame, r.id, r.spiffeID, r.selectors)
	if err != nil {
		return nil, err
	}
	var old, stale *entry.Entry
	for q.Next() {
		found, err := scanEntry(q)
		if err != nil {
			q.Close()
			return nil, err
		}
		if found.ID == e.ID {
			old = &found
		} else {
			stale = &found
		}
	}
	if err := errors.Join(q.Err(), q.Close()); err != nil {
		return nil, err
	}
	switch {
	case stale != nil && stale.Name != "" && e.Name == "":
		return nil, fmt.Errorf("copying entry %s: %w (entry %s, %q)", e.ID, ErrOwnEntry, stale.ID, stale.Name)
	case old != nil && old.Name != "" && e.Name == "":
		return nil, fmt.Errorf("copying entry %s: %w (the same ID, %q)", e.ID, ErrOwnEntry, old.Name)
	}
	var changes []Change
	if stale != nil {
		if err := st.exec(ctx, deleteByID, stale.ID); err != nil {
			return nil, err
		}
		changes = append(changes, Change{Op: OpDelete, Entry: *stale})
	}
	if old != nil {
		err = st.exec(ctx, updateEntry, r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.createdAt, r.updatedAt, r.id)
		changes = append(changes, Change{Op: OpUpdate, Entry: e, Old: *old})
	} else {
		err = st.exec(ctx, insertEntry, r.id, r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.createdAt, r.updatedAt)
		changes = append(changes, Change{Op: OpCreate, Entry: e})
	}
	if err != nil {
		return nil, mapWriteErr(err)
	}
	return changes, nil
}

func removeTx(ctx context.Context, st *stmts, id string) ([]Change, error) {
	old, err := st.scan(ctx, selectByID, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := st.exec(ctx, deleteByID, id); err != nil {
		return nil, err
	}
	return []Change{{Op: OpDelete, Entry: old}}, nil
}

// writeMany is write for a transaction that makes any number of changes (none included).
func (s *SQLite) writeMany(ctx context.Context, fn func(tx *sql.Tx) ([]Change, error)) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	changes, err := fn(tx)
	if err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", mapWriteErr(err))
	}
	for _, ch := range changes {
		s.notify(ch)
	}
	return nil
}
