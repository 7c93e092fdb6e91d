package attestor

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestWarnLimiter: a warning any caller can trigger is written once per warnEvery per kind;
// the ones in between go to Debug, and the next Warn says how many there were.
func TestWarnLimiter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := newWarnLimiter(func() time.Time { return now })
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	count := func(s string) int { return strings.Count(buf.String(), s) }

	for range 1000 {
		w.warn(log, "cannot read caller's namespaces", "pid", 1)
		w.warn(log, "caller's binary is larger than max_binary_size; no sha256 selector", "pid", 2)
		now = now.Add(10 * time.Millisecond) // 1,000 connections in 10 s
	}
	if n := count("level=WARN"); n != 2 {
		t.Fatalf("%d warnings for 2,000 triggers of 2 kinds within 10 s, want 2:\n%s", n, buf.String())
	}
	now = now.Add(warnEvery)
	w.warn(log, "cannot read caller's namespaces", "pid", 3)
	if n := count("level=WARN"); n != 3 || count("suppressed_since_last=999") != 1 {
		t.Fatalf("after %s: want a third warning saying 999 were suppressed:\n%s", warnEvery, buf.String())
	}
}
