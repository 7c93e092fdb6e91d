package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/pkg/store"
)

// Federated bundles live under Prefix + "bundles/" + trust domain name, one key per trust
// domain (never merged), as JSON. They are not part of the entry watch: pkg/fleet follows
// them (SharedBundles: one host fetches each, every host takes the shared copy).

// bundleJSON is a federated bundle as stored in etcd.
type bundleJSON struct {
	TrustDomain string    `json:"trust_domain"`
	Doc         []byte    `json:"doc"`
	Source      string    `json:"source"`
	Sequence    uint64    `json:"sequence"`
	UpdatedAt   time.Time `json:"updated_at"`
}

func (s *Store) bundleKey(td spiffeid.TrustDomain) string { return s.bundles + td.Name() }

// DecodeBundle reads a federated bundle as stored under bundles/ (EncodeBundle); pkg/fleet
// shares fetched bundles there.
func DecodeBundle(value []byte) (store.FederatedBundle, error) {
	var j bundleJSON
	if err := json.Unmarshal(value, &j); err != nil {
		return store.FederatedBundle{}, fmt.Errorf("decoding stored bundle: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(j.TrustDomain)
	if err != nil {
		return store.FederatedBundle{}, fmt.Errorf("decoding stored bundle: %w", err)
	}
	return store.FederatedBundle{TrustDomain: td, Doc: j.Doc, Source: store.BundleSource(j.Source),
		Sequence: j.Sequence, UpdatedAt: j.UpdatedAt}, nil
}

// EncodeBundle is b as stored under bundles/.
func EncodeBundle(b store.FederatedBundle) ([]byte, error) {
	return json.Marshal(bundleJSON{TrustDomain: b.TrustDomain.Name(), Doc: b.Doc, Source: string(b.Source),
		Sequence: b.Sequence, UpdatedAt: b.UpdatedAt})
}

// SetBundle implements store.Store.
func (s *Store) SetBundle(ctx context.Context, b store.FederatedBundle) (store.FederatedBundle, error) {
	if err := store.CheckBundle(b); err != nil {
		return store.FederatedBundle{}, fmt.Errorf("storing bundle: %w", err)
	}
	b.UpdatedAt = store.Timestamp(s.now())
	v, err := EncodeBundle(b)
	if err != nil {
		return store.FederatedBundle{}, err
	}
	// A Put of the same value is idempotent: a try whose answer was lost is simply made again.
	if _, err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.cli.Put(ctx, s.bundleKey(b.TrustDomain), string(v))
		return err
	}); err != nil {
		return store.FederatedBundle{}, writeErr("storing bundle of "+b.TrustDomain.Name(), err)
	}
	return b, nil
}

// GetBundle implements store.Store.
func (s *Store) GetBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	b, _, err := s.getBundle(ctx, td)
	return b, err
}

// getBundle reads one bundle (with retries) and its key's modification revision.
func (s *Store) getBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, int64, error) {
	var resp *clientv3.GetResponse
	_, err := s.retry(ctx, func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, s.bundleKey(td))
		return err
	})
	if err != nil {
		return store.FederatedBundle{}, 0, fmt.Errorf("reading bundle of %s: %w", td.Name(), err)
	}
	if len(resp.Kvs) == 0 {
		return store.FederatedBundle{}, 0, fmt.Errorf("%w: %s", store.ErrBundleNotFound, td.Name())
	}
	b, err := DecodeBundle(resp.Kvs[0].Value)
	return b, resp.Kvs[0].ModRevision, err
}

// ListBundles implements store.Store: by trust domain name (etcd returns keys in order).
func (s *Store) ListBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	resp, err := s.getPrefix(ctx, s.bundles, clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("listing bundles: %w", err)
	}
	out := make([]store.FederatedBundle, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if strings.Contains(strings.TrimPrefix(string(kv.Key), s.bundles), "/") {
			continue // not ours
		}
		b, err := DecodeBundle(kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// DeleteBundle implements store.Store. It deletes the bundle as read (compare-and-swap), so
// that after a try whose answer was lost, finding it gone means that try committed.
func (s *Store) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	what := "deleting bundle of " + td.Name()
	var sent *store.FederatedBundle // what a try whose answer was lost deleted, if it committed
	for {
		old, modRev, err := s.getBundle(ctx, td)
		if sent != nil && errors.Is(err, store.ErrBundleNotFound) {
			return *sent, nil
		}
		if err != nil {
			return store.FederatedBundle{}, err
		}
		k := s.bundleKey(td)
		var resp *clientv3.TxnResponse
		retried, err := s.retry(ctx, func(ctx context.Context) (err error) {
			resp, err = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", modRev)).Then(clientv3.OpDelete(k)).Commit()
			return err
		})
		if retried {
			sent = &old
		}
		if err != nil {
			return store.FederatedBundle{}, writeErr(what, err)
		}
		if resp.Succeeded {
			return old, nil
		}
	}
}
