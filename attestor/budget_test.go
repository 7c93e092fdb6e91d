package attestor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// writeFiles writes n files of size bytes (each a distinct file version) and returns their paths.
func writeFiles(t *testing.T, n, size int) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprint(i))
		b := make([]byte, size)
		b[0] = byte(i)
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func digestOf(t *testing.T, a *Attestor, path string, uid uint32) (string, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, _, err := a.fileDigest(context.Background(), f, 0, uid)
	return sum, err
}

// TestHashBudgetPerUID: a uid can have HashBudget bytes hashed at once, then HashBudget per
// window; past that its callers get ErrHashBudget (never a digest-less attestation), while
// other uids and digests already cached are not affected.
func TestHashBudgetPerUID(t *testing.T) {
	const mib = 1 << 20
	a := newAttestor(t, Config{MaxBinarySize: mib, HashBudget: 2 * mib, HashBudgetWindow: time.Hour})
	now := time.Now()
	a.budget.now = func() time.Time { return now }
	files := writeFiles(t, 4, mib)

	for _, f := range files[:2] {
		if _, err := digestOf(t, a, f, 7); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := digestOf(t, a, files[2], 7); !errors.Is(err, ErrHashBudget) {
		t.Fatalf("third MiB for uid 7 = %v; want ErrHashBudget", err)
	}
	if _, err := digestOf(t, a, files[0], 7); err != nil {
		t.Fatalf("a cached digest costs nothing, yet: %v", err)
	}
	if _, err := digestOf(t, a, files[2], 8); err != nil {
		t.Fatalf("uid 8 refused for uid 7's spending: %v", err)
	}
	// Half the window refills half the budget: one more MiB, not two.
	now = now.Add(30 * time.Minute)
	if _, err := digestOf(t, a, files[3], 7); err != nil {
		t.Fatal(err)
	}
	// files[2] is cached by now (uid 8 had it hashed): free for uid 7 too.
	if _, err := digestOf(t, a, files[2], 7); err != nil {
		t.Fatal(err)
	}
	if n := a.hashes.Load(); n != 4 {
		t.Fatalf("%d hashes; want 4", n)
	}
	touch := func(p string) {
		t.Helper()
		time.Sleep(5 * time.Millisecond)
		now := time.Now()
		if err := os.Chtimes(p, now, now); err != nil {
			t.Fatal(err)
		}
	}
	// A touched file is a new version: hashed again, and charged.
	touch(files[1])
	if _, err := digestOf(t, a, files[1], 7); !errors.Is(err, ErrHashBudget) {
		t.Fatalf("touched file for uid 7 = %v; want ErrHashBudget", err)
	}
	if n := a.hashes.Load(); n != 4 {
		t.Fatalf("%d hashes; want 4", n)
	}

	// The budget must allow the largest binary hashed.
	if _, err := New(Config{MaxBinarySize: 2 * mib, HashBudget: mib}); err == nil {
		t.Fatal("a budget below MaxBinarySize accepted")
	}
	if _, err := New(Config{MaxConcurrentHashes: -1}); err == nil {
		t.Fatal("negative MaxConcurrentHashes accepted")
	}
}

// TestHashBudgetPruned: the per-uid state is bounded; uids whose budget has refilled are
// forgotten.
func TestHashBudgetPruned(t *testing.T) {
	b := newHashBudget(10, time.Second)
	now := time.Now()
	b.now = func() time.Time { return now }
	for uid := range uint32(maxBudgetUIDs) {
		if !b.take(uid, 10) {
			t.Fatal("fresh uid refused")
		}
	}
	now = now.Add(2 * time.Second)
	b.take(1<<20, 1)
	if len(b.uids) != 1 {
		t.Fatalf("%d buckets kept; want 1", len(b.uids))
	}
}

// TestHashesSerialized: however many callers need a binary hashed at once, at most
// MaxConcurrentHashes are read at a time; each still gets its digest.
func TestHashesSerialized(t *testing.T) {
	a := newAttestor(t, Config{})
	files := writeFiles(t, 8, 4<<20)
	var wg sync.WaitGroup
	errs := make(chan error, len(files))
	for i, f := range files {
		wg.Go(func() {
			sum, err := digestOf(t, a, f, uint32(i))
			if err == nil && sum != fileSHA256(t, f) {
				err = fmt.Errorf("wrong digest for %s", f)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := a.hashes.Load(); n != int64(len(files)) {
		t.Fatalf("%d hashes; want %d", n, len(files))
	}
	if m := a.maxHashing.Load(); m != 1 {
		t.Fatalf("%d binaries hashed at once; want 1", m)
	}
}

// TestWaiterNotFailedByMakersBudget: a caller waiting for a digest another uid's caller is
// computing does not inherit that uid's refusal; it has the file hashed on its own budget.
func TestWaiterNotFailedByMakersBudget(t *testing.T) {
	c := newDigestCache(4, 4)
	key := digestKey{ino: 1}
	started, release := make(chan struct{}), make(chan struct{})
	go c.get(context.Background(), key, 7, func(context.Context) (string, error) {
		close(started)
		<-release
		return "", ErrHashBudget
	})
	<-started
	res := make(chan error, 1)
	go func() {
		sum, err := c.get(context.Background(), key, 8, func(context.Context) (string, error) { return "sum", nil })
		if err == nil && sum != "sum" {
			err = fmt.Errorf("sum %q", sum)
		}
		res <- err
	}()
	time.Sleep(10 * time.Millisecond) // let it wait on the flight
	close(release)
	if err := <-res; err != nil {
		t.Fatalf("waiter of uid 8: %v", err)
	}
}

// TestDigestCachePerUID: a uid that has many file versions hashed (touching its binary before
// every connection) evicts only its own digests, never those of other uids.
func TestDigestCachePerUID(t *testing.T) {
	c := newDigestCache(8, 3)
	get := func(ino uint64, uid uint32) bool {
		computed := false
		c.get(context.Background(), digestKey{ino: ino}, uid, func(context.Context) (string, error) {
			computed = true
			return fmt.Sprint(ino), nil
		})
		return computed
	}
	get(1, 1)
	get(2, 2)
	for ino := uint64(100); ino < 200; ino++ {
		get(ino, 9)
	}
	if get(1, 1) || get(2, 2) {
		t.Fatal("another uid's churn evicted a digest")
	}
	if c.perUID[9] != 3 || c.lru.Len() != 5 {
		t.Fatalf("uid 9 holds %d digests, cache %d; want 3 and 5", c.perUID[9], c.lru.Len())
	}
	if get(199, 9) || !get(100, 9) {
		t.Fatal("uid 9's own LRU order not kept")
	}
}
