package workload

import (
	"sync/atomic"
	"testing"
)

// TestSubscriptionOnPublish: once set, every Publish calls the callback; a View published before the switch that the reader has not seen is
// reported by one immediate call; sequence numbers tell a reader whether it has the newest; nothing
// is called after Close.
func TestSubscriptionOnPublish(t *testing.T) {
	v0, v1, v2, v3 := &View{}, &View{}, &View{}, &View{}
	s := NewSubscription(v0, nil)
	if v, seq := s.LatestSeq(); v != v0 || seq != 0 {
		t.Fatalf("LatestSeq() = %p, %d; want the initial View, 0", v, seq)
	}
	s.Publish(v1) // the reader holds v0 (seq 0) and has not seen v1

	var calls atomic.Int32
	s.OnPublish(func() { calls.Add(1) }, 0)
	if n := calls.Load(); n != 1 {
		t.Fatalf("OnPublish with a newer View than seen: %d immediate calls, want 1", n)
	}
	s.Publish(v2)
	s.Publish(v3)
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d calls after two more Publishes, want 3", n)
	}
	if v, seq := s.LatestSeq(); v != v3 || seq != 3 {
		t.Fatalf("LatestSeq() = %p, %d; want v3, 3", v, seq)
	}
	s.Close()
	s.Publish(v1)
	if n := calls.Load(); n != 3 {
		t.Fatalf("callback ran after Close (%d calls)", n)
	}
	if s.Latest() != v3 {
		t.Fatal("Publish after Close changed the View")
	}

	// A reader that holds the newest View: no immediate call.
	s2 := NewSubscription(v0, nil)
	s2.Publish(v1)
	_, seen := s2.LatestSeq()
	var calls2 atomic.Int32
	s2.OnPublish(func() { calls2.Add(1) }, seen)
	if n := calls2.Load(); n != 0 {
		t.Fatalf("OnPublish with nothing pending: %d calls, want 0", n)
	}
}
