// Package store persists registration entries. SQLite (embedded, the default) lives in the
// data dir; every write is durable when the call returns, so a write acknowledged to svidctl
// survives kill -9 of svidd.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
)

// Errors callers branch on. The admin API maps ErrNotFound to NotFound and ErrAlreadyExists to
// AlreadyExists; anything else from a Store is an internal error (disk full, read-only, ...).
var (
	ErrNotFound      = errors.New("entry not found")
	ErrAlreadyExists = errors.New("an entry with the same SPIFFE ID and selectors already exists")
	// ErrBundleNotFound: no federated bundle for that trust domain. The admin API maps it to
	// NotFound.
	ErrBundleNotFound = errors.New("no federated bundle for that trust domain")
)

// Op says what happened to an entry.
type Op int

const (
	OpCreate Op = iota + 1
	OpUpdate
	OpDelete
)

func (o Op) String() string {
	switch o {
	case OpCreate:
		return "create"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	}
	return "unknown"
}

// Change is one committed write, delivered to Watch callbacks after the commit. For OpDelete,
// Entry is the entry as it was before deletion; for OpUpdate, Old is the previous version.
type Change struct {
	Op    Op
	Entry entry.Entry
	Old   entry.Entry
}

// Filter narrows ListEntries; zero fields match everything. Selectors match entries whose
// selector set contains all of them.
type Filter struct {
	SPIFFEID  spiffeid.ID
	Selectors []entry.Selector
	Name      string
}

// Store is safe for concurrent use. Entries passed in are validated by the caller against the
// trust domain; the store normalizes selectors, assigns ID, Revision and timestamps, and
// enforces uniqueness of (SPIFFE ID, selector set). Returned entries are the caller's to keep.
type Store interface {
	CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error)
	// UpdateEntry replaces the entry with e.ID (all fields but ID and CreatedAt).
	UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error)
	DeleteEntry(ctx context.Context, id string) (entry.Entry, error)
	GetEntry(ctx context.Context, id string) (entry.Entry, error)
	// ListEntries returns matching entries ordered by SPIFFE ID, then ID.
	ListEntries(ctx context.Context, f Filter) ([]entry.Entry, error)
	// Watch registers fn to be called, in commit order, after each committed write made
	// through this Store. fn must not block or call back into the Store. The returned func
	// unregisters it.
	Watch(fn func(Change)) (cancel func())

	// SetBundle stores b, replacing any bundle of the same trust domain, and returns it with
	// UpdatedAt set. Bundles of different trust domains are separate rows: never merged.
	SetBundle(ctx context.Context, b FederatedBundle) (FederatedBundle, error)
	// GetBundle returns the bundle of td, or ErrBundleNotFound.
	GetBundle(ctx context.Context, td spiffeid.TrustDomain) (FederatedBundle, error)
	// ListBundles returns every federated bundle, by trust domain name.
	ListBundles(ctx context.Context) ([]FederatedBundle, error)
	// DeleteBundle removes the bundle of td and returns it as it was, or ErrBundleNotFound.
	DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (FederatedBundle, error)

	// Ping checks the store is usable (for readiness).
	Ping(ctx context.Context) error
	Close() error
}

// BundleSource says where a federated bundle came from, which decides what removes it: a
// bundle from a federation relationship (endpoint, file) goes when the relationship is
// dropped from the config; one set by hand stays until deleted by hand.
type BundleSource string

const (
	// BundleFromEndpoint was fetched from a federates_with block's bundle endpoint.
	BundleFromEndpoint BundleSource = "endpoint"
	// BundleFromFile was read from a federates_with block's bundle_file (a bootstrap bundle).
	BundleFromFile BundleSource = "file"
	// BundleManual was set with svidctl bundle set (the admin API).
	BundleManual BundleSource = "manual"
)

// FederatedBundle is a foreign trust domain's bundle as svidd keeps it: the SPIFFE bundle
// document (a JWK Set, SPIFFE Trust Domain and Bundle §4) exactly as received or set, so that
// what is served after a restart is what was validated before it.
type FederatedBundle struct {
	TrustDomain spiffeid.TrustDomain
	Doc         []byte
	Source      BundleSource
	// Sequence is the document's spiffe_sequence (0 when it has none).
	Sequence  uint64
	UpdatedAt time.Time
}
