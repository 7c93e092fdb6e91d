// Package etcdstore is the Store a fleet shares: registration entries in etcd, one key per
// entry (the entry's JSON) under a prefix, written with transactions that keep the Store's
// contract (unique (SPIFFE ID, selector set), per-entry revisions, ErrNotFound), and a Watch
// that follows etcd's own change history, so it reports writes made by every instance in the
// cluster's one total order.
//
// Layout under Prefix:
//
//	entries/<id>                  the entry, JSON (entry.Entry's own encoding)
//	unique/<sha256 of id+selectors>  the ID of the entry holding that (SPIFFE ID, selector set)
//	bundles/<trust domain>        a federated bundle, shared by every host
//	hosts/<node name>/...         what one host publishes about itself (its JWT keys under
//	                              leases, its node record); a host's etcd role may write
//	                              there and nowhere else (README "Running a fleet")
//
// An entry's Revision is its etcd key version: 1 when created, +1 per update.
//
// Every call to etcd is tried again on another member when one fails for a reason that member
// alone may have (gone, no leader, too slow), within the caller's context (retry.go): one
// member of three killed costs a caller about a second, never an error. A retried write checks
// what its own earlier try may have committed, so it is applied and acknowledged once.
//
// With etcd's authentication on (README "Running a fleet": client certificates, CN = etcd
// user), a write the host's user may not make fails with store.ErrReadOnly.
package etcdstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/store"
)

var _ store.Store = (*Store)(nil)

// DefaultPrefix is where entries live when Config.Prefix is empty.
const DefaultPrefix = "/svidd/"

// deliveryWait bounds how long a write waits for its own change to come back through the
// watch before returning (see Store.Watch).
const deliveryWait = 5 * time.Second

// Config configures Open.
type Config struct {
	// Endpoints are the members' client URLs (http://host:port or https://host:port).
	Endpoints []string
	// TLS is the client TLS configuration (CA, client certificate), nil for plain HTTP.
	TLS *tls.Config
	// Prefix is the key prefix of this registry, ending in "/" (default DefaultPrefix).
	Prefix string
	// Logger defaults to a discard handler.
	Logger *slog.Logger
	// Now is the clock for CreatedAt and UpdatedAt (default time.Now).
	Now func() time.Time
	// AttemptTimeout bounds each try of a call to etcd; a try that fails or times out is
	// made again within the caller's context (default DefaultAttemptTimeout).
	AttemptTimeout time.Duration
	// Client, when set, is the connection to use (one per host: the registry mirror, the
	// JWT key publisher and the node record share it); Close leaves it open. Endpoints and
	// TLS are then unused. Without it Open makes its own with NewClient.
	Client *clientv3.Client
}

// NewClient returns a client for cfg's endpoints and TLS. It does not wait for etcd: the
// first call that needs a member waits for one (bounded by that call's context).
func NewClient(cfg Config) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd client: no endpoints")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints,
		TLS:       cfg.TLS,
		Logger:    zap.NewNop(),
		// A member that vanished without closing its connections (its machine died, the
		// network between split) is noticed within seconds, so that a watch or a call moves
		// to another member. etcd refuses pings more often than every 5 s by default.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		// gRPC's default reconnect backoff grows to 2 minutes; a host must catch up soon
		// after etcd is back, not minutes later.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

// Store is a store.Store on etcd. It is safe for concurrent use.
type Store struct {
	cli     *clientv3.Client
	ownCli  bool   // Close closes cli (Open made it)
	entries string // Prefix + "entries/"
	unique  string // Prefix + "unique/"
	bundles string // Prefix + "bundles/": one key per federated trust domain
	log     *slog.Logger
	now     func() time.Time
	// attemptTimeout bounds one try of a call (see retry).
	attemptTimeout time.Duration

	mu sync.Mutex
	// mirror is every entry as of revision delivered: the watch turns etcd's events into
	// Changes with it (Old of an update) and diffs a full reload against it.
	mirror    map[string]mirrored
	delivered int64
	progress  chan struct{} // closed and replaced whenever delivered advances
	watchers  map[uint64]func(store.Change)
	nextWatch uint64
	// lastChange is the revision of the newest entry change known to the watchers (the node
	// record publishes it: a delete leaves no key to find it by later).
	lastChange int64

	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type mirrored struct {
	e           entry.Entry
	modRevision int64
}

// Open connects to etcd, loads the current entries and starts following changes. It fails if
// etcd does not answer before ctx ends.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 && cfg.Client == nil {
		return nil, errors.New("opening etcd store: no endpoints")
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("opening etcd store: prefix %q must end with /", prefix)
	}
	s := &Store{
		entries:        prefix + "entries/",
		unique:         prefix + "unique/",
		bundles:        prefix + "bundles/",
		log:            cfg.Logger,
		now:            cfg.Now,
		attemptTimeout: cfg.AttemptTimeout,
		mirror:         map[string]mirrored{},
		progress:       make(chan struct{}),
		watchers:       map[uint64]func(store.Change){},
		done:           make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.attemptTimeout <= 0 {
		s.attemptTimeout = DefaultAttemptTimeout
	}
	s.cli = cfg.Client
	if s.cli == nil {
		cli, err := NewClient(cfg)
		if err != nil {
			return nil, fmt.Errorf("opening etcd store: %w", err)
		}
		s.cli, s.ownCli = cli, true
	}
	endpoints := s.cli.Endpoints()
	rev, err := s.load(ctx)
	if err != nil {
		if s.ownCli {
			s.cli.Close()
		}
		return nil, fmt.Errorf("opening etcd store at %s: %w", strings.Join(endpoints, ","), err)
	}
	s.delivered = rev
	wctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.follow(wctx)
	return s, nil
}

func (s *Store) entryKey(id string) string { return s.entries + id }

// uniqueKey names the (SPIFFE ID, selector set) of e, which at most one entry may hold.
func (s *Store) uniqueKey(e entry.Entry) string {
	h := sha256.Sum256([]byte(e.SPIFFEID.String() + "\n" + entry.SelectorKey(e.Selectors)))
	return s.unique + hex.EncodeToString(h[:])
}

func decode(key, value []byte, version int64) (entry.Entry, error) {
	var e entry.Entry
	if err := json.Unmarshal(value, &e); err != nil {
		return entry.Entry{}, fmt.Errorf("stored entry %s: %w", key, err)
	}
	e.Revision = version
	e.CreatedAt, e.UpdatedAt = e.CreatedAt.UTC(), e.UpdatedAt.UTC()
	return e, nil
}

// load reads every entry into the mirror (without telling watchers) and returns the revision
// it read at.
func (s *Store) load(ctx context.Context) (int64, error) {
	m, rev, err := s.readAll(ctx)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.mirror = m
	s.lastChange = max(s.lastChange, newest(m))
	s.mu.Unlock()
	return rev, nil
}

// newest is the highest ModRevision in m (0 if empty).
func newest(m map[string]mirrored) int64 {
	var n int64
	for _, e := range m {
		n = max(n, e.modRevision)
	}
	return n
}

// Progress says how far the watchers are: every change up to revision delivered has been
// delivered, and lastChange is the revision of the newest entry change among them (an entry
// written or deleted; after a load or reload, the newest entry written, as a delete then
// leaves no trace). Both only grow.
func (s *Store) Progress() (delivered, lastChange int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered, s.lastChange
}

func (s *Store) readAll(ctx context.Context) (map[string]mirrored, int64, error) {
	resp, err := s.getPrefix(ctx, s.entries)
	if err != nil {
		return nil, 0, fmt.Errorf("reading entries: %w", err)
	}
	m := make(map[string]mirrored, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e, err := decode(kv.Key, kv.Value, kv.Version)
		if err != nil {
			return nil, 0, err
		}
		m[e.ID] = mirrored{e: e, modRevision: kv.ModRevision}
	}
	return m, resp.Header.Revision, nil
}

// CreateEntry stores e with a new ID (unless e.ID is set), Revision 1 and the current time.
//
// A try whose answer was lost may have committed: a later try then finds the entry key
// holding exactly what this call wrote (same ID, same creation time to the nanosecond) and
// answers success, so a create is acknowledged once and stored once.
func (s *Store) CreateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	e, err := store.Prepare(e)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("creating entry: %w", err)
	}
	if e.ID == "" {
		e.ID = store.NewID()
	}
	now := store.Timestamp(s.now())
	e.Revision, e.CreatedAt, e.UpdatedAt = 1, now, now
	val, err := json.Marshal(e)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("creating entry for %s: encoding: %w", e.SPIFFEID, err)
	}
	what := "creating entry for " + e.SPIFFEID.String()
	ek, uk := s.entryKey(e.ID), s.uniqueKey(e)
	var resp *clientv3.TxnResponse
	_, err = s.retry(ctx, func(ctx context.Context) (err error) {
		resp, err = s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(ek), "=", 0), clientv3.Compare(clientv3.CreateRevision(uk), "=", 0)).
			Then(clientv3.OpPut(ek, string(val)), clientv3.OpPut(uk, e.ID)).
			Else(clientv3.OpGet(ek)).
			Commit()
		return err
	})
	if err != nil {
		return entry.Entry{}, writeErr(what, err)
	}
	rev := resp.Header.Revision
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		switch {
		case len(kvs) == 1 && kvs[0].Version == 1 && bytes.Equal(kvs[0].Value, val):
			rev = kvs[0].ModRevision // an earlier try of this call committed
		case len(kvs) > 0:
			return entry.Entry{}, fmt.Errorf("%s: entry ID is already in use: %w", what, store.ErrAlreadyExists)
		default:
			return entry.Entry{}, fmt.Errorf("%s: %w", what, store.ErrAlreadyExists)
		}
	}
	s.awaitDelivery(ctx, rev)
	return store.Clone(e), nil
}

// UpdateEntry replaces every field of the entry with e.ID but CreatedAt, and bumps Revision.
// Concurrent updates of one entry are serialized by compare-and-swap on its etcd revision.
// A try whose answer was lost may have committed: the next try's comparison then fails on
// a key that holds exactly what this call wrote (its UpdatedAt to the nanosecond), which is
// success, not a reason to update again.
func (s *Store) UpdateEntry(ctx context.Context, e entry.Entry) (entry.Entry, error) {
	e, err := store.Prepare(e)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("updating entry %s: %w", e.ID, err)
	}
	what := "updating entry " + e.ID
	ek := s.entryKey(e.ID)
	for {
		old, kv, err := s.get(ctx, e.ID)
		if err != nil {
			return entry.Entry{}, fmt.Errorf("%s: %w", what, err)
		}
		e.Revision, e.CreatedAt, e.UpdatedAt = old.Revision+1, old.CreatedAt, store.Timestamp(s.now())
		val, err := json.Marshal(e)
		if err != nil {
			return entry.Entry{}, fmt.Errorf("%s: encoding: %w", what, err)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ek), "=", kv.ModRevision)}
		ops := []clientv3.Op{clientv3.OpPut(ek, string(val))}
		if oldU, newU := s.uniqueKey(old), s.uniqueKey(e); oldU != newU {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(newU), "=", 0))
			ops = append(ops, clientv3.OpDelete(oldU), clientv3.OpPut(newU, e.ID))
		}
		var resp *clientv3.TxnResponse
		_, err = s.retry(ctx, func(ctx context.Context) (err error) {
			resp, err = s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(ek)).Commit()
			return err
		})
		if err != nil {
			return entry.Entry{}, writeErr(what, err)
		}
		if resp.Succeeded {
			s.awaitDelivery(ctx, resp.Header.Revision)
			return store.Clone(e), nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 && bytes.Equal(kvs[0].Value, val) {
			s.awaitDelivery(ctx, kvs[0].ModRevision) // an earlier try of this call committed
			return store.Clone(e), nil
		}
		// The entry is as we read it, so the other comparison failed: another entry holds
		// the new (SPIFFE ID, selector set). Otherwise someone else wrote first: read again.
		if len(kvs) == 1 && kvs[0].ModRevision == kv.ModRevision {
			return entry.Entry{}, fmt.Errorf("%s: %w", what, store.ErrAlreadyExists)
		}
	}
}

// DeleteEntry removes the entry and returns it as it was. After a try whose answer was lost,
// finding the entry gone (or replaced by a new entry with the same ID) means that try
// committed: the call succeeds with the entry it deleted.
func (s *Store) DeleteEntry(ctx context.Context, id string) (entry.Entry, error) {
	what := "deleting entry " + id
	ek := s.entryKey(id)
	var (
		ambiguous bool
		sent      entry.Entry // what the ambiguous try deleted, if it committed
		sentKV    *mvccpb.KeyValue
	)
	for {
		old, kv, err := s.get(ctx, id)
		if ambiguous && (errors.Is(err, store.ErrNotFound) || err == nil && kv.CreateRevision != sentKV.CreateRevision) {
			return sent, nil
		}
		if err != nil {
			return entry.Entry{}, fmt.Errorf("%s: %w", what, err)
		}
		var resp *clientv3.TxnResponse
		retried, err := s.retry(ctx, func(ctx context.Context) (err error) {
			resp, err = s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(ek), "=", kv.ModRevision)).
				Then(clientv3.OpDelete(ek), clientv3.OpDelete(s.uniqueKey(old))).
				Commit()
			return err
		})
		if retried {
			ambiguous, sent, sentKV = true, old, kv
		}
		if err != nil {
			return entry.Entry{}, writeErr(what, err)
		}
		if resp.Succeeded {
			s.awaitDelivery(ctx, resp.Header.Revision)
			return old, nil
		}
	}
}

// get reads one entry (with retries) and its key's metadata, or ErrNotFound.
func (s *Store) get(ctx context.Context, id string) (entry.Entry, *mvccpb.KeyValue, error) {
	var resp *clientv3.GetResponse
	_, err := s.retry(ctx, func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, s.entryKey(id))
		return err
	})
	if err != nil {
		return entry.Entry{}, nil, err
	}
	if len(resp.Kvs) == 0 {
		return entry.Entry{}, nil, fmt.Errorf("%w: %s", store.ErrNotFound, id)
	}
	kv := resp.Kvs[0]
	e, err := decode(kv.Key, kv.Value, kv.Version)
	return e, kv, err
}

// GetEntry returns the entry with the given ID, or ErrNotFound. Reads are linearizable: they
// see every write acknowledged by any instance before the call.
func (s *Store) GetEntry(ctx context.Context, id string) (entry.Entry, error) {
	e, _, err := s.get(ctx, id)
	if err != nil {
		return entry.Entry{}, fmt.Errorf("getting entry: %w", err)
	}
	return e, nil
}

// getPrefix reads every key under prefix (with retries).
func (s *Store) getPrefix(ctx context.Context, prefix string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	var resp *clientv3.GetResponse
	_, err := s.retryFor(ctx, max(s.attemptTimeout, rangeAttemptTimeout), func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, prefix, append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
		return err
	})
	return resp, err
}

// ListEntries returns the entries matching f, ordered by SPIFFE ID then ID.
func (s *Store) ListEntries(ctx context.Context, f store.Filter) ([]entry.Entry, error) {
	resp, err := s.getPrefix(ctx, s.entries)
	if err != nil {
		return nil, fmt.Errorf("listing entries: %w", err)
	}
	var out []entry.Entry
	for _, kv := range resp.Kvs {
		e, err := decode(kv.Key, kv.Value, kv.Version)
		if err != nil {
			return nil, fmt.Errorf("listing entries: %w", err)
		}
		if f.Matches(e) {
			out = append(out, e)
		}
	}
	sortEntries(out)
	return out, nil
}

// Ping checks that a member answers and has a leader, so that a quorum is there (a member
// cut off from the others loses its leader within an election timeout). It asks for one key
// that never exists, without a quorum round (serializable): every host of a fleet probes
// with it, and a linearizable read of the entries' prefix cost each of those probes a
// round through the leader and a count of every entry.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.cli.Get(clientv3.WithRequireLeader(ctx), s.entries, clientv3.WithSerializable(), clientv3.WithKeysOnly())
		return err
	}); err != nil {
		return fmt.Errorf("pinging etcd store: %w", err)
	}
	return nil
}

// Connected reports whether the client's connection to etcd is up (some member connected,
// or no call attempted yet), without asking etcd: the registry mirror checks it every second
// between its probes.
func (s *Store) Connected() bool {
	switch s.cli.ActiveConnection().GetState() {
	case connectivity.Ready, connectivity.Idle:
		return true
	}
	return false
}

// Snapshot returns every entry as of the revision it returns (or a change later, being
// delivered): what Open read, kept current by the watch, so that every change after that
// revision reaches the watchers. The registry mirror's
// full sync takes it rather than reading every entry from etcd again right after Open.
func (s *Store) Snapshot() ([]entry.Entry, int64) {
	s.mu.Lock()
	out := make([]entry.Entry, 0, len(s.mirror))
	for _, m := range s.mirror {
		out = append(out, store.Clone(m.e))
	}
	rev := s.delivered
	s.mu.Unlock()
	// In ListEntries' order, not the map's random one: a copy of thousands of entries is
	// inserted into SQLite's index on (SPIFFE ID, selectors) in that index's order.
	sortEntries(out)
	return out, rev
}

// sortEntries orders entries by SPIFFE ID, then ID.
func sortEntries(es []entry.Entry) {
	slices.SortFunc(es, func(a, b entry.Entry) int {
		if c := strings.Compare(a.SPIFFEID.String(), b.SPIFFEID.String()); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// Close stops following changes and closes the client. It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		<-s.done
		if !s.ownCli {
			return
		}
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = fmt.Errorf("closing etcd store: %w", err)
		}
	})
	return s.closeErr
}
