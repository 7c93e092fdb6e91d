package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/store"
)

// Every call to etcd goes through retry: one member killed, or a leader election, must cost a
// caller a short pause, not an error. etcd's client retries on its own only what it knows was
// never sent; a write whose connection broke after sending, or that waits on a member with no
// leader, is left to us. So each try gets its own short timeout within the caller's context,
// and a try that failed for a reason another member may not share is tried again (the
// client's balancer picks the member). Retried writes are safe because each one checks what
// an earlier try of its own may have committed (see CreateEntry, UpdateEntry, DeleteEntry).

const (
	// DefaultAttemptTimeout bounds one try of one call. A healthy member answers in
	// milliseconds; a try that takes longer is most likely waiting on a member that is gone
	// or on an election (1 s with etcd's default timings; a write sent to a follower just as
	// the leader died waits out etcd's own request timeout, several seconds), so another try,
	// on whichever member is reachable, is the better bet.
	DefaultAttemptTimeout = time.Second
	// rangeAttemptTimeout bounds one try of a read of a whole prefix (every entry), whose
	// time grows with the registry: 10,000 entries are a few MB.
	rangeAttemptTimeout = 10 * time.Second
	// retryPause is the first pause between tries; it doubles up to maxRetryPause.
	retryPause    = 20 * time.Millisecond
	maxRetryPause = 500 * time.Millisecond
)

// code is the gRPC code of an error from the etcd client (codes.Unknown for other errors).
func code(err error) codes.Code {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code()
	}
	return status.Code(err)
}

// retryable reports whether a try that failed with err may succeed on another try: the
// member is gone or has no leader, the request timed out in etcd or in our per-try timeout,
// or etcd is shedding load. Not: a refused permission, a compacted revision, a bad request.
func retryable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	}
	return false
}

// retry runs try until it succeeds, fails for a reason another try will not change, or ctx
// ends. Each try runs under its own timeout within ctx. retried reports whether some try
// failed in a way that leaves unknown whether etcd applied it: a write must then check
// whether its own earlier try committed before it concludes anything.
func (s *Store) retry(ctx context.Context, try func(ctx context.Context) error) (retried bool, err error) {
	return s.retryFor(ctx, s.attemptTimeout, try)
}

// retryFor is retry with each try bounded by timeout.
func (s *Store) retryFor(ctx context.Context, timeout time.Duration, try func(ctx context.Context) error) (retried bool, err error) {
	pause := retryPause
	for n := 1; ; n++ {
		tctx, cancel := context.WithTimeout(ctx, timeout)
		err = try(tctx)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return retried, err
		}
		retried = true
		s.log.Debug("etcd call failed; trying again", "attempt", n, "error", err)
		select {
		case <-ctx.Done():
			return retried, err
		case <-time.After(pause):
		}
		pause = min(2*pause, maxRetryPause)
	}
}

// writeErr says what a refused write means. etcd refuses with PermissionDenied when this
// host's etcd user (its client certificate's CN) has no write permission on the key: the
// caller gets store.ErrReadOnly, which says where to register instead.
func writeErr(what string, err error) error {
	if code(err) == codes.PermissionDenied {
		return fmt.Errorf("%s: %w (etcd: %v)", what, store.ErrReadOnly, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
