package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Default health paths, as SPIRE's agent serves them, so probes written for it work here.
const (
	DefaultLivePath  = "/live"
	DefaultReadyPath = "/ready"
	// MetricsPath is where ServeMetrics mounts the metrics handler.
	MetricsPath = "/metrics"
)

const (
	// readyTimeout bounds one readiness check: a wedged store must turn into a 503 the
	// probe sees, not a probe timeout.
	readyTimeout = 5 * time.Second
	// shutdownTimeout bounds Serve's graceful stop; then connections are cut.
	shutdownTimeout = 5 * time.Second
)

// HealthHandler serves liveness and readiness probes:
//
//   - livePath answers 200 "ok" whenever the process answers HTTP at all: it is alive.
//   - readyPath calls ready with the request's context (bounded to 5s) and answers 200 "ok" if
//     it returns nil, else 503 "not ready: <reason>". A nil ready is always ready.
//   - any other path is 404; methods other than GET and HEAD are 405.
//
// Empty paths default to DefaultLivePath and DefaultReadyPath. ready is called once per
// request, concurrently, so it must be safe for concurrent use and cheap.
func HealthHandler(livePath, readyPath string, ready func(ctx context.Context) error) http.Handler {
	if livePath == "" {
		livePath = DefaultLivePath
	}
	if readyPath == "" {
		readyPath = DefaultReadyPath
	}
	if ready == nil {
		ready = func(context.Context) error { return nil }
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != livePath && r.URL.Path != readyPath {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		if r.URL.Path == livePath {
			_, _ = fmt.Fprintln(w, "ok")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
}

// ServeMetrics serves h (normally Metrics.Handler) at MetricsPath on ln, 404 elsewhere, until
// ctx is done; see Serve.
func ServeMetrics(ctx context.Context, ln net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, h)
	return Serve(ctx, ln, mux)
}

// Serve serves HTTP on ln until ctx is done, then shuts down gracefully (in-flight requests
// get up to 5s, then connections are cut) and returns nil. It returns an error only if
// serving fails before ctx is done. It takes ownership of ln and closes it.
//
// Timeouts are set so a slow or idle client cannot hold a connection (and a goroutine)
// forever; the write timeout leaves room for the metrics handler's own 10s gather timeout.
// Requests' contexts are derived from ctx, so a readiness check in flight at stop is
// cancelled rather than waited for.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving HTTP on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving HTTP on %s: %w", ln.Addr(), err)
	}
	return nil
}
