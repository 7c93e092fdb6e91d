package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/etcdtest"
)

// testHop: an entry created through host A's admin API reaches an SDS stream on host B that
// waits for it, against the same on one host (created on B, streamed on B). Interleaved, so
// that both see the same machine load.
func testHop(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: *flagMembers})
	a := newHost(t, "A", c.Endpoints(), hostOpts{})
	b := newHost(t, "B", c.Endpoints(), hostOpts{})
	a.start()
	b.start()
	a.waitReady(30 * time.Second)
	b.waitReady(30 * time.Second)

	baseIdentity(t, a, b)
	ctx := context.Background()
	conn := b.dial()

	type sample struct{ fromStart, fromAck, call time.Duration }
	var cross, local []sample
	one := func(i int, creator *host, mode string) sample {
		id := fmt.Sprintf("spiffe://example.org/hop/%s/%d", mode, i)
		s := waitingStream(t, conn, id)
		defer s.Close()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got := make(chan time.Time, 1)
		errc := make(chan error, 1)
		go func() {
			at, err := awaitSecret(wctx, s, id)
			if err != nil {
				errc <- err
				return
			}
			got <- at
		}()
		t0 := time.Now()
		e, err := createEntry(wctx, creator, id)
		t1 := time.Now()
		if err != nil {
			t.Fatalf("creating %s on %s: %v", id, creator.name, err)
		}
		var t2 time.Time
		select {
		case t2 = <-got:
		case err := <-errc:
			t.Fatalf("%s (created on %s): %v", id, creator.name, err)
		}
		// Keep the caller's view at one identity: the next repetition sees the same agent.
		if _, err := creator.client.DeleteEntry(ctx, e.ID); err != nil {
			t.Fatal(err)
		}
		return sample{fromStart: t2.Sub(t0), fromAck: t2.Sub(t1), call: t1.Sub(t0)}
	}
	for i := range *flagReps {
		if i%2 == 0 {
			cross = append(cross, one(i, a, "cross"))
			local = append(local, one(i, b, "local"))
		} else {
			local = append(local, one(i, b, "local"))
			cross = append(cross, one(i, a, "cross"))
		}
	}
	col := func(ss []sample, f func(sample) time.Duration) []time.Duration {
		out := make([]time.Duration, len(ss))
		for i, s := range ss {
			out[i] = f(s)
		}
		return out
	}
	start := func(s sample) time.Duration { return s.fromStart }
	ack := func(s sample) time.Duration { return s.fromAck }
	call := func(s sample) time.Duration { return s.call }
	report(t, "hop etcd=%d members, %d reps each", *flagMembers, *flagReps)
	report(t, "hop cross-host (create on A, stream on B) from create start: %s", dist(col(cross, start)))
	report(t, "hop cross-host from create acknowledged:               %s", dist(col(cross, ack)))
	report(t, "hop cross-host create call:                            %s", dist(col(cross, call)))
	report(t, "hop same-host  (create on B, stream on B) from create start: %s", dist(col(local, start)))
	report(t, "hop same-host  from create acknowledged:                %s", dist(col(local, ack)))
	report(t, "hop same-host  create call:                             %s", dist(col(local, call)))
	report(t, "hop ratio cross/same from start: p50 %.2f p99 %.2f",
		ratio(percentile(col(cross, start), 50), percentile(col(local, start), 50)),
		ratio(percentile(col(cross, start), 99), percentile(col(local, start), 99)))
	report(t, "hop RSS: svidd A %s, svidd B %s", mib(a.rssKiB()), mib(b.rssKiB()))
	if p := percentile(col(cross, start), 99); p > 100*time.Millisecond {
		t.Logf("fleet: hop TARGET MISSED: cross-host p99 %v > 100 ms", p)
	}
}

// baseIdentity gives this process one identity through creator's admin API and waits until
// every host has it: ROOTCA is served only to a caller with an identity, and waitingStream
// takes ROOTCA as the proof that svidd holds the stream.
func baseIdentity(t testing.TB, creator *host, hosts ...*host) {
	t.Helper()
	e, err := createEntry(context.Background(), creator, "spiffe://example.org/base")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, h := range hosts {
		for {
			if _, err := h.client.GetEntry(context.Background(), e.ID); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("base entry not on %s after 30 s", h.name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// withTimeout is a context for one bounded wait; its cancel runs when the timer fires.
func withTimeout(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	time.AfterFunc(d, cancel)
	return ctx
}
