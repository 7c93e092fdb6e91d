package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve starts Serve (or ServeMetrics) on 127.0.0.1:0 and returns the base URL; at cleanup it
// cancels and checks Serve returned nil promptly.
func serve(t *testing.T, h http.Handler, metrics bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		if metrics {
			done <- ServeMetrics(ctx, ln, h)
		} else {
			done <- Serve(ctx, ln, h)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return "http://" + ln.Addr().String()
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func do(t *testing.T, method, url string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body), resp.Header
}

func TestScrapeOverHTTP(t *testing.T) {
	m := New(Config{})
	exerciseAll(m)
	m.SDS().ACK("stream")
	m.OnGather(func() { m.SetSVIDs(42) })
	base := serve(t, m.Handler(), true)

	code, body, hdr := do(t, http.MethodGet, base+MetricsPath)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d: %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type = %q, want the text format", ct)
	}
	for _, want := range []string{
		"# TYPE svidd_api_acks_total counter",
		`svidd_api_acks_total{kind="stream",service="sds"} 2`,
		`svidd_agent_entries 3`,
		`svidd_agent_svids 42`, // set by the OnGather hook at scrape time
		"# TYPE svidd_agent_push_latency_seconds histogram",
		`svidd_agent_push_latency_seconds_bucket{le="+Inf"} 1`,
		`svidd_ca_rotations_total{step="other"} 1`,
		"go_goroutines ",
		"go_gc_duration_seconds",
		"go_build_info",
		"process_start_time_seconds ",
		"process_open_fds ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}

	if code, _, _ := do(t, http.MethodGet, base+"/other"); code != http.StatusNotFound {
		t.Errorf("GET /other = %d, want 404", code)
	}
}

func TestHealth(t *testing.T) {
	var reason atomic.Pointer[error]
	ready := func(ctx context.Context) error {
		if p := reason.Load(); p != nil {
			return *p
		}
		return ctx.Err()
	}
	notReady := fmt.Errorf("store: %w", errors.New("database is locked"))
	base := serve(t, HealthHandler("/live", "/ready", ready), false)

	for _, c := range []struct {
		name     string
		method   string
		path     string
		notReady error
		code     int
		body     string
	}{
		{"live", http.MethodGet, "/live", nil, 200, "ok\n"},
		{"live while not ready", http.MethodGet, "/live", notReady, 200, "ok\n"},
		{"ready", http.MethodGet, "/ready", nil, 200, "ok\n"},
		{"not ready gives the reason", http.MethodGet, "/ready", notReady, 503, "not ready: store: database is locked\n"},
		{"head ready", http.MethodHead, "/ready", nil, 200, ""},
		{"head not ready", http.MethodHead, "/ready", notReady, 503, ""},
		{"unknown path", http.MethodGet, "/metrics", nil, 404, ""},
		{"root", http.MethodGet, "/", nil, 404, ""},
		{"prefix is not the path", http.MethodGet, "/ready/x", nil, 404, ""},
		{"post", http.MethodPost, "/ready", nil, 405, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.notReady != nil {
				reason.Store(&c.notReady)
			} else {
				reason.Store(nil)
			}
			code, body, hdr := do(t, c.method, base+c.path)
			if code != c.code {
				t.Errorf("%s %s = %d %q, want %d", c.method, c.path, code, body, c.code)
			}
			if c.body != "" && body != c.body {
				t.Errorf("body = %q, want %q", body, c.body)
			}
			if c.code == 200 || c.code == 503 {
				if got := hdr.Get("Cache-Control"); got != "no-store" {
					t.Errorf("Cache-Control = %q, want no-store", got)
				}
			}
		})
	}
}

func TestHealthDefaults(t *testing.T) {
	base := serve(t, HealthHandler("", "", nil), false)
	for _, p := range []string{DefaultLivePath, DefaultReadyPath} {
		if code, body, _ := do(t, http.MethodGet, base+p); code != 200 || body != "ok\n" {
			t.Errorf("GET %s = %d %q, want 200 ok", p, code, body)
		}
	}
}

// TestReadyIsBounded: a readiness check that hangs becomes a 503 within the bound, not a
// probe that never answers. It uses the check's context, as the agent's store ping does.
func TestReadyIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 5s readiness bound")
	}
	base := serve(t, HealthHandler("", "", func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("pinging store: %w", ctx.Err())
	}), false)
	start := time.Now()
	code, body, _ := do(t, http.MethodGet, base+DefaultReadyPath)
	if code != 503 || !strings.Contains(body, "deadline exceeded") {
		t.Errorf("GET /ready = %d %q, want 503 with the deadline", code, body)
	}
	if el := time.Since(start); el < readyTimeout-time.Second || el > readyTimeout+3*time.Second {
		t.Errorf("answered after %v, want about %v", el, readyTimeout)
	}
}

// TestServeStopsOnCancel: cancelling stops Serve with nil promptly even with a request in
// flight that waits on its context (requests derive from Serve's ctx), and the port is
// released.
func TestServeStopsOnCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	entered := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
		http.Error(w, "stopping", http.StatusServiceUnavailable)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h) }()

	reqDone := make(chan int, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/slow")
		if err != nil {
			reqDone <- -1
			return
		}
		resp.Body.Close()
		reqDone <- resp.StatusCode
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the handler")
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil on a clean stop", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("stop took %v; the in-flight request should have been cancelled, not waited out", el)
	}
	if code := <-reqDone; code != http.StatusServiceUnavailable {
		t.Errorf("in-flight request got %d, want its handler's 503", code)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts after Serve returned")
	}
}

func TestServeFailsOnBrokenListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	errc := make(chan error, 1)
	go func() { errc <- Serve(context.Background(), ln, http.NotFoundHandler()) }()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "serving HTTP on 127.0.0.1:") {
			t.Errorf("Serve on a closed listener = %v, want a wrapped error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve on a closed listener did not return")
	}
}
