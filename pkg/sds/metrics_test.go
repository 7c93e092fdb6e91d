package sds

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

type recordingMetrics struct {
	mu     sync.Mutex
	counts map[string]int
}

func (m *recordingMetrics) add(event string, kind Kind, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.counts == nil {
		m.counts = map[string]int{}
	}
	m.counts[fmt.Sprintf("%s/%s", event, kind)] += n
}

func (m *recordingMetrics) get(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func (m *recordingMetrics) StreamOpened(k Kind) { m.add("opened", k, 1) }
func (m *recordingMetrics) StreamClosed(k Kind) { m.add("closed", k, 1) }
func (m *recordingMetrics) ResponseSent(k Kind, n int) {
	m.add("responses", k, 1)
	m.add("resources", k, n)
}
func (m *recordingMetrics) ACK(k Kind)          { m.add("ack", k, 1) }
func (m *recordingMetrics) NACK(k Kind)         { m.add("nack", k, 1) }
func (m *recordingMetrics) StaleRequest(k Kind) { m.add("stale", k, 1) }
func (m *recordingMetrics) FirstResponse(k Kind, d time.Duration) {
	if d > 0 && d < waitLong {
		m.add("first", k, 1)
	}
}

func TestStreamMetricsAndLogs(t *testing.T) {
	f := newFixture(t)
	m := &recordingMetrics{}
	logs := &proctest.Buffer{}
	w := workloadtest.NewWatcher(f.View())
	client := startServer(t, w, func(c *Config) {
		c.Metrics = m
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	c := openSotw(t, client)
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb, "ROOTCA"}})
	r, _ := c.recv()
	c.ack(r, idWeb, "ROOTCA")
	c.none()
	c.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{idWeb, "ROOTCA"}, ResponseNonce: r.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "bad key"}})
	c.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{idWeb}, ResponseNonce: "not-ours"})
	c.none()
	c.cancel()

	deadline := time.Now().Add(waitLong)
	for m.get("closed/stream") != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for key, want := range map[string]int{
		"opened/stream": 1, "closed/stream": 1, "responses/stream": 1, "resources/stream": 2,
		"ack/stream": 1, "nack/stream": 1, "stale/stream": 1, "first/stream": 1,
	} {
		if got := m.get(key); got != want {
			t.Errorf("%s = %d, want %d", key, got, want)
		}
	}
	out := logs.String()
	for _, want := range []string{"component=sds", "node.id=sidecar~10.0.0.1~web", "node.cluster=web", "node.version=1.34.2", "pid=4242", "uid=1000", `error="bad key"`} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Error("a private key was logged")
	}
}
