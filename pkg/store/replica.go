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
	e, err := prepare(e)
	if err != nil {
		return fmt.Errorf("copying entry %s: %w", e.ID, err)
	}
	r, err := toRow(e)
	if err != nil {
		return fmt.Errorf("copying entry %s: %w", e.ID, err)
	}
	return s.writeMany(ctx, func(tx *sql.Tx) ([]Change, error) {
		var changes []Change
		stale, err := scanEntry(tx.QueryRowContext(ctx, "SELECT "+columns+" FROM entries WHERE spiffe_id = ? AND selectors = ? AND id != ?", r.spiffeID, r.selectors, r.id))
		switch {
		case err == nil && stale.Name != "" && e.Name == "":
			return nil, fmt.Errorf("copying entry %s: %w (entry %s, %q)", e.ID, ErrOwnEntry, stale.ID, stale.Name)
		case err == nil:
			if _, err := tx.ExecContext(ctx, "DELETE FROM entries WHERE id = ?", stale.ID); err != nil {
				return nil, err
			}
			changes = append(changes, Change{Op: OpDelete, Entry: stale})
		case !errors.Is(err, sql.ErrNoRows):
			return nil, err
		}
		old, err := getTx(ctx, tx, e.ID)
		switch {
		case err == nil && old.Name != "" && e.Name == "":
			return nil, fmt.Errorf("copying entry %s: %w (the same ID, %q)", e.ID, ErrOwnEntry, old.Name)
		case err == nil:
			_, err = tx.ExecContext(ctx, `UPDATE entries SET name = ?, spiffe_id = ?, selectors = ?, x509_svid_ttl_ns = ?,
				dns_names = ?, federates_with = ?, revision = ?, created_at = ?, updated_at = ? WHERE id = ?`,
				r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.createdAt, r.updatedAt, r.id)
			changes = append(changes, Change{Op: OpUpdate, Entry: e, Old: old})
		case errors.Is(err, ErrNotFound):
			_, err = tx.ExecContext(ctx, "INSERT INTO entries ("+columns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
				r.id, r.name, r.spiffeID, r.selectors, r.ttl, r.dnsNames, r.federatesWith, r.revision, r.createdAt, r.updatedAt)
			changes = append(changes, Change{Op: OpCreate, Entry: e})
		}
		if err != nil {
			return nil, mapWriteErr(err)
		}
		return changes, nil
	})
}

// Remove deletes the entry with id if it is there (a copy may never have had it).
func (s *SQLite) Remove(ctx context.Context, id string) error {
	return s.writeMany(ctx, func(tx *sql.Tx) ([]Change, error) {
		old, err := getTx(ctx, tx, id)
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM entries WHERE id = ?", id); err != nil {
			return nil, err
		}
		return []Change{{Op: OpDelete, Entry: old}}, nil
	})
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
