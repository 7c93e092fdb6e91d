// Node records: each host of a fleet publishes what it is and how far its copy follows the
// registry, under <prefix>hosts/<node name>/, so that `svidctl node list` on any host shows
// every host, which ones are gone and which are behind.
//
//	hosts/<name>/node   the record (JSON, Record), persistent: a host that is gone still shows,
//	                    with when it was last seen, until an operator forgets it
//	hosts/<name>/alive  empty, under a lease the host keeps alive: no key, the host is gone
//
// Cost, with 1,000 hosts: lease keep-alives are answered by the etcd leader without a write
// (one per host every TTL/3: 33/s at the 30 s default); the record is written when what the
// host is changes (groups, version, CA, at most once per Every: 10 s) and otherwise once per
// Heartbeat (1 min), which also carries how far its copy is: ~17 small writes a second, busy
// registry or quiet. How far a copy is does not trigger a write of its own: every entry
// change would otherwise make every host write (1,000 writes per change), and every host's
// JWT key follower, which watches hosts/, would receive them all. Node records are outside
// entries/, so no host's registry watch sees them.

package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/pkg/entry"
)

// Defaults of NodeRecordConfig and List.
const (
	DefaultEvery     = 10 * time.Second
	DefaultHeartbeat = time.Minute
	DefaultTTL       = 30 * time.Second
	// DefaultBehindAfter: how long a host may take to deliver a registry change before it
	// is called behind. Far above a healthy host's delay (milliseconds) and the clock skew
	// between hosts, and short enough that a stuck host shows within a minute or two.
	DefaultBehindAfter = 30 * time.Second
)

// Record is one host's node record, the JSON at <prefix>hosts/<name>/node.
type Record struct {
	Name    string   `json:"name"`
	Groups  []string `json:"groups,omitempty"`
	Version string   `json:"version"`
	// CANotAfter is when the host's active CA expires.
	CANotAfter time.Time `json:"ca_not_after,omitzero"`
	// Revision: every registry change up to this etcd revision is in the host's copy.
	Revision int64 `json:"revision"`
	// LastChange is the etcd revision of the newest entry change in the host's copy, and
	// LastChangeAt when the host first found it there (its clock, within Every).
	LastChange   int64     `json:"last_change"`
	LastChangeAt time.Time `json:"last_change_at,omitzero"`
	Started      time.Time `json:"started"`
	// LastSeen is when the host wrote this record (its clock).
	LastSeen time.Time `json:"last_seen"`
}

// Progress is what may change while a host runs.
type Progress struct {
	CANotAfter           time.Time
	Revision, LastChange int64
}

// NodeRecordConfig configures NewNodeRecord.
type NodeRecordConfig struct {
	// Client is the host's connection to etcd (not closed by the NodeRecord).
	Client *clientv3.Client
	// Prefix is the registry's key prefix, ending in "/".
	Prefix  string
	Name    string
	Groups  []string
	Version string // default: Version()
	// Progress reports what changed; called once per Every, it must not block.
	Progress func() Progress
	// Every is how often Progress is checked and a changed record written (jittered ±10%
	// so that hosts started together do not write together); Heartbeat how often an
	// unchanged one is written again; TTL the alive key's lease (whole seconds, ≥ 2 s).
	Every, Heartbeat, TTL time.Duration
	// OnHeld, when set, is called (on Run's goroutine, not blocking) each time the host
	// takes its alive key: Holds has become true.
	OnHeld func()
	// Timeout bounds each etcd call (default 5 s).
	Timeout time.Duration
	Logger  *slog.Logger
	Now     func() time.Time
}

// NodeRecord keeps a host's node record and alive key.
//
// Two hosts configured with the same node name would overwrite each other's record: a host
// takes the alive key only when no one holds it, and rewrites its record only while the alive
// key is under its own lease. A host that finds the key under another lease waits: the lease
// of its own previous run (one that crashed) ends within TTL; one still held after that is
// another host with the same name, which it logs as an error and reports (Conflict) until
// that host is gone.
type NodeRecord struct {
	cfg         NodeRecordConfig
	log         *slog.Logger
	node, alive string

	// foreign is the other lease last found on the alive key and since when (Run's
	// goroutine only).
	foreign   clientv3.LeaseID
	foreignAt time.Time

	held atomic.Bool // the alive key is under this host's lease, as last seen

	mu       sync.Mutex
	conflict string // why the alive key is another host's; "" when it is not
}

// Holds reports whether this host holds its node name: its alive key is under its lease.
func (p *NodeRecord) Holds() bool { return p.held.Load() }

// Conflict says why another host is taken to run with this host's node name (its alive key
// held under a lease that is not this host's for longer than TTL), or "" when none is.
func (p *NodeRecord) Conflict() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conflict
}

func (p *NodeRecord) setConflict(why string) {
	p.mu.Lock()
	was := p.conflict
	p.conflict = why
	p.mu.Unlock()
	switch {
	case why != "" && was == "":
		p.log.Error("another host runs with this host's node_name: each would overwrite the other's node record; give each host its own agent { node_name }",
			"node_name", p.cfg.Name, "problem", why)
	case why == "" && was != "":
		p.log.Info("the other host with this node_name is gone; this host publishes its node record", "node_name", p.cfg.Name)
	}
}

// heldElsewhere handles the alive key found under lease id, not this host's: a conflict once
// the same lease has held it for longer than TTL (the lease of a crashed run of this host
// would have ended). It returns the error publish reports meanwhile.
func (p *NodeRecord) heldElsewhere(id clientv3.LeaseID, sure bool) error {
	now := p.cfg.Now()
	if id != p.foreign {
		p.foreign, p.foreignAt = id, now
	}
	why := fmt.Sprintf("%s is held under lease %x, not this host's", p.alive, int64(id))
	if sure || now.Sub(p.foreignAt) > p.cfg.TTL {
		p.setConflict(why + fmt.Sprintf(" (since %s)", p.foreignAt.UTC().Format(time.RFC3339)))
	}
	return fmt.Errorf("%s: another host may run with node_name %q (or this host's previous run, whose lease ends within %s); waiting", why, p.cfg.Name, p.cfg.TTL)
}

// NewNodeRecord validates cfg and fills its defaults. Run publishes.
func NewNodeRecord(cfg NodeRecordConfig) (*NodeRecord, error) {
	if cfg.Client == nil || cfg.Progress == nil {
		return nil, errors.New("node record: Client and Progress are required")
	}
	if err := CheckNodeName(cfg.Name); err != nil {
		return nil, fmt.Errorf("node record: %w", err)
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("node record: prefix %q must end with /", cfg.Prefix)
	}
	cfg.Every = orDefault(cfg.Every, DefaultEvery)
	cfg.Heartbeat = orDefault(cfg.Heartbeat, DefaultHeartbeat)
	cfg.TTL = orDefault(cfg.TTL, DefaultTTL)
	cfg.Timeout = orDefault(cfg.Timeout, 5*time.Second)
	if cfg.TTL < 2*time.Second {
		return nil, fmt.Errorf("node record: lease TTL %s is under etcd's minimum of 2 s", cfg.TTL)
	}
	if cfg.Version == "" {
		cfg.Version = Version()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &NodeRecord{cfg: cfg, log: cfg.Logger, node: hostKey(cfg.Prefix, cfg.Name, "node"), alive: hostKey(cfg.Prefix, cfg.Name, "alive")}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func hostKey(prefix, name, what string) string { return hostsPrefix(prefix) + name + "/" + what }

// Version is svidd's version as the build recorded it: the module version, or for a build
// from a checkout "devel+" the commit (12 digits, "-dirty" if modified), else "devel".
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	return "devel+" + rev[:min(12, len(rev))] + dirty
}

// lease is the alive key's lease while the NodeRecord holds one.
type lease struct {
	id     clientv3.LeaseID
	ka     <-chan *clientv3.LeaseKeepAliveResponse
	cancel context.CancelFunc
}

// Run publishes the record and keeps the alive key until ctx ends, then writes the record a
// last time and revokes the lease, so that a host stopped cleanly shows as gone at once. It
// returns nil: while etcd is unreachable it keeps trying (the lease expires meanwhile and the
// host shows as gone, which it is to the fleet), and renews the lease when etcd is back.
func (p *NodeRecord) Run(ctx context.Context) error {
	rec := Record{Name: p.cfg.Name, Groups: slices.Clone(p.cfg.Groups), Version: p.cfg.Version, Started: p.cfg.Now().UTC()}
	var (
		l       lease
		written Record // as last written; zero LastSeen: not yet
		failing bool
	)
	defer func() {
		if l.cancel != nil {
			l.cancel()
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			p.held.Store(false)
			p.stop(rec, l.id)
			return nil
		case _, ok := <-l.ka:
			if !ok {
				// Closed: the lease expired (etcd unreachable for a TTL) or was revoked.
				p.log.Warn("this host's liveness lease ended; renewing it", "node_name", p.cfg.Name)
				p.held.Store(false)
				l.cancel()
				l = lease{}
				timer.Reset(0)
			}
			continue
		case <-timer.C:
		}
		timer.Reset(p.jittered())
		pr := p.cfg.Progress()
		if pr.LastChange != rec.LastChange || rec.LastChangeAt.IsZero() {
			rec.LastChangeAt = p.cfg.Now().UTC()
		}
		rec.CANotAfter, rec.Revision, rec.LastChange = pr.CANotAfter.UTC(), pr.Revision, pr.LastChange
		err := p.publish(ctx, &l, rec, &written)
		switch {
		case err != nil && !failing:
			failing = true
			p.log.Warn("publishing this host's node record; retrying", "node_name", p.cfg.Name, "error", p.explain(err))
		case err == nil && failing:
			failing = false
			p.log.Info("node record published again", "node_name", p.cfg.Name)
		}
	}
}

func (p *NodeRecord) jittered() time.Duration {
	return time.Duration(float64(p.cfg.Every) * (0.9 + 0.2*rand.Float64()))
}

// publish writes rec if it changed since written or written is older than Heartbeat, and,
// without a lease, takes one and writes the alive key with the record in one transaction (a
// host is never alive without a record).
func (p *NodeRecord) publish(ctx context.Context, l *lease, rec Record, written *Record) error {
	now := p.cfg.Now().UTC()
	if l.id != 0 && sameRecord(rec, *written) && now.Sub(written.LastSeen) < p.cfg.Heartbeat {
		return nil
	}
	rec.LastSeen = now
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	if l.id != 0 {
		resp, err := p.cfg.Client.Txn(cctx).
			If(clientv3.Compare(clientv3.LeaseValue(p.alive), "=", l.id)).
			Then(clientv3.OpPut(p.node, string(val))).
			Else(clientv3.OpGet(p.alive)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			*written = rec
			return nil
		}
		// The alive key is gone (the lease ended before KeepAlive said so) or another
		// host's: give the lease up and take the key again when it is free.
		p.held.Store(false)
		_, _ = p.cfg.Client.Revoke(cctx, l.id)
		l.cancel()
		*l = lease{}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			return p.heldElsewhere(clientv3.LeaseID(kvs[0].Lease), true)
		}
		return errors.New("this host's alive key is gone; taking it again")
	}
	g, err := p.cfg.Client.Grant(cctx, int64((p.cfg.TTL+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("granting a lease: %w", err)
	}
	resp, err := p.cfg.Client.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(p.alive), "=", 0)).
		Then(clientv3.OpPut(p.node, string(val)), clientv3.OpPut(p.alive, "", clientv3.WithLease(g.ID))).
		Else(clientv3.OpGet(p.alive)).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		_, _ = p.cfg.Client.Revoke(cctx, g.ID)
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			return p.heldElsewhere(clientv3.LeaseID(kvs[0].Lease), false)
		}
		return errors.New("this host's alive key changed meanwhile")
	}
	p.foreign = 0
	p.setConflict("")
	kctx, kcancel := context.WithCancel(ctx)
	ka, err := p.cfg.Client.KeepAlive(kctx, g.ID)
	if err != nil {
		kcancel()
		_, _ = p.cfg.Client.Revoke(cctx, g.ID) // else the next try would find the key another lease's
		return fmt.Errorf("keeping the lease alive: %w", err)
	}
	*l = lease{id: g.ID, ka: ka, cancel: kcancel}
	*written = rec
	p.held.Store(true)
	if p.cfg.OnHeld != nil {
		p.cfg.OnHeld()
	}
	p.log.Info("node record published", "node_name", p.cfg.Name, "lease_ttl", p.cfg.TTL.String())
	return nil
}

// sameRecord reports whether a and b say the same about the host; how far its copy is
// (Revision, LastChange, LastChangeAt) waits for the heartbeat (see the package comment).
func sameRecord(a, b Record) bool {
	return a.Name == b.Name && slices.Equal(a.Groups, b.Groups) && a.Version == b.Version &&
		a.CANotAfter.Equal(b.CANotAfter) && a.Started.Equal(b.Started)
}

// stop writes the record a last time (last_seen: now) and revokes the lease, within a
// second: a host stopping while etcd is away does not wait for it (the lease expires).
func (p *NodeRecord) stop(rec Record, id clientv3.LeaseID) {
	if id == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rec.LastSeen = p.cfg.Now().UTC()
	if val, err := json.Marshal(rec); err == nil {
		_, _ = p.cfg.Client.Put(ctx, p.node, string(val))
	}
	if _, err := p.cfg.Client.Revoke(ctx, id); err != nil {
		p.log.Warn("revoking this host's liveness lease; it expires by itself", "error", err, "lease_ttl", p.cfg.TTL.String())
	}
}

// explain adds what an operator does about a refused write.
func (p *NodeRecord) explain(err error) error {
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return fmt.Errorf("%w: this host's etcd role must allow readwrite on %shosts/%s/ (README \"Running a fleet\")", err, p.cfg.Prefix, p.cfg.Name)
	}
	return err
}

// State is a host's state in the fleet.
type State string

const (
	// StateUp: the host's alive key exists.
	StateUp State = "up"
	// StateBehind: up, but its last record, written more than BehindAfter after a registry
	// change, did not have that change in its copy.
	StateBehind State = "behind"
	// StateGone: no alive key (stopped, crashed, or cut off from etcd for a lease TTL).
	StateGone State = "gone"
)

// Host is one host as List sees it.
type Host struct {
	Record
	State State
	// Problem says why the record could not be read (the host is then listed by name).
	Problem string
}

// Fleet is every host that has a record or an alive key, by name.
type Fleet struct {
	// LastChange is the newest registry change known (etcd revision): the newest entry
	// written, or a newer change (a delete) some host reports in its record.
	LastChange int64
	Hosts      []Host
}

// List reads every host's record and alive key and the newest entry, in one transaction (one
// consistent read), and judges each host's state (Judge).
func List(ctx context.Context, cli *clientv3.Client, prefix string, behindAfter time.Duration) (Fleet, error) {
	hosts := hostsPrefix(prefix)
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(hosts, clientv3.WithPrefix()),
		clientv3.OpGet(prefix+"entries/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1)),
	).Commit()
	if err != nil {
		return Fleet{}, fmt.Errorf("reading the node records: %w", err)
	}
	byName := map[string]*Host{}
	get := func(name string) *Host {
		h := byName[name]
		if h == nil {
			h = &Host{Record: Record{Name: name}, State: StateGone}
			byName[name] = h
		}
		return h
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		name, what, ok := strings.Cut(string(kv.Key[len(hosts):]), "/")
		if !ok || name == "" {
			continue
		}
		switch what {
		case "alive":
			get(name).State = StateUp
		case "node":
			h := get(name)
			var r Record
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				h.Problem = fmt.Sprintf("unreadable node record: %v", err)
				continue
			}
			if r.Name != name {
				h.Problem = fmt.Sprintf("node record names %q", r.Name)
				continue
			}
			h.Record = r
		}
	}
	var newest Newest
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 1 {
		var e entry.Entry
		// An unreadable entry still has a revision; when it was made is then bounded by the
		// hosts' records alone (Judge).
		_ = json.Unmarshal(kvs[0].Value, &e)
		newest = Newest{Revision: kvs[0].ModRevision, At: e.UpdatedAt}
	}
	var out Fleet
	for _, h := range byName {
		out.Hosts = append(out.Hosts, *h)
	}
	slices.SortFunc(out.Hosts, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	out.LastChange = Judge(out.Hosts, newest, behindAfter)
	return out, nil
}

// Newest is the newest entry written: its etcd revision and UpdatedAt.
type Newest struct {
	Revision int64
	At       time.Time
}

// Judge marks hosts that are up but behind, and returns the newest registry change known.
//
// The rule: let E be the newest registry change known, the newest entry written or the
// newest change any host's record reports (only a host that saw a delete happen knows of it:
// a delete leaves no key). A host is behind when it is up, its copy does not hold E
// (Revision < E), and it wrote its record more than behindAfter after E was made. When E was
// made is bounded from above by evidence that does not move: the entry's UpdatedAt, and the
// last_change_at of every record whose newest change is E. A host is therefore never called
// behind for a change made just before its last record, and a quiet registry (E old, held by
// everyone) makes no host behind. A host whose record predates E is judged at its next
// record. Times come from different hosts' clocks: behindAfter must exceed their skew.
func Judge(hosts []Host, newest Newest, behindAfter time.Duration) (lastChange int64) {
	e := newest.Revision
	for _, h := range hosts {
		if h.Problem == "" {
			e = max(e, h.LastChange)
		}
	}
	if e == 0 {
		return 0
	}
	var madeBy time.Time // an upper bound of when E was made; zero: none known
	bound := func(t time.Time) {
		if !t.IsZero() && (madeBy.IsZero() || t.Before(madeBy)) {
			madeBy = t
		}
	}
	if newest.Revision == e {
		bound(newest.At)
	}
	for _, h := range hosts {
		if h.Problem == "" && h.LastChange == e {
			bound(h.LastChangeAt)
		}
	}
	for i := range hosts {
		h := &hosts[i]
		if h.State == StateUp && h.Problem == "" && h.Revision < e && !madeBy.IsZero() && h.LastSeen.Sub(madeBy) > behindAfter {
			h.State = StateBehind
		}
	}
	return e
}

// ErrHostUp refuses to forget a host whose alive key exists.
var ErrHostUp = errors.New("the host is up")

// ErrNoHost is a name with no node record.
var ErrNoHost = errors.New("no such host")

// Forget deletes the node record of a host that is gone, and returns it as it was. A host
// that is up is refused (ErrHostUp): it would write its record again within a minute.
func Forget(ctx context.Context, cli *clientv3.Client, prefix, name string) (Record, error) {
	if err := CheckNodeName(name); err != nil {
		return Record{}, err
	}
	node, alive := hostKey(prefix, name, "node"), hostKey(prefix, name, "alive")
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(alive), "=", 0)).
		Then(clientv3.OpDelete(node, clientv3.WithPrevKV())).
		Commit()
	if err != nil {
		return Record{}, fmt.Errorf("forgetting host %s: %w", name, err)
	}
	if !resp.Succeeded {
		return Record{}, fmt.Errorf("forgetting host %s: %w (its alive key exists); stop svidd there first", name, ErrHostUp)
	}
	prev := resp.Responses[0].GetResponseDeleteRange().PrevKvs
	if len(prev) == 0 {
		return Record{}, fmt.Errorf("forgetting host %s: %w", name, ErrNoHost)
	}
	var r Record
	_ = json.Unmarshal(prev[0].Value, &r)
	r.Name = name
	return r, nil
}
