package fleet

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/test/envoy"
)

// held is what one Envoy stream holds: every distinct certificate it received, in order.
type held struct {
	host, id string
	certs    []heldCert
	err      error
}

type heldCert struct {
	arrived, notBefore, notAfter, rotateAt time.Time
}

// follow receives on r until ctx ends, recording each new certificate for id.
func (hd *held) follow(ctx context.Context, r *envoy.Reconnecting) {
	last := ""
	for {
		resp, err := r.Recv(ctx)
		if err != nil {
			if ctx.Err() == nil {
				hd.err = err
			}
			return
		}
		s := resp.Get(hd.id)
		if s == nil {
			continue
		}
		certs, _, err := envoy.CertAndKey(s)
		if err != nil {
			hd.err = err
			return
		}
		leaf := certs[0]
		serial := leaf.SerialNumber.Text(16)
		if serial == last {
			continue
		}
		last = serial
		hd.certs = append(hd.certs, heldCert{
			arrived: time.Now(), notBefore: leaf.NotBefore, notAfter: leaf.NotAfter,
			// The rotation time svidd computes for this certificate (pkg/workload), so
			// lateness is measured against svidd's own schedule, jitter included.
			rotateAt: workload.RotateAt(leaf.NotBefore, leaf.NotAfter, workload.RotationJitter(serial)),
		})
	}
}

// testOutage: two hosts serve -fleet.ids identities with -fleet.ttl SVIDs to Envoy streams
// (one per identity per host, as Envoy opens one per secret); the whole etcd cluster is
// stopped for -fleet.outage, host B restarts in the middle of it, then etcd comes back.
// Measured: identities lost, expired certificates held, rotation lateness against svidd's
// own schedule, how writes fail meanwhile, and the catch-up.
func testOutage(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: *flagMembers})
	a := newHost(t, "A", c.Endpoints(), hostOpts{svidTTL: *flagTTL})
	b := newHost(t, "B", c.Endpoints(), hostOpts{svidTTL: *flagTTL})
	a.start()
	b.start()
	a.waitReady(30 * time.Second)
	b.waitReady(30 * time.Second)

	k := *flagIDs
	ids := make([]string, k)
	for i := range ids {
		ids[i] = fmt.Sprintf("spiffe://example.org/outage/%d", i)
		if _, err := createEntry(context.Background(), a, ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	waitEntries(t, b, k, 30*time.Second)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var all []*held
	for _, h := range []*host{a, b} {
		for _, id := range ids {
			r, err := envoy.NewReconnecting(envoy.ReconnectConfig{SocketPath: h.api, Node: node, Names: []string{id}, BaseBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			hd := &held{host: h.name, id: id}
			all = append(all, hd)
			wg.Go(func() { hd.follow(ctx, r); r.Close() })
		}
	}
	t.Cleanup(func() { stop(); wg.Wait() })

	const settle = 20 * time.Second
	time.Sleep(settle)
	report(t, "outage etcd=%d members, %d identities x 2 hosts, SVID TTL %v, etcd down %v", *flagMembers, k, *flagTTL, *flagOutage)
	rssA, rssB := a.rssKiB(), b.rssKiB()
	var etcdRSS []string
	for _, pid := range etcdPIDs(c.Endpoints()) {
		etcdRSS = append(etcdRSS, mib(rssKiB(pid)))
	}
	report(t, "outage before: svidd A %s, B %s; etcd members %s", mib(rssA), mib(rssB), strings.Join(etcdRSS, ", "))

	downAt := time.Now()
	c.Stop()
	report(t, "outage etcd stopped at +%v", time.Since(downAt).Round(time.Millisecond))

	// A write while etcd is away must fail at once, saying why.
	time.Sleep(5 * time.Second)
	for i := range 3 {
		t0 := time.Now()
		_, err := createEntry(context.Background(), a, fmt.Sprintf("spiffe://example.org/outage/refused/%d", i))
		report(t, "outage write during the outage: %v after %v", err, time.Since(t0).Round(time.Millisecond))
		if err == nil {
			t.Errorf("a write succeeded while etcd was stopped")
		}
	}
	if st, err := a.client.Status(context.Background()); err == nil && st.Registry != nil {
		report(t, "outage status on A: reachable=%v since %v", st.Registry.Reachable, st.Registry.Since.Format(time.RFC3339))
	}

	// Host B restarts in the middle of the outage: it must serve from its copy.
	time.Sleep(max(0, *flagOutage/2-time.Since(downAt)))
	b.stop()
	restartAt := time.Now()
	b.start()
	waitHealthy(t, b, 30*time.Second)
	report(t, "outage host B restarted at +%v with etcd down: healthy after %v", restartAt.Sub(downAt).Round(time.Millisecond), time.Since(restartAt).Round(time.Millisecond))
	waitEntries(t, b, k, 5*time.Second)

	time.Sleep(max(0, *flagOutage-time.Since(downAt)))
	upAt := time.Now()
	c.Start()
	report(t, "outage etcd back after %v down (healthy %v after start)", upAt.Sub(downAt).Round(time.Millisecond), time.Since(upAt).Round(time.Millisecond))
	for _, h := range []*host{a, b} {
		h.waitReady(60 * time.Second)
		report(t, "outage host %s registry reachable %v after etcd's start", h.name, time.Since(upAt).Round(time.Millisecond))
	}
	// Catch-up: a write on A reaches B.
	t0 := time.Now()
	e, err := createEntry(context.Background(), a, "spiffe://example.org/outage/after")
	if err != nil {
		t.Fatalf("write after etcd is back: %v", err)
	}
	for {
		if _, err := b.client.GetEntry(context.Background(), e.ID); err == nil {
			break
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatal("a write after the outage did not reach host B in 30 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	report(t, "outage write after etcd is back reached host B in %v", time.Since(t0).Round(time.Millisecond))
	time.Sleep(settle)
	endAt := time.Now()
	stop()
	wg.Wait()

	// What the streams held.
	var late, early []time.Duration
	rotations, expired, lost, expectedMin := 0, 0, 0, 0
	var worstGap time.Duration
	for _, hd := range all {
		if hd.err != nil {
			t.Errorf("stream %s on %s: %v", hd.id, hd.host, hd.err)
		}
		if len(hd.certs) == 0 || !endAt.Before(hd.certs[len(hd.certs)-1].notAfter) {
			lost++
			continue
		}
		first := hd.certs[0]
		expectedMin += int(endAt.Sub(first.arrived) / (first.notAfter.Sub(first.notBefore) * 11 / 20)) // at most every 0.55 TTL
		for i := 1; i < len(hd.certs); i++ {
			prev, cur := hd.certs[i-1], hd.certs[i]
			rotations++
			if cur.arrived.After(prev.notAfter) {
				expired++
				worstGap = max(worstGap, cur.arrived.Sub(prev.notAfter))
			}
			if d := cur.arrived.Sub(prev.rotateAt); d >= 0 {
				late = append(late, d)
			} else {
				early = append(early, -d)
			}
		}
	}
	report(t, "outage run %v: %d streams, %d identities lost (no valid certificate at the end), %d certificates held past NotAfter (worst %v)",
		endAt.Sub(downAt.Add(-settle)).Round(time.Second), len(all), lost, expired, worstGap)
	report(t, "outage rotations received %d (at least %d expected from the schedule); lateness after svidd's rotation time: %s", rotations, expectedMin, dist(late))
	report(t, "outage rotations ahead of schedule (re-minted on B's restart, or a stream's first SVID after it): %d, %s", len(early), dist(early))
	report(t, "outage after: svidd A %s, B %s", mib(a.rssKiB()), mib(b.rssKiB()))
	if lost > 0 || expired > 0 {
		t.Errorf("fleet: outage TARGET MISSED: %d identities lost, %d expired certificates held", lost, expired)
	}
}

// waitEntries waits until h lists at least n entries.
func waitEntries(t testing.TB, h *host, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		es, err := h.client.ListEntries(context.Background(), "", nil)
		if err == nil && len(es) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s lists %d entries (%v) after %v; want %d", h.name, len(es), err, timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitHealthy waits until h's admin API says ready, whatever the registry's state.
func waitHealthy(t testing.TB, h *host, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		hl, err := h.client.Health(context.Background())
		if err == nil && hl.Ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %v %+v; log:\n%s", h.name, timeout, err, hl, h.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
