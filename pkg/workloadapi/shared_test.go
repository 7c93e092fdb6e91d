package workloadapi

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// TestResponsesSharedPerView: every stream holding a View gets the same response message
// (built once per View), and another View gets its own, equal one.
func TestResponsesSharedPerView(t *testing.T) {
	f := newFixture(t)
	srv, err := New(Config{Watcher: workloadtest.NewWatcher(nil), TrustDomain: tdExample})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"X509SVIDResponse", "X509BundlesResponse"} {
		t.Run(name, func(t *testing.T) {
			v, other := f.View(), f.View()
			var first, again, fresh proto.Message
			var n int
			if name == "X509SVIDResponse" {
				a, na := srv.sharedX509SVIDResponse(v)
				b, _ := srv.sharedX509SVIDResponse(v)
				c, _ := srv.sharedX509SVIDResponse(other)
				want, _ := srv.x509SVIDResponse(v)
				if !proto.Equal(a, want) {
					t.Fatal("shared response differs from a freshly built one")
				}
				first, again, fresh, n = a, b, c, na
			} else {
				a, na := sharedX509BundlesResponse(v)
				b, _ := sharedX509BundlesResponse(v)
				c, _ := sharedX509BundlesResponse(other)
				want, _ := x509BundlesResponse(v)
				if !proto.Equal(a, want) {
					t.Fatal("shared response differs from a freshly built one")
				}
				first, again, fresh, n = a, b, c, na
			}
			if n == 0 {
				t.Fatal("response carries nothing")
			}
			if first != again {
				t.Fatal("a second stream on the same View built its own response")
			}
			if first == fresh || !proto.Equal(first, fresh) {
				t.Fatal("another View must get its own, equal, response")
			}
		})
	}
}

// TestStreamLoggingIsLazy: at level warn, serving X.509 streams derives no logger; at debug
// a stream's records carry component, rpc, pid and uid, as before.
func TestStreamLoggingIsLazy(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		level     slog.Level
		wantWiths bool
	}{
		{slog.LevelWarn, false},
		{slog.LevelDebug, true},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			var withs atomic.Int64
			var mu sync.Mutex
			var buf bytes.Buffer
			h := &countingHandler{Handler: slog.NewJSONHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: tc.level}), withs: &withs}
			ts := startServer(t, workloadtest.NewWatcher(f.View()), func(c *Config) { c.Logger = slog.New(h) })
			base := withs.Load()
			ctx, cancel := context.WithCancel(withHeader(testCtx(t)))
			raw := ts.raw(t)
			for range 3 {
				stream, err := raw.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := stream.Recv(); err != nil {
					t.Fatal(err)
				}
			}
			cancel()
			got := withs.Load() - base
			if tc.wantWiths != (got > 0) {
				t.Fatalf("level %v: %d loggers derived for 3 streams", tc.level, got)
			}
			if !tc.wantWiths {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			line, _, _ := strings.Cut(buf.String(), "\n")
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log %q: %v", buf.String(), err)
			}
			if rec["component"] != "workloadapi" || rec["rpc"] != "FetchX509SVID" || rec["pid"] != float64(testPeer.PID) || rec["uid"] != float64(testPeer.UID) {
				t.Fatalf("record %s lacks the stream's attributes", line)
			}
		})
	}
}

type countingHandler struct {
	slog.Handler
	withs *atomic.Int64
}

func (h *countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.withs.Add(1)
	return &countingHandler{h.Handler.WithAttrs(as), h.withs}
}

func (h *countingHandler) WithGroup(name string) slog.Handler {
	h.withs.Add(1)
	return &countingHandler{h.Handler.WithGroup(name), h.withs}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
