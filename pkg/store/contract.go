package store

import (
	"errors"
	"time"

	"github.com/svidd/svidd/pkg/entry"
)

// The rules every Store implementation applies the same way, exported for the stores outside
// this package (etcdstore) so that no store disagrees with SQLite about what an entry is.

// ErrUnavailable is returned by a write the store cannot take now (a shared registry that is
// unreachable); nothing was written and the caller may retry later. The admin API answers
// 503 with the error's text, which says why.
var ErrUnavailable = errors.New("store unavailable for writes")

// ErrReadOnly is returned by a write the shared registry refused because this host's
// credentials may only read it (etcd's authentication: the host's etcd user has no write
// permission there). Nothing was written and retrying will not help: the operator registers
// on a registrar host instead. The admin API answers 403 with the error's text.
var ErrReadOnly = errors.New("this host's etcd user may not write the registry (its credentials are read-only); register on a registrar host")

// Prepare normalizes e for storing and refuses what no store may hold (no SPIFFE ID, no
// selectors, a malformed selector). Errors wrap entry.ErrInvalid.
func Prepare(e entry.Entry) (entry.Entry, error) { return prepare(e) }

// NewID returns a new random entry ID (UUID version 4 form).
func NewID() string { return newID() }

// Timestamp truncates t to what stores keep (Unix nanoseconds, UTC).
func Timestamp(t time.Time) time.Time { return timestamp(t) }

// Clone returns a copy of e that shares no memory with it.
func Clone(e entry.Entry) entry.Entry { return cloneEntry(e) }

// Matches reports whether e passes the filter (see Filter).
func (f Filter) Matches(e entry.Entry) bool {
	if !f.SPIFFEID.IsZero() && e.SPIFFEID != f.SPIFFEID {
		return false
	}
	if f.Name != "" && e.Name != f.Name {
		return false
	}
	return hasAll(e.Selectors, entry.Normalize(f.Selectors))
}

// CheckBundle is the check SetBundle applies to a federated bundle before storing it (a trust
// domain, a document that fits), for other implementations of Store.
func CheckBundle(b FederatedBundle) error { return checkBundle(b) }
