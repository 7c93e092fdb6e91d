package fleet

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/pkg/store"
)

// DefaultMargin is how long a key stays published, and trusted, after its NotAfter: room for
// the clocks of the host that signed and the host that validates to disagree.
const DefaultMargin = 30 * time.Second

// LocalKeys is the host's own copy of the fleet keys; *store.SQLite satisfies it. Calls come
// from one goroutine at a time.
type LocalKeys interface {
	FleetKeys(ctx context.Context) ([]store.FleetKey, store.FleetState, error)
	UpdateFleetKeys(ctx context.Context, u store.FleetKeysUpdate) error
}

// KeysConfig configures NewKeys.
type KeysConfig struct {
	Client *clientv3.Client
	// Prefix is the registry's prefix, ending in "/".
	Prefix string
	// Node is this host: its own records are followed (OnOwnChange) but its keys come from
	// its CA, not from the registry.
	Node  string
	Local LocalKeys
	// Margin is how long after its NotAfter a key is still trusted (default DefaultMargin).
	Margin time.Duration
	// OnChange is called whenever Snapshot may have changed; OnOwnChange whenever this
	// node's records changed or were reloaded (the Publisher checks them). Neither may block.
	OnChange, OnOwnChange func()
	Clock                 func() time.Time
	Logger                *slog.Logger
}

// Keys follows every host's JWT keys in the registry and keeps them in the host's copy.
// Safe for concurrent use.
type Keys struct {
	cfg  KeysConfig
	log  *slog.Logger
	base string // hostsPrefix

	mu   sync.Mutex
	recs map[string]held // by name below hostsPrefix ("<node>/jwtkeys/<kid>")
	rev  int64           // revision of the last change to the set
	// bad remembers records that failed their checks, by name, with the value that failed,
	// so each is logged once.
	bad map[string][]byte
	// arrived tells Run to look at the next expiry again (a key came), 1-buffered.
	arrived chan struct{}
}

type held struct {
	key   Key
	value []byte
}

// NewKeys checks cfg. Load reads the host's copy; Run follows the registry.
func NewKeys(cfg KeysConfig) (*Keys, error) {
	if err := checkPlace("fleet keys", cfg.Client, cfg.Prefix, cfg.Node, &cfg.Margin); err != nil {
		return nil, err
	}
	if cfg.Local == nil {
		return nil, errors.New("fleet keys: Local is required")
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	if cfg.OnOwnChange == nil {
		cfg.OnOwnChange = func() {}
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Keys{cfg: cfg, log: cfg.Logger, base: hostsPrefix(cfg.Prefix), recs: map[string]held{}, bad: map[string][]byte{},
		arrived: make(chan struct{}, 1)}, nil
}

// Load reads the keys the host's copy holds (what it last saw of the registry) and returns
// the stored state. Expired keys are dropped from the copy.
func (k *Keys) Load(ctx context.Context) (store.FleetState, error) {
	rows, st, err := k.cfg.Local.FleetKeys(ctx)
	if err != nil {
		return store.FleetState{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, r := range rows {
		node, kid, ok := keyName(r.Name)
		if !ok {
			continue
		}
		key, err := decodeKey(node, kid, r.Record)
		if err != nil {
			k.log.Error("stored fleet JWT key does not decode; ignored", "key", r.Name, "error", err)
			continue
		}
		k.recs[r.Name] = held{key: key, value: r.Record}
	}
	k.rev = st.Revision
	k.expireLocked(ctx)
	return st, nil
}

// Snapshot returns every other host's unexpired keys, by node then kid, and the revision of
// the last change to the registry's key set this host has seen.
func (k *Keys) Snapshot() ([]Key, int64) {
	now := k.cfg.Clock()
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Key, 0, len(k.recs))
	for _, h := range k.recs {
		if h.key.Node != k.cfg.Node && k.live(h.key, now) {
			out = append(out, h.key)
		}
	}
	slices.SortFunc(out, func(a, b Key) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return strings.Compare(a.KID, b.KID)
	})
	return out, k.rev
}

func (k *Keys) live(key Key, now time.Time) bool { return now.Before(key.NotAfter.Add(k.cfg.Margin)) }

// Run follows the registry until ctx ends, and drops each key from the copy when it expires
// (whether or not etcd is reachable to say so). It returns nil on a clean stop.
func (k *Keys) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Follow(ctx, k.cfg.Client, k.base, (*keysHandler)(k), k.log)
	}()
	defer func() { <-done }()
	t := time.NewTimer(k.nextExpiry())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-k.arrived:
			t.Reset(k.nextExpiry()) // since Go 1.23 no stale tick survives a Reset
			continue
		case <-t.C:
		}
		k.mu.Lock()
		n := k.expireLocked(ctx)
		k.mu.Unlock()
		if n > 0 {
			k.cfg.OnChange()
		}
		t.Reset(k.nextExpiry())
	}
}

// nextExpiry is how long until the next key expires (at most a minute: a key that arrives
// meanwhile is looked at then).
func (k *Keys) nextExpiry() time.Duration {
	now := k.cfg.Clock()
	d := time.Minute
	k.mu.Lock()
	for _, h := range k.recs {
		d = min(d, h.key.NotAfter.Add(k.cfg.Margin).Sub(now)+10*time.Millisecond)
	}
	k.mu.Unlock()
	return max(d, 10*time.Millisecond)
}

// expireLocked drops expired keys from the map and the copy and returns how many.
func (k *Keys) expireLocked(ctx context.Context) int {
	now := k.cfg.Clock()
	var gone []string
	for name, h := range k.recs {
		if !k.live(h.key, now) {
			gone = append(gone, name)
			delete(k.recs, name)
		}
	}
	if len(gone) > 0 {
		if err := k.cfg.Local.UpdateFleetKeys(ctx, store.FleetKeysUpdate{Delete: gone}); err != nil {
			k.log.Error("dropping expired fleet JWT keys from the host's copy", "error", err)
		}
		k.log.Info("fleet JWT keys expired", "keys", len(gone))
	}
	return len(gone)
}

// keyArrived wakes Run: a new key may expire before the timer it set.
func (k *Keys) keyArrived() {
	select {
	case k.arrived <- struct{}{}:
	default:
	}
}

// keysHandler is Keys' Follow handler.
type keysHandler Keys

// check decodes one record. A bad record is logged once (per value) and skipped.
func (k *Keys) check(name string, value []byte) (held, bool) {
	node, kid, ok := keyName(name)
	if !ok {
		return held{}, false // the node record and other keys of a host: not ours
	}
	key, err := decodeKey(node, kid, value)
	if err == nil {
		delete(k.bad, name)
		return held{key: key, value: value}, true
	}
	if !bytes.Equal(k.bad[name], value) {
		k.bad[name] = value
		k.log.Error("skipping a bad JWT key record in the registry", "key", k.base+name, "node", node, "error", err)
	}
	return held{}, false
}

func (h *keysHandler) Reset(kvs []*mvccpb.KeyValue, rev int64) {
	k := (*Keys)(h)
	now := k.cfg.Clock()
	recs := map[string]held{}
	k.mu.Lock()
	present := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		present[string(kv.Key[len(k.base):])] = true
	}
	for name := range k.bad {
		if !present[name] {
			delete(k.bad, name)
		}
	}
	for _, kv := range kvs {
		name := string(kv.Key[len(k.base):])
		if r, ok := k.check(name, kv.Value); ok && k.live(r.key, now) {
			recs[name] = r
		}
	}
	same := len(recs) == len(k.recs)
	for name, r := range recs {
		if o, ok := k.recs[name]; !ok || !bytes.Equal(o.value, r.value) {
			same = false
		}
	}
	// What changed while this host was not following happened at some revision up to rev;
	// which one is lost, so rev stands for it (NextSequence).
	if !same {
		k.rev = rev
	}
	k.recs = recs
	u := store.FleetKeysUpdate{Reset: true, Revision: k.rev}
	for name, r := range recs {
		u.Put = append(u.Put, store.FleetKey{Name: name, Record: r.value, NotAfter: r.key.NotAfter})
	}
	k.mu.Unlock()
	if err := k.cfg.Local.UpdateFleetKeys(context.Background(), u); err != nil {
		k.log.Error("storing the fleet JWT keys in the host's copy", "error", err)
	}
	k.keyArrived()
	k.log.Info("fleet JWT keys loaded from the registry", "keys", len(recs), "revision", rev, "changed", !same)
	k.cfg.OnOwnChange()
	if !same {
		k.cfg.OnChange()
	}
}

func (h *keysHandler) Apply(evs []*clientv3.Event, rev int64) {
	k := (*Keys)(h)
	now := k.cfg.Clock()
	var u store.FleetKeysUpdate
	own := false
	k.mu.Lock()
	for _, ev := range evs {
		name := string(ev.Kv.Key[len(k.base):])
		if _, _, ok := keyName(name); !ok {
			continue
		}
		if node, _, _ := keyName(name); node == k.cfg.Node {
			own = true
		}
		// Every change to the key set moves the revision, even one that leaves the bundle
		// as it was (a key re-published): all hosts see the same events, so they agree.
		k.rev = ev.Kv.ModRevision
		u.Revision = k.rev
		r, ok := held{}, false
		if ev.Type == mvccpb.PUT {
			r, ok = k.check(name, ev.Kv.Value)
		}
		if ok && k.live(r.key, now) {
			k.recs[name] = r
			u.Put = append(u.Put, store.FleetKey{Name: name, Record: r.value, NotAfter: r.key.NotAfter})
		} else {
			delete(k.recs, name)
			u.Delete = append(u.Delete, name)
			if ev.Type == mvccpb.DELETE {
				delete(k.bad, name)
			}
		}
	}
	k.mu.Unlock()
	if u.Revision == 0 {
		return // a progress report, or records that are not keys
	}
	if err := k.cfg.Local.UpdateFleetKeys(context.Background(), u); err != nil {
		k.log.Error("storing fleet JWT keys in the host's copy", "error", err)
	}
	if len(u.Put) > 0 {
		k.keyArrived()
	}
	if own {
		k.cfg.OnOwnChange()
	}
	k.cfg.OnChange()
}

func (h *keysHandler) Unreachable(error) { h.cfg.OnOwnChange() }
