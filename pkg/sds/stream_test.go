package sds

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// TestIdleStreamsHoldOneGoroutine: an open, idle stream costs the agent the one goroutine gRPC
// runs its handler on (blocked in Recv); pushes use goroutines that end once sent.
func TestIdleStreamsHoldOneGoroutine(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	client := startServer(t, w, nil)
	// settle waits until the goroutine count has not moved for 50 ms (push goroutines and
	// gRPC's own short-lived ones have ended), for at most 5 s.
	settle := func() int {
		n, stable := runtime.NumGoroutine(), 0
		for deadline := time.Now().Add(5 * time.Second); stable < 5 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
			runtime.GC()
			if m := runtime.NumGoroutine(); m == n {
				stable++
			} else {
				n, stable = m, 0
			}
		}
		return n
	}
	// One stream first, so the connection's own goroutines (both ends, in this process) exist.
	c0 := openSotw(t, client)
	c0.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	c0.recv()
	before := settle()

	const streams = 50
	cs := make([]*sotwClient, streams)
	for i := range cs {
		cs[i] = openSotw(t, client)
		cs[i].send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
		r, _ := cs[i].recv()
		cs[i].ack(r, idWeb)
	}
	// Push to every stream, then let the push goroutines end.
	web2 := f.CA.Mint(t, idWeb)
	w.Publish(&workload.View{SVIDs: []*workload.SVID{web2}, Bundles: []*workload.Bundle{f.Own}})
	for _, c := range cs {
		r, _ := c.recv()
		c.ack(r, idWeb)
	}
	after := settle()

	// Each stream: the agent's handler, plus what this test's client side costs per stream
	// (openSotw's receiving goroutine and gRPC's client stream watcher): measure the latter
	// and subtract it.
	perStream := float64(after-before) / streams
	t.Logf("%.2f goroutines per stream (client and agent)", perStream)
	const clientSide = 2 // openSotw's receiver + gRPC client's per-stream context watcher
	if got := perStream - clientSide; got > 1.05 {
		t.Fatalf("idle stream holds %.2f agent goroutines, want 1 (total %d → %d for %d streams)", got, before, after, streams)
	}
}

// TestPushesDeliverTheNewestView: Views published faster than a stream sends are coalesced
// (latest wins), and whatever the interleaving the last response carries the last View.
func TestPushesDeliverTheNewestView(t *testing.T) {
	f := newFixture(t)
	w := workloadtest.NewWatcher(f.View())
	c := openSotw(t, startServer(t, w, nil))
	c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	r, _ := c.recv()
	c.ack(r, idWeb)

	var last *workload.SVID
	for range 40 {
		last = f.CA.Mint(t, idWeb)
		w.Publish(&workload.View{SVIDs: []*workload.SVID{last}, Bundles: []*workload.Bundle{f.Own}})
	}
	seen := 0
	for {
		r, got := c.recv()
		seen++
		c.ack(r, idWeb)
		if bytes.Equal(got[idWeb].GetTlsCertificate().GetCertificateChain().GetInlineBytes(), last.CertChainPEM) {
			wantTLS(t, got[idWeb], last, f.CA)
			break
		}
		if seen > 40 {
			t.Fatal("never received the last View's SVID")
		}
	}
	c.none()
}
