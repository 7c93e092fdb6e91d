package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/etcdstore"
)

// DefaultFetcherTTL is the lease of a federation fetcher's election: when the fetcher dies,
// another host takes over within it.
const DefaultFetcherTTL = 10 * time.Second

// SharedBundlesConfig configures NewSharedBundles.
type SharedBundlesConfig struct {
	Client *clientv3.Client
	// Prefix is the registry's prefix, ending in "/"; Node this host's name.
	Prefix, Node string
	// OnBundle receives every bundle published under Prefix + "bundles/", the first time
	// each is seen and at every change, on Run's goroutine, with its source (fetched, or
	// set by an operator).
	OnBundle func(td spiffeid.TrustDomain, doc []byte, src store.BundleSource)
	// OnRemoved, when set, is told, on Run's goroutine, that td's shared bundle was deleted
	// (svidctl bundle delete on any host).
	OnRemoved func(td spiffeid.TrustDomain)
	// FetcherTTL is the lease of the election (default DefaultFetcherTTL, whole seconds).
	FetcherTTL time.Duration
	// Reachable says whether the registry is reachable and since when (the host's registry
	// mirror's Status). Once it has been unreachable for longer than FetcherTTL the host is
	// Alone: it fetches for itself. Nil: never alone.
	Reachable func() (bool, time.Time)
	Logger    *slog.Logger
}

// SharedBundles lets the hosts of a fleet fetch each federated trust domain's bundle once
// (federation.Sharing): one fetcher per trust domain, elected under Prefix +
// "locks/federation/<td>" with a lease, writes what it fetched to Prefix + "bundles/<td>"
// (never over a higher spiffe_sequence), and every host takes the shared copy (OnBundle).
// When the fetcher dies its lease ends and another host is elected.
type SharedBundles struct {
	cfg     SharedBundlesConfig
	log     *slog.Logger
	bundles string // Prefix + "bundles/"

	mu      sync.Mutex
	session *concurrency.Session
	// denied is set once etcd refused this host a fetcher's rights (no svidd-federation
	// role): it then fetches for itself, as without a fleet.
	denied bool

	// seen is the trust domains under bundles/ as last delivered (Run's goroutine only): a
	// reload after a compaction tells which were deleted meanwhile.
	seen map[string]bool
}

// NewSharedBundles checks cfg. Run follows the shared bundles.
func NewSharedBundles(cfg SharedBundlesConfig) (*SharedBundles, error) {
	var unused time.Duration
	if err := checkPlace("fleet federation", cfg.Client, cfg.Prefix, cfg.Node, &unused); err != nil {
		return nil, err
	}
	if cfg.OnBundle == nil {
		return nil, errors.New("fleet federation: OnBundle is required")
	}
	if cfg.FetcherTTL < time.Second {
		cfg.FetcherTTL = DefaultFetcherTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &SharedBundles{cfg: cfg, log: cfg.Logger, bundles: cfg.Prefix + "bundles/", seen: map[string]bool{}}, nil
}

// Run follows the shared bundles until ctx ends, then gives up any fetcher role. It returns
// nil on a clean stop.
func (s *SharedBundles) Run(ctx context.Context) error {
	Follow(ctx, s.cfg.Client, s.bundles, (*sharedHandler)(s), s.log)
	s.mu.Lock()
	sess := s.session
	s.session = nil
	s.mu.Unlock()
	if sess != nil {
		sess.Close() // revokes the lease: another host is elected at once
	}
	return nil
}

// sharedHandler is SharedBundles' Follow handler.
type sharedHandler SharedBundles

func (h *sharedHandler) take(kv *mvccpb.KeyValue) {
	s := (*SharedBundles)(h)
	name := string(kv.Key[len(s.bundles):])
	if strings.Contains(name, "/") {
		return
	}
	s.seen[name] = true
	b, err := etcdstore.DecodeBundle(kv.Value)
	if err != nil || b.TrustDomain.Name() != name {
		s.log.Error("skipping an unreadable shared bundle in the registry", "key", string(kv.Key), "error", err)
		return
	}
	s.cfg.OnBundle(b.TrustDomain, b.Doc, b.Source)
}

func (h *sharedHandler) removed(name string) {
	s := (*SharedBundles)(h)
	if !s.seen[name] {
		return
	}
	delete(s.seen, name)
	td, err := spiffeid.TrustDomainFromString(name)
	if err == nil && s.cfg.OnRemoved != nil {
		s.cfg.OnRemoved(td)
	}
}

func (h *sharedHandler) Reset(kvs []*mvccpb.KeyValue, _ int64) {
	was := h.seen
	h.seen = make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		h.take(kv)
	}
	for name := range was {
		if !h.seen[name] {
			h.seen[name] = true
			h.removed(name)
		}
	}
}

func (h *sharedHandler) Apply(evs []*clientv3.Event, _ int64) {
	for _, ev := range evs {
		switch ev.Type {
		case mvccpb.PUT:
			h.take(ev.Kv)
		case mvccpb.DELETE:
			h.removed(string(ev.Kv.Key[len(h.bundles):]))
		}
	}
}

func (h *sharedHandler) Unreachable(error) {}

// sessionFor returns the host's election session, a new one if the last one's lease ended.
func (s *SharedBundles) sessionFor(ctx context.Context) (*concurrency.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.session != nil {
		select {
		case <-s.session.Done():
			s.session = nil
		default:
			return s.session, nil
		}
	}
	ttl := int((s.cfg.FetcherTTL + time.Second - 1) / time.Second)
	// The lease is granted within ctx (etcd may be down: Lead and Run's shutdown must not
	// wait for it); the session, shared by every trust domain's Lead, outlives this call.
	lease, err := s.cfg.Client.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, fmt.Errorf("starting the federation fetcher's session: %w", err)
	}
	sess, err := concurrency.NewSession(s.cfg.Client, concurrency.WithTTL(ttl), concurrency.WithLease(lease.ID),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("starting the federation fetcher's session: %w", err)
	}
	s.session = sess
	return sess, nil
}

// Lead implements federation.Sharing. A host whose etcd user may not write under locks/
// (no svidd-federation role) is told to lead at once: it fetches for itself.
func (s *SharedBundles) Lead(ctx context.Context, td spiffeid.TrustDomain) (context.Context, func(), error) {
	sess, err := s.sessionFor(ctx)
	if err != nil {
		return nil, nil, err
	}
	e := concurrency.NewElection(sess, s.cfg.Prefix+"locks/federation/"+td.Name())
	// A session whose lease ends while waiting can never win: stop waiting then.
	cctx, ccancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
		case <-cctx.Done():
		}
		ccancel()
	}()
	err = e.Campaign(cctx, s.cfg.Node)
	ccancel()
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		s.mu.Lock()
		first := !s.denied
		s.denied = true
		s.mu.Unlock()
		if first {
			s.log.Warn("federation: this host's etcd user may not write locks/ and bundles/ (role svidd-federation); it fetches federated bundles for itself and does not share them",
				"trust_domain", td.Name())
		}
		return ctx, func() {}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("electing the fetcher of %s: %w", td.Name(), err)
	}
	lead, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
			s.log.Warn("federation: this host's fetcher lease ended; another host may fetch", "trust_domain", td.Name())
		case <-lead.Done():
		}
		cancel()
	}()
	resign := func() {
		cancel()
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		_ = e.Resign(rctx) // if it fails, the lease ends it
	}
	return lead, resign, nil
}

// Alone implements federation.Sharing: the registry has been unreachable for longer than a
// fetcher's lease, so no fetcher is elected or heard from (the last one's lease has ended).
func (s *SharedBundles) Alone() bool {
	if s.cfg.Reachable == nil {
		return false
	}
	ok, since := s.cfg.Reachable()
	return !ok && time.Since(since) > s.cfg.FetcherTTL
}

// Publish implements federation.Sharing: doc becomes the shared copy unless the one there has
// a higher spiffe_sequence (or is the same document).
func (s *SharedBundles) Publish(ctx context.Context, td spiffeid.TrustDomain, doc []byte) error {
	s.mu.Lock()
	denied := s.denied
	s.mu.Unlock()
	if denied {
		return nil // said once, in Lead
	}
	nb, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return fmt.Errorf("sharing the bundle of %s: %w", td.Name(), err)
	}
	newSeq, newHas := nb.SequenceNumber()
	key := s.bundles + td.Name()
	for range 3 {
		resp, err := s.cfg.Client.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("reading the shared bundle of %s: %w", td.Name(), err)
		}
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if len(resp.Kvs) > 0 {
			kv := resp.Kvs[0]
			if cur, err := etcdstore.DecodeBundle(kv.Value); err == nil {
				if bytes.Equal(cur.Doc, doc) {
					return nil
				}
				if cb, err := spiffebundle.Parse(td, cur.Doc); err == nil {
					if curSeq, curHas := cb.SequenceNumber(); curHas && newHas && newSeq < curSeq {
						s.log.Info("federation: the shared bundle is newer than the one fetched; kept", "trust_domain", td.Name(),
							"shared_sequence", curSeq, "fetched_sequence", newSeq)
						return nil
					}
				}
			}
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)
		}
		v, err := etcdstore.EncodeBundle(store.FederatedBundle{TrustDomain: td, Doc: doc, Source: store.BundleFromEndpoint,
			Sequence: newSeq, UpdatedAt: store.Timestamp(time.Now())})
		if err != nil {
			return err
		}
		tr, err := s.cfg.Client.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(v))).Commit()
		if err != nil {
			return fmt.Errorf("sharing the bundle of %s: %w", td.Name(), err)
		}
		if tr.Succeeded {
			return nil
		}
		// Written meanwhile (by a fetcher whose lease had not yet ended): compare again.
	}
	return fmt.Errorf("sharing the bundle of %s: the shared copy kept changing", td.Name())
}

// SetManual implements federation.Sharing: doc, set by the operator, becomes the shared copy
// (whatever it replaces: the operator's rules were checked by the Manager).
func (s *SharedBundles) SetManual(ctx context.Context, td spiffeid.TrustDomain, doc []byte) error {
	if err := s.writable(); err != nil {
		return err
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return fmt.Errorf("sharing the bundle of %s: %w", td.Name(), err)
	}
	seq, _ := b.SequenceNumber()
	v, err := etcdstore.EncodeBundle(store.FederatedBundle{TrustDomain: td, Doc: doc, Source: store.BundleManual,
		Sequence: seq, UpdatedAt: store.Timestamp(time.Now())})
	if err != nil {
		return err
	}
	if _, err := s.cfg.Client.Put(ctx, s.bundles+td.Name(), string(v)); err != nil {
		return sharedWriteErr("sharing the bundle of "+td.Name(), err)
	}
	return nil
}

// Remove implements federation.Sharing.
func (s *SharedBundles) Remove(ctx context.Context, td spiffeid.TrustDomain) (bool, error) {
	if err := s.writable(); err != nil {
		return false, err
	}
	resp, err := s.cfg.Client.Delete(ctx, s.bundles+td.Name())
	if err != nil {
		return false, sharedWriteErr("deleting the shared bundle of "+td.Name(), err)
	}
	return resp.Deleted > 0, nil
}

// writable fails at once, rather than when the caller gives up, while the registry is
// unreachable.
func (s *SharedBundles) writable() error {
	if s.cfg.Reachable == nil {
		return nil
	}
	if ok, since := s.cfg.Reachable(); !ok {
		return fmt.Errorf("the fleet registry (etcd) is unreachable since %s: %w", since.UTC().Format(time.RFC3339), store.ErrUnavailable)
	}
	return nil
}

// sharedWriteErr says what a refused write of bundles/ means: without the svidd-federation
// role (or the registrar's), this host may not change the fleet's bundles.
func sharedWriteErr(what string, err error) error {
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return fmt.Errorf("%s: %w (etcd: %v; role svidd-federation or svidd-registrar)", what, store.ErrReadOnly, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
