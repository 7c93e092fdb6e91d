package etcdstore

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/pkg/store"
)

// Watch registers fn for every committed write to the registry, made through this Store or any
// other instance on the same etcd prefix, in etcd's revision order. fn runs on the Store's one
// follower goroutine: it must return quickly and must not call the Store.
//
// A write through this Store returns after its change has been delivered (as with SQLite),
// unless the follower is behind (etcd unreachable from here just after the commit): then the
// write returns after a few seconds and the change follows when the watch catches up.
//
// After a disconnect the follower resumes from the last revision it delivered, so no change is
// missed or repeated. If etcd compacted that revision away meanwhile, it reloads every entry
// and delivers the difference: an entry deleted meanwhile arrives as OpDelete of the entry as
// last delivered, a changed one as OpUpdate, a new one as OpCreate.
func (s *Store) Watch(fn func(store.Change)) (cancel func()) {
	s.mu.Lock()
	id := s.nextWatch
	s.nextWatch++
	s.watchers[id] = fn
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.watchers, id)
		s.mu.Unlock()
	}
}

// awaitDelivery waits until the change committed at rev has been delivered to the watchers,
// ctx ends, or deliveryWait passes.
func (s *Store) awaitDelivery(ctx context.Context, rev int64) {
	timer := time.NewTimer(deliveryWait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		delivered, progress := s.delivered, s.progress
		s.mu.Unlock()
		if delivered >= rev {
			return
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return
		case <-timer.C:
			s.log.Warn("write committed but not yet seen by the registry watch", "revision", rev)
			return
		case <-s.done:
			return
		}
	}
}

// follow watches the entries from the last delivered revision until ctx ends.
func (s *Store) follow(ctx context.Context) {
	defer close(s.done)
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		s.mu.Lock()
		from := s.delivered + 1
		s.mu.Unlock()
		err := s.watchFrom(ctx, from)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			s.log.Warn("registry history compacted past our revision; reloading every entry", "revision", from-1)
			if err := s.reload(ctx); err != nil {
				s.log.Warn("reloading the registry", "error", err)
			} else {
				wait = 100 * time.Millisecond
				continue
			}
		} else if err != nil {
			s.log.Warn("registry watch ended; resuming", "revision", from-1, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// watchFrom delivers changes from revision from on, until the watch fails.
func (s *Store) watchFrom(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// No WithPrevKV: apply takes an entry's previous version from the mirror, which holds
	// every entry, so each event carries the entry once, not twice, to every host.
	wch := s.cli.Watch(wctx, s.entries, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			if err := s.apply(ev); err != nil {
				// An entry this svidd cannot read (written by a newer version?) is skipped
				// rather than stopping every later change.
				s.log.Error("skipping unreadable registry change", "key", string(ev.Kv.Key), "error", err)
				s.advanceChange(ev.Kv.ModRevision)
			}
		}
		if resp.IsProgressNotify() {
			// Every event up to the header's revision has been sent.
			s.advance(resp.Header.Revision)
		}
	}
	return ctx.Err()
}

// apply turns one event into a Change, updates the mirror and tells the watchers.
func (s *Store) apply(ev *clientv3.Event) error {
	rev := ev.Kv.ModRevision
	id := string(ev.Kv.Key[len(s.entries):])
	s.mu.Lock()
	prev, had := s.mirror[id]
	s.mu.Unlock()
	var ch store.Change
	switch ev.Type {
	case mvccpb.PUT:
		e, err := decode(ev.Kv.Key, ev.Kv.Value, ev.Kv.Version)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.mirror[id] = mirrored{e: e, modRevision: rev}
		s.mu.Unlock()
		if had && ev.Kv.Version > 1 {
			ch = store.Change{Op: store.OpUpdate, Entry: e, Old: prev.e}
		} else {
			ch = store.Change{Op: store.OpCreate, Entry: e}
		}
	case mvccpb.DELETE:
		s.mu.Lock()
		delete(s.mirror, id)
		s.mu.Unlock()
		if !had {
			s.advanceChange(rev)
			return nil
		}
		ch = store.Change{Op: store.OpDelete, Entry: prev.e}
	}
	s.notify([]store.Change{ch})
	s.advanceChange(rev)
	return nil
}

// reload reads every entry and delivers what changed since the mirror's revision.
func (s *Store) reload(ctx context.Context) error {
	m, rev, err := s.readAll(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	old := s.mirror
	s.mirror = m
	s.lastChange = max(s.lastChange, newest(m))
	s.mu.Unlock()
	var changes []store.Change
	for id, o := range old {
		if n, ok := m[id]; !ok {
			changes = append(changes, store.Change{Op: store.OpDelete, Entry: o.e})
		} else if n.modRevision != o.modRevision {
			changes = append(changes, store.Change{Op: store.OpUpdate, Entry: n.e, Old: o.e})
		}
	}
	for id, n := range m {
		if _, ok := old[id]; !ok {
			changes = append(changes, store.Change{Op: store.OpCreate, Entry: n.e})
		}
	}
	// A stable order (deletions first, then by ID) so a reload is reproducible.
	slices.SortFunc(changes, func(a, b store.Change) int {
		if (a.Op == store.OpDelete) != (b.Op == store.OpDelete) {
			if a.Op == store.OpDelete {
				return -1
			}
			return 1
		}
		if a.Entry.ID < b.Entry.ID {
			return -1
		}
		if a.Entry.ID > b.Entry.ID {
			return 1
		}
		return 0
	})
	s.notify(changes)
	s.advance(rev)
	return nil
}

// notify calls every watcher with each change; each gets its own copy of the entries.
func (s *Store) notify(changes []store.Change) {
	if len(changes) == 0 {
		return
	}
	s.mu.Lock()
	ids := make([]uint64, 0, len(s.watchers))
	for id := range s.watchers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	fns := make([]func(store.Change), 0, len(ids))
	for _, id := range ids {
		fns = append(fns, s.watchers[id])
	}
	s.mu.Unlock()
	for _, ch := range changes {
		for _, fn := range fns {
			fn(store.Change{Op: ch.Op, Entry: store.Clone(ch.Entry), Old: store.Clone(ch.Old)})
		}
	}
}

// advanceChange advances past an entry change at rev.
func (s *Store) advanceChange(rev int64) {
	s.mu.Lock()
	s.lastChange = max(s.lastChange, rev)
	s.mu.Unlock()
	s.advance(rev)
}

func (s *Store) advance(rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev > s.delivered {
		s.delivered = rev
		close(s.progress)
		s.progress = make(chan struct{})
	}
}
