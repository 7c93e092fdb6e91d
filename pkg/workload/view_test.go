package workload

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestMemo: one build per key however many goroutines ask at once, every caller gets that
// one value, keys are independent, and a nil View builds without memoizing.
func TestMemo(t *testing.T) {
	type key struct{ name string }
	v := &View{}
	var builds atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	got := make([]any, 32)
	for i := range got {
		wg.Go(func() {
			got[i] = v.Memo(key{"a"}, func() any {
				builds.Add(1)
				<-release // hold the build so the others pile up behind it
				return new(int)
			})
		})
	}
	close(release)
	wg.Wait()
	if n := builds.Load(); n != 1 {
		t.Fatalf("built %d times for 32 concurrent callers, want once", n)
	}
	for i := range got {
		if got[i] != got[0] || got[i] == nil {
			t.Fatalf("caller %d got %v, caller 0 got %v: want the one shared value", i, got[i], got[0])
		}
	}
	b := v.Memo(key{"b"}, func() any { return new(int) })
	if b == got[0] {
		t.Fatal("another key returned the first key's value")
	}
	if again := v.Memo(key{"a"}, func() any { t.Fatal("rebuilt a memoized key"); return nil }); again != got[0] {
		t.Fatal("memoized value changed")
	}
	var nilView *View
	n := 0
	for range 2 {
		nilView.Memo(key{"a"}, func() any { n++; return n })
	}
	if n != 2 {
		t.Fatalf("nil View: built %d times, want every call", n)
	}
}
