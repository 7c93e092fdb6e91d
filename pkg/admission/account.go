package admission

import (
	"context"
	"log/slog"
	"time"
)

// Account is one stream's share of its uid's byte budget, and its log budget. The stream
// interceptor opens one for every stream and call of a peer-credentialed connection and puts
// it in the handler's context (AccountFrom); it is closed, releasing everything it holds,
// when the handler returns, so a front-end never has to release on its way out.
//
// A front-end says what its stream holds on the caller's behalf with Set: the names it
// keeps, the versions a client claimed, the state it remembers. Growth is checked against
// the uid's budget: MaxBytesPerUID for a caller entitled to something, and for a caller
// entitled to nothing (whose names can only wait for an entry) MaxUnentitledBytesPerUID,
// which then also covers the stream itself (UnentitledStreamBytes).
//
// The methods of a nil *Account do nothing and allow everything (a server without a
// Controller, tests). An Account is used by its stream's goroutines; its methods are safe
// for concurrent use.
type Account struct {
	c    *Controller
	s    *uidState
	held int64     // bytes charged, guarded by c.mu
	done bool      // closed, guarded by c.mu
	logs logBudget // the stream's own lines, guarded by c.mu
}

// Set makes n the bytes this stream holds. Growing past the uid's budget is refused with a
// *LimitError (codes.ResourceExhausted) and changes nothing: the front-end must not keep
// what it was about to store, and normally ends the stream with the error. Shrinking always
// succeeds. entitled says whether the caller is entitled to anything now (a non-empty View):
// it picks the budget.
func (a *Account) Set(n int64, entitled bool) error {
	if a == nil {
		return nil
	}
	c := a.c
	now := c.now()
	c.mu.Lock()
	var err error
	if grow := n - a.held; !a.done && grow != 0 {
		limit, reason := int64(c.cfg.MaxBytesPerUID), Bytes
		if u := int64(c.cfg.MaxUnentitledBytesPerUID); !entitled && u < limit {
			limit, reason = u, UnentitledBytes
		}
		if grow > 0 && a.s.bytes+grow > limit {
			err = c.refuse(a.s, reason, float64(limit))
			f := &a.s.full
			f.at, f.reason, f.limit, f.bytes = now, reason, float64(limit), a.s.bytes
		} else {
			a.s.bytes += grow
			a.held = n
		}
	}
	warn := c.warning(a.s, now, err)
	c.mu.Unlock()
	if err != nil {
		c.rejected(err, warn)
	}
	return err
}

// Held returns the bytes the stream holds (tests).
func (a *Account) Held() int64 {
	if a == nil {
		return 0
	}
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	return a.held
}

// close releases the stream's bytes and its open-stream slot. Later calls do nothing.
func (a *Account) close() {
	c := a.c
	now := c.now()
	c.mu.Lock()
	if !a.done {
		a.done = true
		a.s.bytes -= a.held
		a.held = 0
		a.s.openStreams--
		a.s.lastSeen = now
	}
	c.mu.Unlock()
}

// Log budgets: what one stream, and one uid, may write to the log about their requests.
// A client controls how often it makes svidd log (a NACK loop wrote 900,000 lines in 10 s,
// issue 11); an operator needs the first lines and a count of the rest. The per-uid budget
// is what bounds the log: forking more streams or connections does not raise it.
const (
	streamLogBurst = 5
	streamLogRate  = 0.2 // lines per second, steady
	uidLogBurst    = 20
	uidLogRate     = 1
)

// logBudget is a token bucket of log lines and the count of lines it dropped since the last
// one it let through.
type logBudget struct {
	b          bucket
	started    bool
	suppressed int
}

// allow spends a line if there is one. An unused budget starts full.
func (l *logBudget) allow(now time.Time, rate, burst float64) bool {
	if !l.started {
		l.started = true
		l.b = bucket{tokens: burst, at: now}
	}
	if l.b.take(now, rate, burst) {
		return true
	}
	l.suppressed++
	return false
}

// Log writes one record about the stream's caller to l at level, unless the stream's or its
// uid's log budget is spent; then it counts the line (Config.OnLogSuppressed) and drops it.
// The first line let through after some were dropped is preceded by a summary line with the
// count ("suppressed similar log lines", suppressed=N). Use it for every line a client can
// make svidd write at will (a NACK, a failed attestation, a stream opened), not for debug
// lines, which an operator turns on to see everything.
func (a *Account) Log(l *slog.Logger, level slog.Level, msg string, args ...any) {
	if a == nil {
		l.Log(context.Background(), level, msg, args...)
		return
	}
	c := a.c
	now := c.now()
	c.mu.Lock()
	ok := a.logs.allow(now, streamLogRate, streamLogBurst) && a.s.logs.allow(now, uidLogRate, uidLogBurst)
	var suppressed int
	if ok {
		suppressed = a.logs.suppressed + a.s.logs.suppressed
		a.logs.suppressed, a.s.logs.suppressed = 0, 0
	}
	c.mu.Unlock()
	if !ok {
		c.logSuppressed()
		return
	}
	if suppressed > 0 {
		l.Log(context.Background(), level, "suppressed similar log lines", "suppressed", suppressed)
	}
	l.Log(context.Background(), level, msg, args...)
}

func (c *Controller) logSuppressed() {
	if c.cfg.OnLogSuppressed != nil {
		c.cfg.OnLogSuppressed()
	}
}

type accountKey struct{}

// NewContext returns ctx carrying a (the interceptors do this; tests of front-ends too).
func NewContext(ctx context.Context, a *Account) context.Context {
	return context.WithValue(ctx, accountKey{}, a)
}

// AccountFrom returns the stream's Account, or nil when ctx has none (a connection without
// peer credentials, a server without a Controller): nil allows everything.
func AccountFrom(ctx context.Context) *Account {
	a, _ := ctx.Value(accountKey{}).(*Account)
	return a
}

// NewAccount opens an Account for uid outside a gRPC stream, taking one of its open-stream
// slots; close it with the returned func. Front-ends' tests use it with NewContext.
func (c *Controller) NewAccount(uid uint32) (*Account, func(), error) {
	a, err := c.openStream(uid)
	if err != nil {
		return nil, nil, err
	}
	return a, a.close, nil
}
