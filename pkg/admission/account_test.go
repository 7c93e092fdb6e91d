package admission

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func newAccount(t *testing.T, c *Controller, uid uint32) *Account {
	t.Helper()
	a, done, err := c.NewAccount(uid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(done)
	return a
}

// TestAccountBudgets: a uid's streams together hold at most MaxBytesPerUID; a stream of a
// caller entitled to nothing may only grow while the uid holds less than
// MaxUnentitledBytesPerUID; a refusal changes nothing and is ResourceExhausted; shrinking
// always works; closing gives everything back, once.
func TestAccountBudgets(t *testing.T) {
	var reasons []Reason
	c, _ := newController(t, Config{MaxBytesPerUID: 1000, MaxUnentitledBytesPerUID: 300, OnReject: func(r Reason) { reasons = append(reasons, r) }})
	a := newAccount(t, c, 7)
	b := newAccount(t, c, 7)
	other := newAccount(t, c, 8)

	steps := []struct {
		acct     *Account
		n        int64
		entitled bool
		refused  Reason
		uid7     int64 // what uid 7 holds after the step
	}{
		{a, 200, false, "", 200},
		{b, 200, false, UnentitledBytes, 200}, // 400 > 300
		{b, 100, false, "", 300},              // exactly the budget
		{b, 101, false, UnentitledBytes, 300},
		{b, 600, true, "", 800}, // entitled: the large budget
		{a, 401, true, Bytes, 800},
		{a, 0, false, "", 600}, // shrinking is always allowed
		{a, 400, true, "", 1000},
		{a, 401, true, Bytes, 1000},
		{other, 1000, true, "", 1000}, // another uid has its own budget
	}
	for i, s := range steps {
		err := s.acct.Set(s.n, s.entitled)
		if s.refused == "" && err != nil {
			t.Fatalf("step %d: Set(%d, %v) = %v", i, s.n, s.entitled, err)
		}
		if s.refused != "" {
			var le *LimitError
			if !errors.As(err, &le) || le.Reason != s.refused || status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("step %d: Set(%d, %v) = %v, want a ResourceExhausted refusal by %s", i, s.n, s.entitled, err, s.refused)
			}
		}
		if got := c.Bytes(7); got != s.uid7 {
			t.Fatalf("step %d: uid 7 holds %d, want %d", i, got, s.uid7)
		}
	}
	if want := []Reason{UnentitledBytes, UnentitledBytes, Bytes, Bytes}; !equal(reasons, want) {
		t.Fatalf("refusals %v, want %v", reasons, want)
	}
	if !strings.Contains((&LimitError{UID: 7, Reason: Bytes, Limit: 67108864}).Error(), "more than 67108864 bytes") {
		t.Fatal("byte limit not written out in the refusal")
	}

	a.close()
	a.close()
	if got := c.Bytes(7); got != 600 {
		t.Fatalf("after closing a, uid 7 holds %d, want 600", got)
	}
	if err := a.Set(10, true); err != nil || c.Bytes(7) != 600 {
		t.Fatalf("a closed account charged: %v, uid 7 holds %d", err, c.Bytes(7))
	}
	if _, streams := c.Open(7); streams != 1 {
		t.Fatalf("open streams of uid 7 = %d, want 1", streams)
	}

	var nilAcct *Account
	if err := nilAcct.Set(1<<40, false); err != nil {
		t.Fatalf("nil account refused: %v", err)
	}
}

// TestFullUIDRefusedAtOnce: for a second after a uid met a byte budget, its new streams are
// refused before they are read, unless it released bytes meanwhile.
func TestFullUIDRefusedAtOnce(t *testing.T) {
	c, clk := newController(t, Config{MaxBytesPerUID: 1000, MaxUnentitledBytesPerUID: 300})
	a := newAccount(t, c, 7)
	if err := a.Set(300, false); err != nil {
		t.Fatal(err)
	}
	if err := c.NewStream(7); err != nil {
		t.Fatalf("before any refusal: %v", err)
	}
	b := newAccount(t, c, 7)
	if err := b.Set(1, false); err == nil {
		t.Fatal("over the unentitled budget: not refused")
	}
	var le *LimitError
	if err := c.NewStream(7); !errors.As(err, &le) || le.Reason != UnentitledBytes {
		t.Fatalf("new stream right after the refusal: %v, want refused by %s", err, UnentitledBytes)
	}
	if err := c.NewStream(8); err != nil {
		t.Fatalf("another uid: %v", err)
	}
	clk.advance(fullFor)
	if err := c.NewStream(7); err != nil {
		t.Fatalf("a second later: %v", err)
	}
	_ = b.Set(1, false) // refused again
	if err := a.Set(100, false); err != nil {
		t.Fatal(err)
	}
	if err := c.NewStream(7); err != nil {
		t.Fatalf("after releasing bytes: %v", err)
	}
}

// TestLogBudget: a stream logs a burst of streamLogBurst lines, then streamLogRate a
// second; a uid's streams together uidLogBurst, then uidLogRate. Every dropped line is
// counted, and the next line let through is preceded by a summary with their number.
func TestLogBudget(t *testing.T) {
	var log logRecorder
	dropped := 0
	c, clk := newController(t, Config{OnLogSuppressed: func() { dropped++ }})
	l := log.logger()
	a := newAccount(t, c, 7)
	for range 100 {
		a.Log(l, -4, "nack", "uid", 7) // below Info: slog's text handler drops it, the budget still applies
	}
	if dropped != 100-streamLogBurst {
		t.Fatalf("dropped %d of 100 lines, want %d", dropped, 100-streamLogBurst)
	}
	for range 100 {
		a.Log(l, 0, "nack")
	}
	if log.count() != 0 || dropped != 200-streamLogBurst {
		t.Fatalf("after the burst: %d lines written, %d dropped", log.count(), dropped)
	}
	clk.advance(time.Duration(float64(time.Second) / streamLogRate))
	a.Log(l, 0, "nack")
	if n := log.count(); n != 2 || !strings.Contains(log.lines[0], "suppressed similar log lines") ||
		!strings.Contains(log.lines[0], "suppressed=195") || !strings.Contains(log.lines[1], "msg=nack") {
		t.Fatalf("lines after the refill: %q", log.lines)
	}

	// Many streams of one uid: the uid's budget bounds them together.
	dropped = 0
	log.lines = nil
	clk.advance(time.Hour)
	for range 50 {
		s := newAccount(t, c, 9)
		for range 10 {
			s.Log(l, 0, "stream flood")
		}
	}
	if log.count() != uidLogBurst || dropped != 500-uidLogBurst {
		t.Fatalf("50 streams × 10 lines: %d written, %d dropped; want %d and %d", log.count(), dropped, uidLogBurst, 500-uidLogBurst)
	}

	var nilAcct *Account
	nilAcct.Log(l, 0, "no account")
	if !strings.Contains(log.last(), "no account") {
		t.Fatal("a nil account did not log")
	}
}
