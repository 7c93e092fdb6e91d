package admission

import (
	"errors"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/conf"
)

// clock is a settable time for the controller under test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newController(t *testing.T, cfg Config) (*Controller, *clock) {
	t.Helper()
	clk := newClock()
	cfg.Now = clk.now
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, clk
}

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// rate 10/s, burst 3: full at t0.
	type step struct {
		ms   int
		want bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"burst then empty", []step{{0, true}, {0, true}, {0, true}, {0, false}, {50, false}}},
		{"one token per 100ms", []step{{0, true}, {0, true}, {0, true}, {99, false}, {100, true}, {150, false}, {200, true}}},
		{"refill caps at burst", []step{{0, true}, {0, true}, {0, true}, {10_000, true}, {10_000, true}, {10_000, true}, {10_000, false}}},
		{"clock going back refills nothing", []step{{500, true}, {500, true}, {500, true}, {0, false}, {400, false}, {599, false}, {600, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bucket{tokens: 3, at: t0}
			for i, s := range tc.steps {
				if got := b.take(at(s.ms), 10, 3); got != s.want {
					t.Fatalf("step %d (t=%dms): take = %v, want %v (tokens %.3f)", i, s.ms, got, s.want, b.tokens)
				}
			}
		})
	}

	b := bucket{tokens: 0, at: t0}
	if b.full(at(299), 10, 3) || !b.full(at(300), 10, 3) {
		t.Error("an empty bucket at 10/s with burst 3 must be full after exactly 300ms")
	}
	if b.tokens != 0 || !b.at.Equal(t0) {
		t.Error("full changed the bucket")
	}
}

func TestConnectionLimits(t *testing.T) {
	var rejects []Reason
	c, clk := newController(t, Config{ConnectionsPerSecond: 2, ConnectionBurst: 3, MaxOpenConnectionsPerUID: 4,
		OnReject: func(r Reason) { rejects = append(rejects, r) }})

	var releases []func()
	open := func(uid uint32) error {
		rel, err := c.OpenConnection(uid)
		if err == nil {
			releases = append(releases, rel)
		}
		return err
	}
	for i := range 3 {
		if err := open(1001); err != nil {
			t.Fatalf("connection %d within the burst: %v", i, err)
		}
	}
	err := open(1001)
	var le *LimitError
	if !errors.As(err, &le) || le.Reason != ConnectionRate || le.UID != 1001 {
		t.Fatalf("fourth connection at once: %v, want a connection-rate refusal for uid 1001", err)
	}
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "too many connections from uid 1001") {
		t.Errorf("status = %v", st)
	}
	// Another uid is not affected.
	if err := open(1002); err != nil {
		t.Fatalf("uid 1002 refused because of uid 1001: %v", err)
	}
	// 500ms at 2/s refills one token: one more connection (the 4th open), then the open cap.
	clk.advance(500 * time.Millisecond)
	if err := open(1001); err != nil {
		t.Fatalf("after refill: %v", err)
	}
	clk.advance(10 * time.Second)
	if err := open(1001); !errors.As(err, &le) || le.Reason != OpenConnections {
		t.Fatalf("fifth open connection: %v, want an open-connections refusal", err)
	}
	if conns, _ := c.Open(1001); conns != 4 {
		t.Fatalf("open connections = %d, want 4", conns)
	}
	// Releasing one frees one slot, once however often it is called.
	releases[0]()
	releases[0]()
	if conns, _ := c.Open(1001); conns != 3 {
		t.Fatalf("after release: open connections = %d, want 3", conns)
	}
	if err := open(1001); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if err := open(1001); err == nil {
		t.Fatal("the double release freed two slots")
	}
	if want := []Reason{ConnectionRate, OpenConnections, OpenConnections}; !equal(rejects, want) {
		t.Errorf("OnReject got %v, want %v", rejects, want)
	}
}

func TestStreamLimits(t *testing.T) {
	c, clk := newController(t, Config{StreamsPerSecond: 100, StreamBurst: 5, MaxOpenStreamsPerUID: 3})

	// The rate: 5 at once, then one per 10ms.
	for i := range 5 {
		if err := c.NewStream(7); err != nil {
			t.Fatalf("stream %d within the burst: %v", i, err)
		}
	}
	err := c.NewStream(7)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "too many streams from uid 7") {
		t.Fatalf("sixth stream at once: %v, want ResourceExhausted naming uid 7", err)
	}
	if err := c.NewStream(8); err != nil {
		t.Fatalf("uid 8 refused because of uid 7: %v", err)
	}
	clk.advance(10 * time.Millisecond)
	if err := c.NewStream(7); err != nil {
		t.Fatalf("after 10ms at 100/s: %v", err)
	}

	// The open cap, released when a stream ends.
	var rels []func()
	for i := range 3 {
		rel, err := c.OpenStream(7)
		if err != nil {
			t.Fatalf("open stream %d: %v", i, err)
		}
		rels = append(rels, rel)
	}
	_, err = c.OpenStream(7)
	var le *LimitError
	if !errors.As(err, &le) || le.Reason != OpenStreams || !strings.Contains(err.Error(), "too many streams from uid 7: 3 open") {
		t.Fatalf("fourth open stream: %v", err)
	}
	if !IsLimit(err) || IsLimit(errors.New("x")) {
		t.Error("IsLimit")
	}
	rels[1]()
	rels[1]()
	if _, n := c.Open(7); n != 2 {
		t.Fatalf("open streams after one release = %d, want 2", n)
	}
	if _, err := c.OpenStream(7); err != nil {
		t.Fatalf("after a stream ended: %v", err)
	}
}

// TestIdleEviction: a uid's state goes once it holds nothing open and both buckets are full
// again, and never while it holds something open.
func TestIdleEviction(t *testing.T) {
	c, clk := newController(t, Config{ConnectionsPerSecond: 10, ConnectionBurst: 10, StreamsPerSecond: 10, StreamBurst: 100})

	relConn, err := c.OpenConnection(1)
	if err != nil {
		t.Fatal(err)
	}
	relStream, err := c.OpenStream(1)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if err := c.NewStream(2); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.Tracked(); n != 2 {
		t.Fatalf("tracked = %d, want 2", n)
	}
	// uid 2 drained its stream bucket: 100 tokens at 10/s refill in 10s; the sweep runs every
	// minute. uid 1 holds a connection and a stream.
	clk.advance(sweepEvery)
	_ = c.NewStream(3) // any call sweeps
	if _, ok := c.uids[2]; ok {
		t.Error("idle uid 2 still tracked after its buckets refilled")
	}
	if _, ok := c.uids[1]; !ok {
		t.Fatal("uid 1 evicted while it holds a connection and a stream")
	}
	relStream()
	clk.advance(sweepEvery)
	_ = c.NewStream(3)
	if _, ok := c.uids[1]; !ok {
		t.Fatal("uid 1 evicted while it holds a connection")
	}
	relConn()
	clk.advance(sweepEvery)
	_ = c.NewStream(3)
	if _, ok := c.uids[1]; ok {
		t.Error("uid 1 still tracked after releasing everything")
	}

	// A partly drained bucket keeps the state (a sweep must not forgive the debt); a full
	// one does not.
	for range 50 {
		_ = c.NewStream(4)
	}
	sweepAt := func(d time.Duration) bool {
		clk.advance(d)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.sweep(clk.now())
		_, kept := c.uids[4]
		return kept
	}
	if !sweepAt(2 * time.Second) { // 50+20 of 100 tokens
		t.Error("uid 4 evicted with a partly drained stream bucket")
	}
	if sweepAt(3 * time.Second) { // 50+50
		t.Error("uid 4 kept with both buckets full and nothing open")
	}
}

// TestTableBound: the uid table never exceeds MaxUIDs. Idle uids go first, then the least
// recently seen uid with nothing open; when every tracked uid holds something open, a new
// uid is refused.
func TestTableBound(t *testing.T) {
	c, clk := newController(t, Config{MaxUIDs: 4, StreamsPerSecond: 1, StreamBurst: 10})

	// Churn through many uids, each draining part of its bucket (so none is idle).
	for uid := uint32(0); uid < 1000; uid++ {
		clk.advance(time.Millisecond)
		if err := c.NewStream(uid); err != nil {
			t.Fatalf("uid %d: %v", uid, err)
		}
		if n := c.Tracked(); n > 4 {
			t.Fatalf("tracked %d uids, bound is 4", n)
		}
	}
	// The most recent uids are the ones kept.
	for uid := uint32(996); uid < 1000; uid++ {
		if _, ok := c.uids[uid]; !ok {
			t.Errorf("recent uid %d evicted", uid)
		}
	}

	// Four uids hold streams open: a fifth cannot be tracked and is refused.
	var rels []func()
	for uid := uint32(2000); uid < 2004; uid++ {
		rel, err := c.OpenStream(uid)
		if err != nil {
			t.Fatalf("uid %d: %v", uid, err)
		}
		rels = append(rels, rel)
	}
	_, err := c.OpenStream(3000)
	var le *LimitError
	if !errors.As(err, &le) || le.Reason != TooManyUIDs {
		t.Fatalf("fifth uid with the table full of open streams: %v, want too_many_uids", err)
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("code = %v", status.Code(err))
	}
	// Their state is intact: releasing works, and then the newcomer fits.
	rels[0]()
	if _, err := c.OpenStream(3000); err != nil {
		t.Fatalf("after one uid closed its stream: %v", err)
	}
	if n := c.Tracked(); n != 4 {
		t.Fatalf("tracked = %d, want 4", n)
	}
}

func TestConfig(t *testing.T) {
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := c.Config()
	if got.ConnectionsPerSecond != DefaultConnectionsPerSecond || got.StreamBurst != DefaultStreamBurst ||
		got.MaxOpenStreamsPerUID != DefaultMaxOpenStreamsPerUID || got.MaxMessageBytes != DefaultMaxMessageBytes || got.MaxUIDs != DefaultMaxUIDs {
		t.Errorf("defaults not applied: %+v", got)
	}
	// The benchmark of issue 6 opens 10,000 streams at once from one uid on one connection.
	if got.StreamBurst < 10000 || got.MaxOpenStreamsPerUID < 10000 || got.ConnectionBurst < 1000 || got.MaxOpenConnectionsPerUID < 1000 {
		t.Errorf("defaults too low for the benchmarks: %+v", got)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative rate", Config{StreamsPerSecond: -1}, "streams per second must be a positive number"},
		{"NaN rate", Config{ConnectionsPerSecond: math.NaN()}, "connections per second"},
		{"infinite rate", Config{ConnectionsPerSecond: math.Inf(1)}, "connections per second"},
		{"negative burst", Config{StreamBurst: -5}, "stream burst must be between 1 and"},
		{"huge cap", Config{MaxOpenStreamsPerUID: math.MaxInt32 + 1}, "max open streams per uid"},
		{"negative message size", Config{MaxMessageBytes: -1}, "max message bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestDefaultsMatchConf: conf (which may not import us) documents the same defaults.
func TestDefaultsMatchConf(t *testing.T) {
	l := conf.Default().Limits
	got := Config{
		ConnectionsPerSecond:     float64(l.ConnectionsPerSecond),
		ConnectionBurst:          l.ConnectionBurst,
		MaxOpenConnectionsPerUID: l.MaxOpenConnectionsPerUID,
		StreamsPerSecond:         float64(l.StreamsPerSecond),
		StreamBurst:              l.StreamBurst,
		MaxOpenStreamsPerUID:     l.MaxOpenStreamsPerUID,
		MaxMessageBytes:          l.MaxMessageBytes,
		MaxBytesPerUID:           l.MaxBytesPerUID,
		MaxUnentitledBytesPerUID: l.MaxUnentitledBytesPerUID,
	}
	want := Config{
		ConnectionsPerSecond:     DefaultConnectionsPerSecond,
		ConnectionBurst:          DefaultConnectionBurst,
		MaxOpenConnectionsPerUID: DefaultMaxOpenConnectionsPerUID,
		StreamsPerSecond:         DefaultStreamsPerSecond,
		StreamBurst:              DefaultStreamBurst,
		MaxOpenStreamsPerUID:     DefaultMaxOpenStreamsPerUID,
		MaxMessageBytes:          DefaultMaxMessageBytes,
		MaxBytesPerUID:           DefaultMaxBytesPerUID,
		MaxUnentitledBytesPerUID: DefaultMaxUnentitledBytesPerUID,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("conf.Default().Limits = %+v\nadmission defaults    = %+v", got, want)
	}
}

// TestWarningsRateLimited: a flood logs one line per uid per warnEvery, carrying the count
// of refusals it did not log.
func TestWarningsRateLimited(t *testing.T) {
	var log logRecorder
	c, clk := newController(t, Config{StreamsPerSecond: 1, StreamBurst: 1, Logger: log.logger()})
	_ = c.NewStream(5)
	for range 1000 {
		_ = c.NewStream(5)
	}
	if n := log.count(); n != 1 {
		t.Fatalf("%d warnings for one uid's flood, want 1", n)
	}
	clk.advance(warnEvery)
	_ = c.NewStream(5) // a token is back: admitted
	_ = c.NewStream(5)
	if n := log.count(); n != 2 || !strings.Contains(log.last(), "refused_since_last_warning=999") {
		t.Fatalf("warnings = %d, last %q", n, log.last())
	}
}

// logRecorder collects log lines.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, string(p))
	return len(p), nil
}

func (l *logRecorder) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func (l *logRecorder) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

func (l *logRecorder) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 0 {
		return ""
	}
	return l.lines[len(l.lines)-1]
}

func equal(a, b []Reason) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func BenchmarkNewStreamRefused(b *testing.B) {
	c, err := New(Config{StreamsPerSecond: 1, StreamBurst: 1})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		_ = c.NewStream(1)
	}
}
