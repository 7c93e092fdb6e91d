package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Handler receives what Follow sees under its prefix, on Follow's goroutine, in etcd's
// revision order. Its methods must return quickly.
type Handler interface {
	// Reset replaces everything the handler knows: kvs is the whole prefix at revision rev.
	// It comes first, and again whenever the history since the last delivered revision was
	// compacted away.
	Reset(kvs []*mvccpb.KeyValue, rev int64)
	// Apply delivers committed changes in order (evs may be empty: a progress report), after
	// which everything up to rev has been delivered.
	Apply(evs []*clientv3.Event, rev int64)
	// Unreachable is called when the watch fails (etcd unreachable, or the watch was
	// cancelled); Follow resumes from the last delivered revision.
	Unreachable(err error)
}

// Follow loads prefix, then follows its changes until ctx ends: a watch from the last
// delivered revision, resumed after a failure (backoff from 100 ms to 2 s), and a full reload
// (Handler.Reset) when etcd has compacted that revision away. It is the pattern of
// pkg/store/etcdstore's entry watch, for any prefix.
func Follow(ctx context.Context, cli *clientv3.Client, prefix string, h Handler, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var delivered int64 // 0: nothing loaded yet
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if delivered == 0 {
			delivered, err = load(ctx, cli, prefix, h)
		} else {
			err = watchFrom(ctx, cli, prefix, h, &delivered)
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			log.Warn("registry history compacted past our revision; reloading", "prefix", prefix, "revision", delivered)
			delivered = 0
			continue
		}
		if err != nil {
			h.Unreachable(err)
			log.Debug("registry watch ended; resuming", "prefix", prefix, "revision", delivered, "error", err)
		} else {
			wait = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func load(ctx context.Context, cli *clientv3.Client, prefix string, h Handler) (int64, error) {
	gctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", prefix, err)
	}
	h.Reset(resp.Kvs, resp.Header.Revision)
	return resp.Header.Revision, nil
}

// watchFrom delivers changes after *delivered until the watch fails.
func watchFrom(ctx context.Context, cli *clientv3.Client, prefix string, h Handler, delivered *int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(*delivered+1), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return err
		}
		rev := resp.Header.Revision
		if n := len(resp.Events); n > 0 {
			// A watch response's header may run ahead of its events only when it is a
			// progress report; the last event's revision is what has been delivered.
			rev = max(resp.Events[n-1].Kv.ModRevision, *delivered)
		}
		h.Apply(resp.Events, rev)
		*delivered = max(*delivered, rev)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch closed")
}
