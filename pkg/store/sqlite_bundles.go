package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Federated bundles live in their own table, one row per trust domain (the primary key), so
// two trust domains' keys can never end up in one bundle.

const bundleColumns = "trust_domain, doc, source, sequence, updated_at"

func scanBundle(sc scanner) (FederatedBundle, error) {
	var (
		td, source string
		doc        []byte
		seq, upd   int64
	)
	if err := sc.Scan(&td, &doc, &source, &seq, &upd); err != nil {
		return FederatedBundle{}, err
	}
	t, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return FederatedBundle{}, fmt.Errorf("stored bundle trust domain %q: %w", td, err)
	}
	return FederatedBundle{
		TrustDomain: t,
		Doc:         doc,
		Source:      BundleSource(source),
		Sequence:    uint64(seq),
		UpdatedAt:   time.Unix(0, upd).UTC(),
	}, nil
}

func checkBundle(b FederatedBundle) error {
	switch {
	case b.TrustDomain.IsZero():
		return errors.New("bundle has no trust domain")
	case len(b.Doc) == 0:
		return fmt.Errorf("bundle of %s is empty", b.TrustDomain.Name())
	case b.Source != BundleFromEndpoint && b.Source != BundleFromFile && b.Source != BundleManual:
		return fmt.Errorf("bundle of %s has unknown source %q", b.TrustDomain.Name(), b.Source)
	case b.Sequence > 1<<63-1:
		return fmt.Errorf("bundle of %s: sequence %d does not fit the store", b.TrustDomain.Name(), b.Sequence)
	}
	return nil
}

// SetBundle inserts or replaces the bundle of b.TrustDomain.
func (s *SQLite) SetBundle(ctx context.Context, b FederatedBundle) (FederatedBundle, error) {
	if err := checkBundle(b); err != nil {
		return FederatedBundle{}, fmt.Errorf("storing bundle: %w", err)
	}
	b.Doc = slices.Clone(b.Doc)
	b.UpdatedAt = timestamp(s.now())
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	_, err := s.db.ExecContext(ctx, `INSERT INTO bundles (`+bundleColumns+`) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (trust_domain) DO UPDATE SET doc = excluded.doc, source = excluded.source,
		sequence = excluded.sequence, updated_at = excluded.updated_at`,
		b.TrustDomain.Name(), b.Doc, string(b.Source), int64(b.Sequence), b.UpdatedAt.UnixNano())
	if err != nil {
		return FederatedBundle{}, fmt.Errorf("storing bundle of %s: %w", b.TrustDomain.Name(), err)
	}
	return cloneBundle(b), nil
}

// GetBundle returns the bundle of td, or ErrBundleNotFound.
func (s *SQLite) GetBundle(ctx context.Context, td spiffeid.TrustDomain) (FederatedBundle, error) {
	b, err := scanBundle(s.db.QueryRowContext(ctx, "SELECT "+bundleColumns+" FROM bundles WHERE trust_domain = ?", td.Name()))
	if errors.Is(err, sql.ErrNoRows) {
		return FederatedBundle{}, fmt.Errorf("%w: %s", ErrBundleNotFound, td.Name())
	}
	if err != nil {
		return FederatedBundle{}, fmt.Errorf("getting bundle of %s: %w", td.Name(), err)
	}
	return b, nil
}

// ListBundles returns every federated bundle, ordered by trust domain name.
func (s *SQLite) ListBundles(ctx context.Context) ([]FederatedBundle, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+bundleColumns+" FROM bundles ORDER BY trust_domain")
	if err != nil {
		return nil, fmt.Errorf("listing bundles: %w", err)
	}
	defer rows.Close()
	var out []FederatedBundle
	for rows.Next() {
		b, err := scanBundle(rows)
		if err != nil {
			return nil, fmt.Errorf("listing bundles: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing bundles: %w", err)
	}
	return out, nil
}

// DeleteBundle removes the bundle of td and returns it as it was.
func (s *SQLite) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (FederatedBundle, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return FederatedBundle{}, fmt.Errorf("deleting bundle of %s: %w", td.Name(), err)
	}
	defer tx.Rollback()
	b, err := scanBundle(tx.QueryRowContext(ctx, "SELECT "+bundleColumns+" FROM bundles WHERE trust_domain = ?", td.Name()))
	if errors.Is(err, sql.ErrNoRows) {
		return FederatedBundle{}, fmt.Errorf("%w: %s", ErrBundleNotFound, td.Name())
	}
	if err != nil {
		return FederatedBundle{}, fmt.Errorf("deleting bundle of %s: %w", td.Name(), err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM bundles WHERE trust_domain = ?", td.Name()); err != nil {
		return FederatedBundle{}, fmt.Errorf("deleting bundle of %s: %w", td.Name(), err)
	}
	if err := tx.Commit(); err != nil {
		return FederatedBundle{}, fmt.Errorf("deleting bundle of %s: committing: %w", td.Name(), err)
	}
	return b, nil
}

func cloneBundle(b FederatedBundle) FederatedBundle {
	b.Doc = slices.Clone(b.Doc)
	return b
}
