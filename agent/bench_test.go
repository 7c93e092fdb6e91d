package agent

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/workload"
)

// BenchmarkFanout measures a change reaching every open subscription (issue 6: "the View
// fan-out"): a bundle rotation is applied to the cache and each subscription's reader (one
// goroutine per stream, as in the protocol front-ends) receives the new View. "one caller" is
// one Envoy holding N streams (one group, one View built); "N callers" gives every stream its
// own selector set (N groups, N Views). ns/stream is the cost per stream reached; what a
// front-end then sends is measured by pkg/sds's BenchmarkBuildResponse.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, shape := range []struct {
			name    string
			perSubs func(i int) []string
		}{
			{"one caller", func(int) []string { return []string{"unix:uid:1000"} }},
			{"N callers", func(i int) []string { return []string{"unix:uid:1000", fmt.Sprintf("unix:gid:%d", i)} }},
		} {
			b.Run(fmt.Sprintf("%s/streams=%d", shape.name, n), func(b *testing.B) {
				benchFanout(b, n, shape.perSubs)
			})
		}
	}
}

func benchFanout(b *testing.B, n int, selectorsOf func(int) []string) {
	now := func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }
	c := newCache(slog.New(slog.DiscardHandler), &fakeMinter{now: now, ttl: time.Hour}, now)
	c.bundles = []*workload.Bundle{{TrustDomain: td, Sequence: 1}}
	id := "spiffe://example.org/web"
	e := entry.Entry{ID: "e1", SPIFFEID: spiffeid.RequireFromString(id), Revision: 1, Selectors: mustSelectors(b, "unix:uid:1000")}
	c.load([]entry.Entry{e})

	// round is one change: its sequence and the readers still to receive it.
	type round struct {
		seq uint64
		wg  sync.WaitGroup
	}
	var cur atomic.Pointer[round]
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for i := range n {
		sub, err := c.subscribe(mustSelectors(b, selectorsOf(i)...), nil, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		wake := make(chan struct{}, 1)
		_, seen := sub.LatestSeq() // the first View
		sub.OnPublish(func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		}, seen)
		readers.Go(func() {
			defer sub.Close()
			for {
				select {
				case <-stop:
					return
				case <-wake:
					v := sub.Latest()
					if r := cur.Load(); r != nil && len(v.Bundles) == 1 && v.Bundles[0].Sequence == r.seq {
						r.wg.Done()
					}
				}
			}
		})
	}
	if st := c.stats(); st.Streams != n {
		b.Fatalf("%d streams open, want %d", st.Streams, n)
	}

	seq := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		r := &round{seq: seq}
		r.wg.Add(n)
		cur.Store(r)
		c.setBundles([]*workload.Bundle{{TrustDomain: td, Sequence: seq}})
		r.wg.Wait()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/stream")
	close(stop)
	readers.Wait()
}

func mustSelectors(tb testing.TB, ss ...string) []entry.Selector {
	tb.Helper()
	s, err := entry.ParseSelectors(ss)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// BenchmarkSubscribeManyEntries is a caller entitled to 1,000 identities opening its first
// stream (the cold-start case of issue 6), with the real CA. Without a hint every SVID is
// minted before the first View; workers=1 is minting one after another, as before mints ran
// concurrently. "wanted=one" is an SDS stream naming the one identity it serves: its first
// View comes after that one mint (the rest are left to the background minter, stopped at the
// end of each iteration).
func BenchmarkSubscribeManyEntries(b *testing.B) {
	const n = 1000
	authority, err := ca.New(ca.Config{TrustDomain: td, Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	var es []entry.Entry
	for i := range n {
		es = append(es, entry.Entry{ID: fmt.Sprintf("e%04d", i), SPIFFEID: spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/w/%04d", i)),
			Revision: 1, Selectors: mustSelectors(b, "unix:uid:1000")})
	}
	for _, bc := range []struct {
		name    string
		workers int
		wanted  []spiffeid.ID
		want    int // SVIDs in the first View
	}{
		{"workers=1", 1, nil, n},
		{fmt.Sprintf("workers=%d", mintWorkers()), mintWorkers(), nil, n},
		{"wanted=one", mintWorkers(), []spiffeid.ID{es[n/2].SPIFFEID}, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			defer func(f func() int) { mintWorkers = f }(mintWorkers)
			mintWorkers = func() int { return bc.workers }
			for b.Loop() {
				c := newCache(slog.New(slog.DiscardHandler), authority, time.Now)
				c.bundles = []*workload.Bundle{authority.Bundle()}
				c.load(es)
				sub, err := c.subscribe(mustSelectors(b, "unix:uid:1000"), bc.wanted, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				v := sub.Latest()
				if got := len(v.SVIDs); got < bc.want || (bc.wanted != nil && !v.Partial) {
					b.Fatalf("first View holds %d SVIDs (partial %v), want %d", got, v.Partial, bc.want)
				}
				sub.Close()
				c.stop()
			}
		})
	}
}
