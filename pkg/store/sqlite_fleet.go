package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"
)

// With store "etcd" a host keeps, beside its copy of the entries, the fleet's JWT keys as it
// last saw them in the registry (pkg/fleet), so that after a restart with etcd unreachable it
// still validates JWT-SVIDs minted on other hosts, and the spiffe_sequence it last served, so
// that the sequence never goes backwards across a restart. These methods are this file's
// alone: they are not part of Store, and SQLite hosts never call them.

// FleetKey is one JWT key record of the registry as stored locally.
type FleetKey struct {
	// Name is the record's name below the registry's hosts/ ("<node>/jwtkeys/<kid>").
	Name string
	// Record is the registry's value, verbatim (pkg/fleet decodes and checks it).
	Record []byte
	// NotAfter is when the key leaves every bundle.
	NotAfter time.Time
}

// FleetState is what a host last served of its own trust domain's bundle.
type FleetState struct {
	// Revision is the registry revision of the last change to the fleet's JWT keys seen.
	Revision int64
	// Sequence is the spiffe_sequence last served; Fingerprint identifies its contents.
	Sequence    uint64
	Fingerprint []byte
}

// FleetKeysUpdate is one change to the stored fleet keys, applied in one transaction.
type FleetKeysUpdate struct {
	// Reset removes every stored key first (a full reload from the registry).
	Reset  bool
	Put    []FleetKey
	Delete []string
	// Revision, when not zero, becomes FleetState.Revision.
	Revision int64
}

// FleetKeys returns the stored fleet keys, by name, and the stored state.
func (s *SQLite) FleetKeys(ctx context.Context) ([]FleetKey, FleetState, error) {
	var st FleetState
	var seq int64
	err := s.db.QueryRowContext(ctx, "SELECT revision, sequence, fingerprint FROM fleet_bundle WHERE id = 1").Scan(&st.Revision, &seq, &st.Fingerprint)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, FleetState{}, fmt.Errorf("reading fleet bundle state: %w", err)
	}
	st.Sequence = uint64(seq)
	rows, err := s.db.QueryContext(ctx, "SELECT name, record, not_after FROM fleet_jwt_keys ORDER BY name")
	if err != nil {
		return nil, FleetState{}, fmt.Errorf("reading fleet JWT keys: %w", err)
	}
	defer rows.Close()
	var out []FleetKey
	for rows.Next() {
		var k FleetKey
		var na int64
		if err := rows.Scan(&k.Name, &k.Record, &na); err != nil {
			return nil, FleetState{}, fmt.Errorf("reading fleet JWT keys: %w", err)
		}
		k.NotAfter = time.Unix(0, na).UTC()
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, FleetState{}, fmt.Errorf("reading fleet JWT keys: %w", err)
	}
	return out, st, nil
}

// UpdateFleetKeys applies u atomically.
func (s *SQLite) UpdateFleetKeys(ctx context.Context, u FleetKeysUpdate) error {
	return s.fleetTx(ctx, "storing fleet JWT keys", func(tx *sql.Tx) error {
		if u.Reset {
			if _, err := tx.ExecContext(ctx, "DELETE FROM fleet_jwt_keys"); err != nil {
				return err
			}
		}
		for _, name := range u.Delete {
			if _, err := tx.ExecContext(ctx, "DELETE FROM fleet_jwt_keys WHERE name = ?", name); err != nil {
				return err
			}
		}
		for _, k := range u.Put {
			if k.Name == "" || len(k.Record) == 0 {
				return fmt.Errorf("fleet JWT key %q has no name or no record", k.Name)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO fleet_jwt_keys (name, record, not_after) VALUES (?, ?, ?)
				ON CONFLICT (name) DO UPDATE SET record = excluded.record, not_after = excluded.not_after`,
				k.Name, slices.Clone(k.Record), k.NotAfter.UnixNano()); err != nil {
				return err
			}
		}
		if u.Revision != 0 {
			_, err := tx.ExecContext(ctx, `INSERT INTO fleet_bundle (id, revision) VALUES (1, ?)
				ON CONFLICT (id) DO UPDATE SET revision = excluded.revision`, u.Revision)
			return err
		}
		return nil
	})
}

// SetFleetSequence records the spiffe_sequence served and its contents' fingerprint.
func (s *SQLite) SetFleetSequence(ctx context.Context, seq uint64, fingerprint []byte) error {
	if seq > 1<<63-1 {
		return fmt.Errorf("storing fleet bundle sequence: %d does not fit the store", seq)
	}
	return s.fleetTx(ctx, "storing fleet bundle sequence", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO fleet_bundle (id, sequence, fingerprint) VALUES (1, ?, ?)
			ON CONFLICT (id) DO UPDATE SET sequence = excluded.sequence, fingerprint = excluded.fingerprint`,
			int64(seq), slices.Clone(fingerprint))
		return err
	})
}

func (s *SQLite) fleetTx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: committing: %w", what, err)
	}
	return nil
}
