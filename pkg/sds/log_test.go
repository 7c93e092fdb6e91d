package sds

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/pkg/workload"
)

// countingHandler wraps a handler and counts the loggers derived from it (With) and the
// records written, to prove a stream builds no logger when nothing it logs is enabled.
type countingHandler struct {
	slog.Handler
	withs, handled *atomic.Int64
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.withs.Add(1)
	return countingHandler{h.Handler.WithAttrs(as), h.withs, h.handled}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	h.withs.Add(1)
	return countingHandler{h.Handler.WithGroup(name), h.withs, h.handled}
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.handled.Add(1)
	return h.Handler.Handle(ctx, r)
}

// lockedBuffer is a log sink safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

// TestStreamLoggerIsLazy: at a level where a healthy stream logs nothing, serving streams
// derives no logger at all; when Envoy NACKs (a warning), the record carries the stream's
// attributes.
func TestStreamLoggerIsLazy(t *testing.T) {
	f := newFixture(t)
	var withs, handled atomic.Int64
	var buf lockedBuffer
	h := countingHandler{slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}), &withs, &handled}
	w := newFakeWatcher(f.view())
	client := startServer(t, w, func(c *Config) { c.Logger = slog.New(h) })
	base := withs.Load() // New's component attribute

	for range 5 {
		c := openSotw(t, client)
		c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
		r, _ := c.recv()
		c.ack(r, idWeb)
		c.none()
		c.cancel()
	}
	if got := withs.Load() - base; got != 0 || handled.Load() != 0 {
		t.Fatalf("5 healthy streams at level warn derived %d loggers and wrote %d records, want none", got, handled.Load())
	}

	c := openSotw(t, client)
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	r, _ := c.recv()
	c.send(&discoveryv3.DiscoveryRequest{VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: []string{idWeb},
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "bad certificate"}})
	c.none()
	lines := buf.lines()
	if len(lines) != 1 {
		t.Fatalf("log after a NACK: %q, want one line", lines)
	}
	wantStreamAttrs(t, lines[0], "envoy rejected secrets")
}

// TestStreamLoggerAttributes: when debug is enabled, every record of a stream carries the
// same attributes, in the same order, as the eager slog.With chain did.
func TestStreamLoggerAttributes(t *testing.T) {
	f := newFixture(t)
	var buf lockedBuffer
	w := newFakeWatcher(f.view())
	client := startServer(t, w, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	c := openSotw(t, client)
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	c.recv()
	c.cancel()
	c.err()

	var msgs []string
	for _, l := range buf.lines() {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		msg, _ := rec["msg"].(string)
		msgs = append(msgs, msg)
		wantStreamAttrs(t, l, msg)
	}
	for _, want := range []string{"sds stream opened", "sent secrets"} {
		if !strings.Contains(strings.Join(msgs, "|"), want) {
			t.Errorf("debug log %q lacks %q", msgs, want)
		}
	}
}

// wantStreamAttrs checks one JSON record of a stream: component, rpc, node, pid, uid, in
// that order (the order an eager With chain gives), and the node's fields.
func wantStreamAttrs(t *testing.T, line, msg string) {
	t.Helper()
	var rec struct {
		Msg       string `json:"msg"`
		Component string `json:"component"`
		RPC       string `json:"rpc"`
		Node      struct {
			ID, Cluster, UserAgent, Version string
		} `json:"node"`
		PID int32  `json:"pid"`
		UID uint32 `json:"uid"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatal(err)
	}
	var node map[string]string
	var raw map[string]json.RawMessage
	_ = json.Unmarshal([]byte(line), &raw)
	_ = json.Unmarshal(raw["node"], &node)
	if rec.Msg != msg || rec.Component != "sds" || rec.RPC != "StreamSecrets" || rec.PID != testPeer.PID || rec.UID != testPeer.UID {
		t.Errorf("record %s: want component sds, rpc StreamSecrets, pid %d, uid %d", line, testPeer.PID, testPeer.UID)
	}
	want := map[string]string{"id": testNode.Id, "cluster": testNode.Cluster, "user_agent": "envoy", "version": "1.34.2"}
	for k, v := range want {
		if node[k] != v {
			t.Errorf("record %s: node.%s = %q, want %q", line, k, node[k], v)
		}
	}
	last := -1
	for _, k := range []string{`"component"`, `"rpc"`, `"node"`, `"pid"`, `"uid"`} {
		i := strings.Index(line, k)
		if i < last {
			t.Errorf("record %s: %s out of order", line, k)
		}
		last = i
	}
}

// TestEncodingSharedPerView: every stream holding a View sends the same encoded Secrets (one
// marshal per View and resource); another View is encoded anew; what is shared is never
// changed by building or marshalling responses, concurrently, as gRPC does.
func TestEncodingSharedPerView(t *testing.T) {
	f := newFixture(t)
	srv, err := New(Config{Watcher: newFakeWatcher(nil), TrustDomain: tdExample})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		names    []string
		wildcard bool
	}{
		{"one SVID", []string{idWeb}, false},
		{"default and ROOTCA", []string{"default", "ROOTCA"}, false},
		{"ALL", []string{"ALL"}, false},
		{"wildcard", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			view := f.view()
			build := func(v *workload.View) *discoveryv3.DiscoveryResponse {
				resp, err := srv.buildResponse(v, srv.resolveAll(v, tc.names, tc.wildcard))
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			first := build(view)
			want := make([][]byte, len(first.Resources))
			for i, a := range first.Resources {
				want[i] = bytes.Clone(a.Value)
			}
			checkSecrets(t, first.Resources)

			var wg sync.WaitGroup
			resps := make([]*discoveryv3.DiscoveryResponse, 16)
			for i := range resps {
				wg.Go(func() {
					resps[i] = build(view)
					if _, err := proto.Marshal(resps[i]); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			for i, r := range resps {
				if r.Nonce == first.Nonce {
					t.Fatalf("stream %d: nonce reused", i)
				}
				for j, a := range r.Resources {
					if a != first.Resources[j] {
						t.Fatalf("stream %d resource %d: encoded again, want the View's shared encoding", i, j)
					}
					if !bytes.Equal(a.Value, want[j]) {
						t.Fatalf("stream %d resource %d: shared encoding changed", i, j)
					}
				}
			}
			other := build(f.view())
			for j, a := range other.Resources {
				if a == first.Resources[j] {
					t.Fatalf("resource %d: another View reused this View's encoding", j)
				}
				if !proto.Equal(a, first.Resources[j]) {
					t.Fatalf("resource %d: same SVIDs and bundles encoded differently", j)
				}
			}
		})
	}
}
