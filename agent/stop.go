package agent

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

// callTracker counts the api socket's in-flight unary calls and open streams. A stop waits for
// the unary calls (they finish in milliseconds) but not for the streams: SDS and Workload API
// streams never end on their own, so a graceful stop alone would wait out its whole deadline
// with Envoy connected.
type callTracker struct {
	unary, streams atomic.Int64
}

func (t *callTracker) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			t.unary.Add(1)
			defer t.unary.Add(-1)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			t.streams.Add(1)
			defer t.streams.Add(-1)
			return h(srv, ss)
		}),
	}
}

// stopAPI stops gs: no new connections or calls (GracefulStop's GOAWAY), in-flight unary calls
// finish within d, then every stream is cut (clients reconnect to the next svidd). It says
// what it waits for when it must wait.
func (a *Agent) stopAPI(gs *grpc.Server, t *callTracker, d time.Duration) {
	start := time.Now()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	if n := t.streams.Load(); n > 0 {
		a.log.Info("stopping: closing open streams (clients reconnect)", "streams", n)
	}
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	said := false
wait:
	for t.unary.Load() > 0 {
		if !said && time.Since(start) > 100*time.Millisecond {
			a.log.Info("stopping: waiting for in-flight calls to finish", "calls", t.unary.Load(), "timeout", d)
			said = true
		}
		select {
		case <-done:
			break wait
		case <-deadline.C:
			a.log.Warn("stopping: in-flight calls did not finish; cutting them", "calls", t.unary.Load(), "timeout", d)
			break wait
		case <-tick.C:
		}
	}
	gs.Stop()
	<-done
}
