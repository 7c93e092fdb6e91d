package agent

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
)

type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// TestNoIdentityLog: a caller that gets nothing is logged once, with its selectors and the
// nearest entry's missing selectors; many callers at once are rate-limited; the recent callers
// are kept newest first, bounded.
func TestNoIdentityLog(t *testing.T) {
	c, _, _ := newTestCache(t)
	c.load([]entry.Entry{mkEntry(t, "e1", "spiffe://example.org/web", 1, "unix:uid:1000", "unix:path:/usr/bin/envoy")})
	logs := &lockedLog{}
	a := &Agent{log: slog.New(slog.NewTextHandler(logs, nil)), cache: c}
	sel := sels(t, "unix:uid:1000", "unix:path:/usr/local/bin/envoy")

	p := peercred.NewPeer(4242, 1000, 1000, -1)
	for range 3 {
		a.sawCaller(p, sel, "StreamSecrets", nil, false)
	}
	if n := logs.count("caller got no identity"); n != 1 {
		t.Fatalf("logged %d times for one caller, want once:\n%s", n, logs.b.String())
	}
	if cs := a.Callers(); len(cs) != 1 {
		t.Errorf("one caller retrying is listed %d times, want once", len(cs))
	}
	for _, want := range []string{"pid=4242", "uid=1000", "unix:path:/usr/local/bin/envoy", "nearest_entry=spiffe://example.org/web", "missing=unix:path:/usr/bin/envoy"} {
		if logs.count(want) == 0 {
			t.Errorf("log lacks %s:\n%s", want, logs.b.String())
		}
	}
	// A caller that gets an identity is not logged.
	a.sawCaller(peercred.NewPeer(4343, 1000, 1000, -1), sel, "StreamSecrets", []spiffeid.ID{spiffeid.RequireFromString("spiffe://example.org/web")}, false)
	if n := logs.count("caller got no identity"); n != 1 {
		t.Fatalf("a served caller was logged")
	}
	// A flood of distinct callers: at most noIdentityPerSecond lines in a second.
	for pid := range int32(200) {
		a.sawCaller(peercred.NewPeer(10000+pid, 1000, 1000, -1), sel, "StreamSecrets", nil, false)
	}
	if n := logs.count("caller got no identity"); n > 1+noIdentityPerSecond {
		t.Errorf("200 callers logged %d lines, want at most %d", n, 1+noIdentityPerSecond)
	}
	a.callers.mu.Lock()
	remembered := len(a.callers.logged)
	a.callers.mu.Unlock()
	if remembered > noIdentityMemory {
		t.Errorf("remembers %d callers, bound %d", remembered, noIdentityMemory)
	}

	cs := a.Callers()
	if len(cs) != recentCallers {
		t.Fatalf("%d recent callers, want the last %d", len(cs), recentCallers)
	}
	if cs[0].PID != 10000+199 || cs[1].PID != 10000+198 {
		t.Errorf("callers not newest first: %d, %d", cs[0].PID, cs[1].PID)
	}
	if fmt.Sprint(cs[0].Selectors) != "[unix:path:/usr/local/bin/envoy unix:uid:1000]" || len(cs[0].SPIFFEIDs) != 0 {
		t.Errorf("caller %+v", cs[0])
	}
}
