package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultReconcileEvery is how often a Publisher checks its records even when nothing told
// it to (a lease revoked by hand, a registry restored from an old snapshot).
const DefaultReconcileEvery = time.Minute

// PublisherConfig configures NewPublisher.
type PublisherConfig struct {
	Client *clientv3.Client
	// Prefix is the registry's prefix, ending in "/"; Node this host's name.
	Prefix, Node string
	// Keys returns this host's current JWT keys (its CA's: active, prepared and old
	// unexpired). It is called from the Publisher's goroutine.
	Keys func() []Key
	// Margin: each key's lease ends this long after its NotAfter (default DefaultMargin).
	Margin time.Duration
	// Every is the period of the unprompted check (default DefaultReconcileEvery).
	Every time.Duration
	// Hold, when set and true, makes Reconcile change nothing: this host does not hold its
	// node name yet (NodeRecord.Holds), and another host running with the same name would
	// otherwise delete each of this one's keys as this one deletes each of its (call Trigger
	// once it holds it).
	Hold   func() bool
	Clock  func() time.Time
	Logger *slog.Logger
}

// Publisher keeps what the registry holds under Prefix + "hosts/<Node>/jwtkeys/" equal to
// the host's current keys, each under its own lease that ends Margin after the key's
// NotAfter.
type Publisher struct {
	cfg  PublisherConfig
	log  *slog.Logger
	dir  string // keysPrefix
	kick chan struct{}
}

// NewPublisher checks cfg. Run publishes.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := checkPlace("fleet publisher", cfg.Client, cfg.Prefix, cfg.Node, &cfg.Margin); err != nil {
		return nil, err
	}
	if cfg.Keys == nil {
		return nil, errors.New("fleet publisher: Keys is required")
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultReconcileEvery
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Publisher{cfg: cfg, log: cfg.Logger, dir: keysPrefix(cfg.Prefix, cfg.Node), kick: make(chan struct{}, 1)}, nil
}

// checkPlace checks what Keys and Publisher share: a client, a prefix ending in "/", a node
// name; a zero margin becomes DefaultMargin.
func checkPlace(what string, cli *clientv3.Client, prefix, node string, margin *time.Duration) error {
	switch {
	case cli == nil:
		return fmt.Errorf("%s: Client is required", what)
	case !strings.HasSuffix(prefix, "/"):
		return fmt.Errorf("%s: the prefix %q must end with /", what, prefix)
	}
	if err := CheckNodeName(node); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if *margin <= 0 {
		*margin = DefaultMargin
	}
	return nil
}

// Trigger asks Run to check the records now (the CA's keys changed, the registry is back, a
// record of this node changed). It never blocks.
func (p *Publisher) Trigger() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run reconciles at once, on every Trigger and every Every, retrying a failure with backoff
// (100 ms to 5 s), until ctx ends. It returns nil on a clean stop.
func (p *Publisher) Run(ctx context.Context) error {
	wait := 100 * time.Millisecond
	failing := false
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.kick:
		}
		err := p.Reconcile(ctx)
		if ctx.Err() != nil {
			return nil
		}
		next := p.cfg.Every
		if err != nil {
			if !failing {
				p.log.Warn("publishing this host's JWT keys to the registry failed; retrying", "error", err)
			}
			failing = true
			next, wait = wait, min(2*wait, 5*time.Second)
		} else {
			if failing {
				p.log.Info("this host's JWT keys are published again")
			}
			failing, wait = false, 100*time.Millisecond
		}
		t.Reset(next) // since Go 1.23 no stale tick survives a Reset
	}
}

// Reconcile makes the registry's records of this node equal to its current keys: a key
// missing or different is put under a new lease, a record of a key the host no longer has is
// deleted. A key already expired (past NotAfter + Margin) is not published.
func (p *Publisher) Reconcile(ctx context.Context) error {
	if p.cfg.Hold != nil && p.cfg.Hold() {
		return nil
	}
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 10*time.Second)
	defer cancel()
	resp, err := p.cfg.Client.Get(ctx, p.dir, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("reading this host's JWT keys: %w", err)
	}
	have := make(map[string][]byte, len(resp.Kvs))
	leases := make(map[string]clientv3.LeaseID, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		have[string(kv.Key)] = kv.Value
		leases[string(kv.Key)] = clientv3.LeaseID(kv.Lease)
	}
	now := p.cfg.Clock()
	want := map[string]bool{}
	for _, k := range p.cfg.Keys() {
		end := k.NotAfter.Add(p.cfg.Margin)
		if !now.Before(end) {
			continue
		}
		k.Node = p.cfg.Node
		val, err := encodeKey(k)
		if err != nil {
			p.log.Error("cannot publish a JWT key", "kid", k.KID, "error", err)
			continue
		}
		name := p.dir + k.KID
		want[name] = true
		if bytes.Equal(have[name], val) && leases[name] != 0 {
			continue
		}
		// One lease per key: it ends with the key, and revoking it touches nothing else.
		ttl := int64((end.Sub(now) + time.Second - 1) / time.Second)
		lease, err := p.cfg.Client.Grant(ctx, ttl)
		if err != nil {
			return fmt.Errorf("granting the lease of JWT key %s: %w", k.KID, err)
		}
		if _, err := p.cfg.Client.Put(ctx, name, string(val), clientv3.WithLease(lease.ID)); err != nil {
			return fmt.Errorf("publishing JWT key %s: %w", k.KID, err)
		}
		if old := leases[name]; old != 0 {
			_, _ = p.cfg.Client.Revoke(ctx, old) // holds no other key; it would end anyway
		}
		p.log.Info("published JWT key to the registry", "kid", k.KID, "not_after", k.NotAfter.UTC(), "lease_ttl_seconds", ttl)
	}
	for name := range have {
		if want[name] {
			continue
		}
		if _, err := p.cfg.Client.Delete(ctx, name); err != nil {
			return fmt.Errorf("removing JWT key %s: %w", name[len(p.dir):], err)
		}
		p.log.Info("removed JWT key from the registry", "kid", name[len(p.dir):])
	}
	return nil
}
