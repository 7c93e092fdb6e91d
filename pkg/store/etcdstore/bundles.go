package etcdstore

import (
	"context"
	"encoding/json"
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
	if _, err := s.cli.Put(ctx, s.bundleKey(b.TrustDomain), string(v)); err != nil {
		return store.FederatedBundle{}, fmt.Errorf("storing bundle of %s: %w", b.TrustDomain.Name(), err)
	}
	return b, nil
}

// GetBundle implements store.Store.
func (s *Store) GetBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	resp, err := s.cli.Get(ctx, s.bundleKey(td))
	if err != nil {
		return store.FederatedBundle{}, fmt.Errorf("reading bundle of %s: %w", td.Name(), err)
	}
	if len(resp.Kvs) == 0 {
		return store.FederatedBundle{}, fmt.Errorf("%w: %s", store.ErrBundleNotFound, td.Name())
	}
	return DecodeBundle(resp.Kvs[0].Value)
}

// ListBundles implements store.Store: by trust domain name (etcd returns keys in order).
func (s *Store) ListBundles(ctx context.Context) ([]store.FederatedBundle, error) {
	resp, err := s.cli.Get(ctx, s.bundles, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
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

// DeleteBundle implements store.Store.
func (s *Store) DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error) {
	resp, err := s.cli.Delete(ctx, s.bundleKey(td), clientv3.WithPrevKV())
	if err != nil {
		return store.FederatedBundle{}, fmt.Errorf("deleting bundle of %s: %w", td.Name(), err)
	}
	if len(resp.PrevKvs) == 0 {
		return store.FederatedBundle{}, fmt.Errorf("%w: %s", store.ErrBundleNotFound, td.Name())
	}
	return DecodeBundle(resp.PrevKvs[0].Value)
}
