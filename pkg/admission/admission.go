package admission

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults. They are sized so that nothing legitimate ever meets them: one Envoy holds
// dozens of streams (one per secret config) and reopens them all on a restart, and the
// benchmarks of issue 6 open 10,000 streams at once from one uid on one connection and 1,000
// connections at once from one uid. Each burst therefore equals its open cap: a uid may
// (re)open its whole allowance at once, and after that new ones at the steady rate. On a
// small host an operator lowers them in the limits {} block.
const (
	DefaultConnectionsPerSecond     = 200
	DefaultConnectionBurst          = 2048
	DefaultMaxOpenConnectionsPerUID = 2048
	DefaultStreamsPerSecond         = 2000
	DefaultStreamBurst              = 20000
	DefaultMaxOpenStreamsPerUID     = 20000
	// DefaultMaxMessageBytes bounds one received gRPC message. An SDS request is a node plus
	// up to sds.MaxResourceNames names; even Istio's large node metadata is tens of KiB.
	DefaultMaxMessageBytes = 256 << 10
	// DefaultMaxUIDs bounds the table of per-uid state. Only a uid with something open can
	// hold a slot for long, and a user without root has one uid.
	DefaultMaxUIDs = 16384
	// DefaultMaxBytesPerUID bounds what one uid's streams make svidd hold (see Account):
	// the names they subscribe to and the state kept for them. An Envoy asking for dozens
	// of secrets holds a few KiB; the benchmarks' 10,000 streams of one name, about 2 MiB.
	DefaultMaxBytesPerUID = 64 << 20
	// DefaultMaxUnentitledBytesPerUID is the budget of streams whose caller is entitled to
	// nothing (an empty View): an Envoy waiting for its entry keeps its streams and names,
	// a few hundred of them fit; a uid without an entry cannot grow svidd further.
	DefaultMaxUnentitledBytesPerUID = 4 << 20
)

// UnentitledStreamBytes is charged to each open stream whose caller is entitled to nothing,
// besides its names: what such a stream costs svidd's process (an idle SDS stream measured
// 15.2 KiB of RSS at 10,000 streams, issue 6: gRPC's stream, the handler's goroutine, the
// stream's state and subscription). A stream of an entitled caller is not charged it: its
// overhead is bounded by max_open_streams_per_uid, which the benchmarks need at 10,000.
const UnentitledStreamBytes = 16 << 10

// Connection bounds that are not configurable.
const (
	// maxHeaderListSize bounds a request's HTTP/2 headers (gRPC's default is 16 MiB). Envoy's
	// SDS requests carry a few hundred bytes of headers.
	maxHeaderListSize = 32 << 10
	// minPingInterval is the keepalive enforcement policy: a client may ping at most every
	// 5s (gRPC's default is 5 minutes, which makes Envoy connections with a shorter
	// keepalive interval fail with too_many_pings), with or without open streams.
	minPingInterval = 5 * time.Second
	// warnEvery rate-limits the log line about one uid's refusals: a flood must not turn
	// into a log flood.
	warnEvery = 10 * time.Second
	// fullFor is how long after a uid met a byte budget its new streams are refused at once,
	// unless it released bytes meanwhile.
	fullFor = time.Second
	// sweepEvery is how often idle uid state is dropped (also whenever the table is full).
	sweepEvery = time.Minute
)

// Reason says which limit refused a caller; it is a bounded label for metrics.
type Reason string

// The limits.
const (
	ConnectionRate  Reason = "connection_rate"
	OpenConnections Reason = "open_connections"
	StreamRate      Reason = "stream_rate"
	OpenStreams     Reason = "open_streams"
	// TooManyUIDs: the uid table is full of uids that all hold connections or streams open.
	TooManyUIDs Reason = "too_many_uids"
	// Bytes: the uid's streams hold MaxBytesPerUID; UnentitledBytes: a stream of a caller
	// entitled to nothing would take the uid past MaxUnentitledBytesPerUID.
	Bytes           Reason = "bytes"
	UnentitledBytes Reason = "unentitled_bytes"
)

// Config holds the limits. A zero field takes its default; a negative one is an error.
type Config struct {
	ConnectionsPerSecond     float64 // steady rate of new connections per uid
	ConnectionBurst          int     // new connections a uid may make at once
	MaxOpenConnectionsPerUID int
	StreamsPerSecond         float64 // steady rate of new streams (and unary calls) per uid
	StreamBurst              int     // new streams a uid may open at once
	// MaxOpenStreamsPerUID caps a uid's concurrently open streams and unary calls. It is
	// also each connection's HTTP/2 MAX_CONCURRENT_STREAMS: a connection belongs to one
	// uid, so it could not usefully hold more.
	MaxOpenStreamsPerUID int
	MaxMessageBytes      int // largest gRPC message a client may send
	MaxUIDs              int // bound on the uids tracked at once (default DefaultMaxUIDs)
	// MaxBytesPerUID bounds the bytes a uid's open streams hold (Account.Set);
	// MaxUnentitledBytesPerUID the bytes up to which a stream of a caller entitled to
	// nothing may add to them (it is never above MaxBytesPerUID).
	MaxBytesPerUID           int
	MaxUnentitledBytesPerUID int

	// Logger receives one line per uid and warnEvery while it is being refused.
	Logger *slog.Logger
	// OnReject, when set, is called for every refusal (for a metric). It must not block.
	OnReject func(Reason)
	// OnLogSuppressed, when set, is called for every log line dropped by the log budgets
	// (Account.Log, refusal warnings). It must not block.
	OnLogSuppressed func()
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Controller holds every uid's counters. It is safe for concurrent use and starts no
// goroutine: idle state is swept lazily by the calls themselves.
type Controller struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu          sync.Mutex
	uids        map[uint32]*uidState
	lastSweep   time.Time
	tableWarnAt time.Time
}

// uidState is one uid's counters. A state with anything open is never evicted, so a release
// always finds the state it acquired from.
type uidState struct {
	uid         uint32
	conns       bucket
	streams     bucket
	openConns   int
	openStreams int
	bytes       int64 // held by the uid's open streams' Accounts
	lastSeen    time.Time
	warnAt      time.Time // last warning logged about this uid
	suppressed  int       // refusals since then not logged
	logs        logBudget // lines about the uid's requests (Account.Log)
	// full is the uid's last refusal by a byte budget (Account.Set): for fullFor after it,
	// while the uid holds no fewer bytes, new streams are refused at once (NewStream).
	full struct {
		at     time.Time
		reason Reason // "" when never refused
		limit  float64
		bytes  int64
	}
}

// New validates cfg and fills in defaults.
func New(cfg Config) (*Controller, error) {
	if err := defaults(&cfg); err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: cfg.Logger, now: cfg.Now, uids: make(map[uint32]*uidState)}
	c.lastSweep = c.now()
	return c, nil
}

func defaults(cfg *Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	rates := []struct {
		name string
		v    *float64
		def  float64
	}{
		{"connections per second", &cfg.ConnectionsPerSecond, DefaultConnectionsPerSecond},
		{"streams per second", &cfg.StreamsPerSecond, DefaultStreamsPerSecond},
	}
	for _, r := range rates {
		switch {
		case *r.v == 0:
			*r.v = r.def
		case !(*r.v > 0) || math.IsInf(*r.v, 0): // also NaN
			return fmt.Errorf("admission: %s must be a positive number, got %v", r.name, *r.v)
		}
	}
	counts := []struct {
		name string
		v    *int
		def  int
	}{
		{"connection burst", &cfg.ConnectionBurst, DefaultConnectionBurst},
		{"max open connections per uid", &cfg.MaxOpenConnectionsPerUID, DefaultMaxOpenConnectionsPerUID},
		{"stream burst", &cfg.StreamBurst, DefaultStreamBurst},
		{"max open streams per uid", &cfg.MaxOpenStreamsPerUID, DefaultMaxOpenStreamsPerUID},
		{"max message bytes", &cfg.MaxMessageBytes, DefaultMaxMessageBytes},
		{"max uids", &cfg.MaxUIDs, DefaultMaxUIDs},
		{"max bytes per uid", &cfg.MaxBytesPerUID, DefaultMaxBytesPerUID},
		{"max unentitled bytes per uid", &cfg.MaxUnentitledBytesPerUID, DefaultMaxUnentitledBytesPerUID},
	}
	for _, n := range counts {
		switch {
		case *n.v == 0:
			*n.v = n.def
		case *n.v < 0 || *n.v > math.MaxInt32:
			return fmt.Errorf("admission: %s must be between 1 and %d, got %d", n.name, math.MaxInt32, *n.v)
		}
	}
	return nil
}

// Config returns the effective configuration (defaults filled in).
func (c *Controller) Config() Config { return c.cfg }

// LimitError is a refusal. It converts to a gRPC status with codes.ResourceExhausted.
type LimitError struct {
	UID    uint32
	Reason Reason
	Limit  float64 // the limit that was met (per second for rates)
}

func (e *LimitError) Error() string {
	switch e.Reason {
	case ConnectionRate:
		return fmt.Sprintf("too many connections from uid %d: more than %g per second", e.UID, e.Limit)
	case OpenConnections:
		return fmt.Sprintf("too many connections from uid %d: %g open", e.UID, e.Limit)
	case StreamRate:
		return fmt.Sprintf("too many streams from uid %d: more than %g new per second", e.UID, e.Limit)
	case OpenStreams:
		return fmt.Sprintf("too many streams from uid %d: %g open", e.UID, e.Limit)
	case Bytes:
		return fmt.Sprintf("streams of uid %d hold too much: more than %.0f bytes of names and state", e.UID, e.Limit)
	case UnentitledBytes:
		return fmt.Sprintf("streams of uid %d hold too much for a caller entitled to nothing: more than %.0f bytes of names and state", e.UID, e.Limit)
	default:
		return fmt.Sprintf("too many callers: uid %d cannot be tracked (%g uids hold connections)", e.UID, e.Limit)
	}
}

// GRPCStatus lets status.FromError (and gRPC itself) turn the refusal into ResourceExhausted.
func (e *LimitError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, e.Error())
}

// IsLimit reports whether err is a refusal by a Controller.
func IsLimit(err error) bool {
	var le *LimitError
	return errors.As(err, &le)
}

// OpenConnection admits a new connection from uid: it takes a token from the uid's
// connection bucket and an open-connection slot. The returned release frees the slot; call it
// once, when the connection closes (later calls do nothing).
func (c *Controller) OpenConnection(uid uint32) (release func(), err error) {
	now := c.now()
	c.mu.Lock()
	s, err := c.state(uid, now)
	if err == nil {
		switch {
		case s.openConns >= c.cfg.MaxOpenConnectionsPerUID:
			err = c.refuse(s, OpenConnections, float64(c.cfg.MaxOpenConnectionsPerUID))
		case !s.conns.take(now, c.cfg.ConnectionsPerSecond, float64(c.cfg.ConnectionBurst)):
			err = c.refuse(s, ConnectionRate, c.cfg.ConnectionsPerSecond)
		default:
			s.openConns++
		}
	}
	warn := c.warning(s, now, err)
	c.mu.Unlock()
	if err != nil {
		c.rejected(err, warn)
		return nil, err
	}
	return c.releaser(s, func(s *uidState) { s.openConns-- }), nil
}

// NewStream charges a new stream (or unary call) from uid against its stream rate. It holds
// nothing open; OpenStream does.
func (c *Controller) NewStream(uid uint32) error {
	now := c.now()
	c.mu.Lock()
	s, err := c.state(uid, now)
	switch {
	case err != nil:
	case !s.streams.take(now, c.cfg.StreamsPerSecond, float64(c.cfg.StreamBurst)):
		err = c.refuse(s, StreamRate, c.cfg.StreamsPerSecond)
	case s.full.reason != "" && now.Sub(s.full.at) < fullFor && s.bytes >= s.full.bytes:
		// The uid met its byte budget a moment ago and has released nothing since: its
		// next stream would be refused too, after its requests were read and decoded
		// (megabytes a second of an attacker's names). Refuse it before that.
		err = c.refuse(s, s.full.reason, s.full.limit)
	}
	warn := c.warning(s, now, err)
	c.mu.Unlock()
	if err != nil {
		c.rejected(err, warn)
	}
	return err
}

// OpenStream takes one of uid's open-stream slots. The returned release frees it; call it
// once, when the stream (or call) ends.
func (c *Controller) OpenStream(uid uint32) (release func(), err error) {
	a, err := c.openStream(uid)
	if err != nil {
		return nil, err
	}
	return a.close, nil
}

// openStream takes an open-stream slot and returns the stream's Account, whose close frees
// the slot and every byte the stream holds.
func (c *Controller) openStream(uid uint32) (*Account, error) {
	now := c.now()
	c.mu.Lock()
	s, err := c.state(uid, now)
	if err == nil {
		if s.openStreams >= c.cfg.MaxOpenStreamsPerUID {
			err = c.refuse(s, OpenStreams, float64(c.cfg.MaxOpenStreamsPerUID))
		} else {
			s.openStreams++
		}
	}
	warn := c.warning(s, now, err)
	c.mu.Unlock()
	if err != nil {
		c.rejected(err, warn)
		return nil, err
	}
	return &Account{c: c, s: s}, nil
}

// releaser returns an idempotent release of what f undoes.
func (c *Controller) releaser(s *uidState, f func(*uidState)) func() {
	var done atomic.Bool
	return func() {
		if !done.CompareAndSwap(false, true) {
			return
		}
		now := c.now()
		c.mu.Lock()
		f(s)
		s.lastSeen = now
		c.mu.Unlock()
	}
}

// Bytes returns the bytes uid's open streams hold (tests, status).
func (c *Controller) Bytes(uid uint32) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.uids[uid]; s != nil {
		return s.bytes
	}
	return 0
}

// Open returns uid's open connections and streams (tests, status).
func (c *Controller) Open(uid uint32) (conns, streams int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.uids[uid]; s != nil {
		return s.openConns, s.openStreams
	}
	return 0, 0
}

// Tracked returns how many uids have state (tests).
func (c *Controller) Tracked() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.uids)
}

// state returns uid's state, creating it with full buckets. It sweeps idle state every
// sweepEvery, and when the table is full; if the table is still full, it evicts the least
// recently seen uid that holds nothing open (forgiving it a partly drained bucket), and if
// every uid holds something open it refuses. c.mu is held.
func (c *Controller) state(uid uint32, now time.Time) (*uidState, error) {
	if now.Sub(c.lastSweep) >= sweepEvery {
		c.sweep(now)
	}
	if s := c.uids[uid]; s != nil {
		s.lastSeen = now
		return s, nil
	}
	if len(c.uids) >= c.cfg.MaxUIDs {
		c.sweep(now)
	}
	if len(c.uids) >= c.cfg.MaxUIDs && !c.evictOldest() {
		return nil, &LimitError{UID: uid, Reason: TooManyUIDs, Limit: float64(c.cfg.MaxUIDs)}
	}
	s := &uidState{
		uid:      uid,
		conns:    bucket{tokens: float64(c.cfg.ConnectionBurst), at: now},
		streams:  bucket{tokens: float64(c.cfg.StreamBurst), at: now},
		lastSeen: now,
	}
	c.uids[uid] = s
	return s, nil
}

// sweep drops every idle uid: nothing open and both buckets full again. Dropping such a
// state loses nothing, since a new state starts exactly so. c.mu is held.
func (c *Controller) sweep(now time.Time) {
	c.lastSweep = now
	for uid, s := range c.uids {
		if s.openConns == 0 && s.openStreams == 0 &&
			s.conns.full(now, c.cfg.ConnectionsPerSecond, float64(c.cfg.ConnectionBurst)) &&
			s.streams.full(now, c.cfg.StreamsPerSecond, float64(c.cfg.StreamBurst)) {
			delete(c.uids, uid)
		}
	}
}

// evictOldest drops the least recently seen uid that holds nothing open. c.mu is held.
func (c *Controller) evictOldest() bool {
	var oldest *uidState
	for _, s := range c.uids {
		if s.openConns == 0 && s.openStreams == 0 && (oldest == nil || s.lastSeen.Before(oldest.lastSeen)) {
			oldest = s
		}
	}
	if oldest == nil {
		return false
	}
	delete(c.uids, oldest.uid)
	return true
}

func (c *Controller) refuse(s *uidState, r Reason, limit float64) error {
	return &LimitError{UID: s.uid, Reason: r, Limit: limit}
}

// warning decides, under c.mu, whether this refusal is logged, and with how many refusals
// that were not. It returns -1 for "do not log".
func (c *Controller) warning(s *uidState, now time.Time, err error) int {
	if err == nil {
		return -1
	}
	at, n := &c.tableWarnAt, new(int)
	if s != nil {
		at, n = &s.warnAt, &s.suppressed
	}
	if !at.IsZero() && now.Sub(*at) < warnEvery {
		*n++
		return -1
	}
	*at = now
	suppressed := *n
	*n = 0
	return suppressed
}

func (c *Controller) rejected(err error, warn int) {
	le := err.(*LimitError)
	if c.cfg.OnReject != nil {
		c.cfg.OnReject(le.Reason)
	}
	if warn < 0 {
		c.logSuppressed()
	} else {
		c.log.Warn("refusing a caller over its limits", "uid", le.UID, "reason", string(le.Reason), "error", err.Error(),
			"refused_since_last_warning", warn)
	}
}

// bucket is a token bucket: tokens refill at rate per second up to burst; at is when tokens
// was last brought up to date.
type bucket struct {
	tokens float64
	at     time.Time
}

// refill brings tokens up to date at now. A clock that went backwards refills nothing.
func (b *bucket) refill(now time.Time, rate, burst float64) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
		b.at = now
	}
}

// take spends one token if there is one.
func (b *bucket) take(now time.Time, rate, burst float64) bool {
	b.refill(now, rate, burst)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// full reports whether the bucket would be full at now, without changing it.
func (b *bucket) full(now time.Time, rate, burst float64) bool {
	t := b.tokens
	if d := now.Sub(b.at); d > 0 {
		t += d.Seconds() * rate
	}
	return t >= burst
}
