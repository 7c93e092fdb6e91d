package fleet

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/go-jose/go-jose/v4"

	"github.com/svidd/svidd/pkg/workload"
)

// seqShift places the registry revision above the bits a host counts on its own.
const seqShift = 16

// NextSequence is the spiffe_sequence of the bundle a host serves, given the one it served
// last (prev, whose contents had fingerprint prevFP), the new contents' fingerprint fp, and
// rev, the registry revision of the last change to the fleet's JWT keys the host has seen:
//
//	unchanged (fp == prevFP) and rev<<16 <= prev: prev
//	otherwise:                                   max(prev+1, rev<<16)
//
// Why: every host follows the same registry history, so once caught up every host holds the
// same rev, and rev<<16 is the same number everywhere: a bundle endpoint behind a load
// balancer does not flap. A change the registry does not see (the CA rotated while etcd was
// unreachable, a key dropped locally at its expiry before its lease ended, an X.509 change)
// still moves the sequence, by one, in the low 16 bits; the next registry change (rev grows
// by at least one) lifts every host to the same value again, above anything counted locally
// meanwhile (as long as fewer than 65,536 local changes happen between two registry
// changes: a CA rotates a few times per CA TTL). prev is persisted with the bundle, so the
// sequence never goes backwards, across restarts too; a restart that finds the same contents
// keeps the same value. rev<<16 stays below 2^53 (exact in JSON readers that use doubles)
// until the registry passes 2^37 revisions.
func NextSequence(prev uint64, prevFP, fp []byte, rev int64) uint64 {
	base := uint64(max(rev, 0)) << seqShift
	if bytes.Equal(prevFP, fp) && base <= prev {
		return prev
	}
	return max(prev+1, base)
}

// SequenceStore persists the sequence served; *store.SQLite satisfies it.
type SequenceStore interface {
	SetFleetSequence(ctx context.Context, seq uint64, fingerprint []byte) error
}

// Bundler assembles the trust domain's bundle a host serves: its CA's bundle (X.509
// authorities and its own JWT keys) plus every other host's JWT keys, numbered by
// NextSequence. Safe for concurrent use.
type Bundler struct {
	st SequenceStore

	mu   sync.Mutex
	seq  uint64
	fp   []byte
	last *workload.Bundle
}

// NewBundler starts from the sequence and fingerprint last served (persisted in st).
func NewBundler(st SequenceStore, seq uint64, fp []byte) *Bundler {
	return &Bundler{st: st, seq: seq, fp: fp}
}

// Bundle returns the bundle for own (the CA's bundle) with others' keys added, and whether
// it differs from the last one returned. The sequence is persisted before the bundle is
// returned; if that fails the error is returned with the bundle, which is still the one to
// serve.
func (b *Bundler) Bundle(ctx context.Context, own *workload.Bundle, others []Key, rev int64) (*workload.Bundle, bool, error) {
	keys := maps.Clone(own.JWTAuthorities)
	if keys == nil {
		keys = map[string]crypto.PublicKey{}
	}
	for _, k := range others {
		if _, dup := keys[k.KID]; !dup { // a kid names one key across the fleet
			keys[k.KID] = k.Public
		}
	}
	fp, err := fingerprint(own, keys)
	if err != nil {
		return nil, false, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// The first call after a start counts from the CA's own sequence too, so that a host
	// moving from store "sqlite" to "etcd" never serves a lower one.
	prev := b.seq
	if b.last == nil {
		prev = max(prev, own.Sequence)
	}
	seq := NextSequence(prev, b.fp, fp, rev)
	if b.last != nil && seq == b.seq {
		return b.last, false, nil
	}
	out, err := assemble(own, keys, seq)
	if err != nil {
		return nil, false, err
	}
	var serr error
	if seq != b.seq || !bytes.Equal(fp, b.fp) {
		serr = b.st.SetFleetSequence(ctx, seq, fp)
	}
	b.seq, b.fp, b.last = seq, fp, out
	return out, true, serr
}

// fingerprint identifies a bundle's contents: its X.509 authorities and JWT keys.
func fingerprint(own *workload.Bundle, keys map[string]crypto.PublicKey) ([]byte, error) {
	h := sha256.New()
	for _, c := range own.X509Authorities {
		fmt.Fprintf(h, "x509 %d\n", len(c.Raw))
		h.Write(c.Raw)
	}
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		der, err := x509.MarshalPKIXPublicKey(keys[kid])
		if err != nil {
			return nil, fmt.Errorf("JWT key %s: %w", kid, err)
		}
		fmt.Fprintf(h, "jwt %q %d\n", kid, len(der))
		h.Write(der)
	}
	return h.Sum(nil), nil
}

// assemble is own with keys as its JWT authorities and seq as its sequence; JWKS is the
// SPIFFE bundle document of the JWT keys, as the CA writes it (keys by kid, use "jwt-svid",
// spiffe_sequence, and the CA's spiffe_refresh_hint).
func assemble(own *workload.Bundle, keys map[string]crypto.PublicKey, seq uint64) (*workload.Bundle, error) {
	var hint struct {
		RefreshHint *int64 `json:"spiffe_refresh_hint,omitempty"`
	}
	if len(own.JWKS) > 0 {
		if err := json.Unmarshal(own.JWKS, &hint); err != nil {
			return nil, fmt.Errorf("reading the CA's JWT bundle: %w", err)
		}
	}
	doc := struct {
		Keys        []jose.JSONWebKey `json:"keys"`
		Sequence    uint64            `json:"spiffe_sequence"`
		RefreshHint *int64            `json:"spiffe_refresh_hint,omitempty"`
	}{Keys: make([]jose.JSONWebKey, 0, len(keys)), Sequence: seq, RefreshHint: hint.RefreshHint}
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		doc.Keys = append(doc.Keys, jose.JSONWebKey{Key: keys[kid], KeyID: kid, Use: "jwt-svid"})
	}
	jwks, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encoding the fleet's JWT bundle: %w", err)
	}
	out := *own
	out.JWTAuthorities = keys
	out.JWKS = jwks
	out.Sequence = seq
	return &out, nil
}
