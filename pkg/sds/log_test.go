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

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
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

// TestStreamLoggerIsLazy: at a level where a healthy stream logs nothing, serving streams
// derives no logger at all; when Envoy NACKs (a warning), the record carries the stream's
// attributes.
func TestStreamLoggerIsLazy(t *testing.T) {
	f := newFixture(t)
	var withs, handled atomic.Int64
	var buf proctest.Buffer
	h := countingHandler{slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}), &withs, &handled}
	w := workloadtest.NewWatcher(f.View())
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
	lines := buf.Lines()
	if len(lines) != 1 {
		t.Fatalf("log after a NACK: %q, want one line", lines)
	}
	wantStreamAttrs(t, lines[0], "envoy rejected secrets")
}

// TestStreamLoggerAttributes: when debug is enabled, every record of a stream carries the
// same attributes, in the same order, as the eager slog.With chain did.
func TestStreamLoggerAttributes(t *testing.T) {
	f := newFixture(t)
	var buf proctest.Buffer
	w := workloadtest.NewWatcher(f.View())
	client := startServer(t, w, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	c := openSotw(t, client)
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	c.recv()
	c.cancel()
	c.err()

	var msgs []string
	for _, l := range buf.Lines() {
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
// marshal per View and resource, the very same bytes); another View is encoded anew; what is
// shared is never changed by building responses concurrently, as streams do; and the
// hand-assembled response decodes to what the generated types would have built.
func TestEncodingSharedPerView(t *testing.T) {
	f := newFixture(t)
	srv, err := New(Config{Watcher: workloadtest.NewWatcher(nil), TrustDomain: tdExample})
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
			type built struct {
				parts [][]byte
				resp  *discoveryv3.DiscoveryResponse
				tok   string
			}
			build := func(v *workload.View) built {
				msg, tok, err := srv.buildResponse(v, srv.resolveAll(v, tc.names, tc.wildcard))
				if err != nil {
					t.Error(err)
					return built{}
				}
				resp := &discoveryv3.DiscoveryResponse{}
				if err := proto.Unmarshal(msg.Bytes(), resp); err != nil {
					t.Error(err)
				}
				return built{parts: msg.Parts(), resp: resp, tok: tok}
			}
			view := f.View()
			first := build(view)
			if first.resp.GetVersionInfo() != first.tok || first.resp.GetNonce() != first.tok || first.resp.GetTypeUrl() != SecretTypeURL {
				t.Fatalf("response header = version %q nonce %q type %q, want %q twice and %q",
					first.resp.GetVersionInfo(), first.resp.GetNonce(), first.resp.GetTypeUrl(), first.tok, SecretTypeURL)
			}
			secrets := checkSecrets(t, first.resp.Resources)
			rs := srv.resolveAll(view, tc.names, tc.wildcard)
			if len(secrets) != len(rs) || len(first.parts) != len(rs)+1 {
				t.Fatalf("%d secrets in %d parts, want %d", len(secrets), len(first.parts), len(rs))
			}
			for i, r := range rs {
				want, err := r.secret()
				if err != nil {
					t.Fatal(err)
				}
				got := &tlsv3.Secret{}
				if err := first.resp.Resources[i].UnmarshalTo(got); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(got, want) {
					t.Fatalf("resource %d decodes to %v, want %v", i, got, want)
				}
			}
			want := make([][]byte, len(first.parts))
			for i, p := range first.parts {
				want[i] = bytes.Clone(p)
			}

			var wg sync.WaitGroup
			others := make([]built, 16)
			for i := range others {
				wg.Go(func() { others[i] = build(view) })
			}
			wg.Wait()
			for i, o := range others {
				if o.tok == first.tok {
					t.Fatalf("stream %d: nonce reused", i)
				}
				for j := 1; j < len(o.parts); j++ {
					if &o.parts[j][0] != &first.parts[j][0] {
						t.Fatalf("stream %d resource %d: encoded again, want the View's shared encoding", i, j)
					}
					if !bytes.Equal(o.parts[j], want[j]) {
						t.Fatalf("stream %d resource %d: shared encoding changed", i, j)
					}
				}
			}
			other := build(f.View())
			for j := 1; j < len(other.parts); j++ {
				if &other.parts[j][0] == &first.parts[j][0] {
					t.Fatalf("resource %d: another View reused this View's encoding", j)
				}
				if !bytes.Equal(other.parts[j], first.parts[j]) {
					t.Fatalf("resource %d: same SVIDs and bundles encoded differently", j)
				}
			}
		})
	}
}
