package attestor

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
)

// ErrHashBudget means the caller's uid has had as many bytes of binaries hashed as its budget
// allows for now (Config.HashBudget): the caller is refused rather than attested without its
// sha256 selector, which could give it fewer identities than it is entitled to, and so another
// default SVID. The agent answers codes.Unavailable; the caller retries later.
var ErrHashBudget = errors.New("caller's uid is over its budget for hashing binaries")

// digestKey identifies one version of a file. ctime is part of it because mtime is not
// proof of anything: the owner of a binary can rewrite it and set its mtime back (utimes),
// but cannot set ctime, which every write and utimes updates. The price: touching a file is
// enough to have it hashed again, which is why hashing has a per-uid budget.
type digestKey struct {
	dev, ino, size      uint64
	mtimeSec, mtimeNsec int64
	ctimeSec, ctimeNsec int64
}

func keyOf(fi os.FileInfo) (digestKey, error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return digestKey{}, errors.New("no stat information")
	}
	return digestKey{
		dev: st.Dev, ino: st.Ino, size: uint64(st.Size),
		mtimeSec: st.Mtim.Sec, mtimeNsec: st.Mtim.Nsec,
		ctimeSec: st.Ctim.Sec, ctimeNsec: st.Ctim.Nsec,
	}, nil
}

// exeDigest returns the hex sha256 of the caller's binary, or "" when it is larger than
// MaxBinarySize, and the version of the file it hashed. It hashes the file /proc/PID/exe opens
// — the very inode the process runs, wherever it was moved or whatever now sits at its old
// path.
func (a *Attestor) exeDigest(ctx context.Context, d *procDir, pid int, uid uint32) (string, digestKey, error) {
	f, err := d.open("exe")
	if err != nil {
		return "", digestKey{}, err
	}
	defer f.Close()
	return a.fileDigest(ctx, f, pid, uid)
}

// fileDigest returns f's digest from the cache, or hashes it, charging uid's budget.
func (a *Attestor) fileDigest(ctx context.Context, f *os.File, pid int, uid uint32) (string, digestKey, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", digestKey{}, err
	}
	key, err := keyOf(fi)
	if err != nil {
		return "", digestKey{}, err
	}
	if fi.Size() > a.maxBin {
		a.warns.warn(a.log, "caller's binary is larger than max_binary_size; no sha256 selector",
			"pid", pid, "size", fi.Size(), "max", a.maxBin)
		return "", key, nil
	}
	sum, err := a.digests.get(ctx, key, uid, func(ctx context.Context) (string, error) {
		if !a.budget.take(uid, fi.Size()) {
			return "", ErrHashBudget
		}
		select {
		case a.hashSlots <- struct{}{}:
		case <-ctx.Done():
			a.budget.refund(uid, fi.Size())
			return "", ctx.Err()
		}
		defer func() { <-a.hashSlots }()
		return a.hashFile(f, key)
	})
	return sum, key, err
}

// hashFile reads f in full. It refuses to produce a digest if the file changed while it was
// read: the digest would be of no version of the file, and would be cached under the old key.
func (a *Attestor) hashFile(f *os.File, key digestKey) (string, error) {
	a.hashes.Add(1)
	now := a.hashing.Add(1)
	defer a.hashing.Add(-1)
	for m := a.maxHashing.Load(); now > m && !a.maxHashing.CompareAndSwap(m, now); m = a.maxHashing.Load() {
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	n, err := io.CopyBuffer(h, io.LimitReader(f, int64(key.size)+1), buf)
	if err != nil {
		return "", fmt.Errorf("reading binary: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	after, err := keyOf(fi)
	if err != nil {
		return "", err
	}
	if uint64(n) != key.size || after != key {
		return "", errors.New("binary changed while it was hashed")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashBudget is a token bucket of bytes per uid: full at capacity, refilled at rate, so a uid
// can have capacity bytes hashed at once and rate bytes a second after that. A uid whose
// bucket is full holds no state (buckets are pruned once they have refilled).
type hashBudget struct {
	capacity float64
	rate     float64 // bytes per second
	now      func() time.Time

	mu   sync.Mutex
	uids map[uint32]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxBudgetUIDs is how many uids' buckets are kept before full ones are pruned.
const maxBudgetUIDs = 1024

func newHashBudget(capacity int64, per time.Duration) *hashBudget {
	return &hashBudget{
		capacity: float64(capacity),
		rate:     float64(capacity) / per.Seconds(),
		now:      time.Now,
		uids:     make(map[uint32]*bucket),
	}
}

// level returns b's tokens at now.
func (h *hashBudget) level(b *bucket, now time.Time) float64 {
	return min(h.capacity, b.tokens+now.Sub(b.at).Seconds()*h.rate)
}

// take charges n bytes to uid, if its bucket holds them.
func (h *hashBudget) take(uid uint32, n int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	b := h.uids[uid]
	if b == nil {
		if len(h.uids) >= maxBudgetUIDs {
			h.pruneLocked(now)
		}
		b = &bucket{tokens: h.capacity, at: now}
		h.uids[uid] = b
	}
	tokens := h.level(b, now)
	if tokens < float64(n) {
		return false
	}
	b.tokens, b.at = tokens-float64(n), now
	return true
}

// refund gives back n bytes taken but not spent.
func (h *hashBudget) refund(uid uint32, n int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if b := h.uids[uid]; b != nil {
		b.tokens = min(h.capacity, b.tokens+float64(n))
	}
}

func (h *hashBudget) pruneLocked(now time.Time) {
	for uid, b := range h.uids {
		if h.level(b, now) >= h.capacity {
			delete(h.uids, uid)
		}
	}
}

// digestCache is a bounded LRU of digests by file version. Concurrent requests for a version
// not yet cached share one computation: a burst of Envoy streams must not read the same
// 100 MB binary a dozen times.
//
// Each digest is charged to the uid whose caller had it computed, and one uid holds at most
// maxPerUID of them: past that, its own least recent one makes room. A uid that touches its
// binary on every connection (each a new file version) then churns only its own share, and
// cannot evict the digests of other uids' binaries (which would make them pay, in time and
// in their own budgets, to have them hashed again).
type digestCache struct {
	mu        sync.Mutex
	max       int
	maxPerUID int
	lru       *list.List // of *digestEntry, most recent first
	byKey     map[digestKey]*list.Element
	perUID    map[uint32]int
	inflight  map[digestKey]*flight
}

type digestEntry struct {
	key digestKey
	uid uint32
	sum string
}

type flight struct {
	done chan struct{}
	sum  string
	err  error
}

func newDigestCache(max, maxPerUID int) *digestCache {
	return &digestCache{
		max:       max,
		maxPerUID: maxPerUID,
		lru:       list.New(),
		byKey:     make(map[digestKey]*list.Element),
		perUID:    make(map[uint32]int),
		inflight:  make(map[digestKey]*flight),
	}
}

// get returns the cached digest for key, or waits for the computation in flight, or runs
// compute for uid. The computation is not cancelled when a waiter's ctx is done (others may be
// waiting for it, and it is bounded by MaxBinarySize); a waiter stops waiting when its ctx is
// done. A computation that failed for reasons of its maker's (its uid's budget, its ctx) is
// not the waiters' failure: they try again, each on its own account.
func (c *digestCache) get(ctx context.Context, key digestKey, uid uint32, compute func(context.Context) (string, error)) (string, error) {
	for {
		c.mu.Lock()
		if e, ok := c.byKey[key]; ok {
			c.lru.MoveToFront(e)
			sum := e.Value.(*digestEntry).sum
			c.mu.Unlock()
			return sum, nil
		}
		if f, ok := c.inflight[key]; ok {
			c.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			if makersOwn(f.err) {
				continue
			}
			return f.sum, f.err
		}
		f := &flight{done: make(chan struct{})}
		c.inflight[key] = f
		c.mu.Unlock()

		f.sum, f.err = compute(ctx)

		c.mu.Lock()
		delete(c.inflight, key)
		if f.err == nil {
			c.addLocked(&digestEntry{key: key, uid: uid, sum: f.sum})
		}
		c.mu.Unlock()
		close(f.done)
		return f.sum, f.err
	}
}

func makersOwn(err error) bool {
	return errors.Is(err, ErrHashBudget) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (c *digestCache) addLocked(e *digestEntry) {
	if c.perUID[e.uid] >= c.maxPerUID {
		for el := c.lru.Back(); el != nil; el = el.Prev() {
			if el.Value.(*digestEntry).uid == e.uid {
				c.removeLocked(el)
				break
			}
		}
	}
	c.byKey[e.key] = c.lru.PushFront(e)
	c.perUID[e.uid]++
	for c.lru.Len() > c.max {
		c.removeLocked(c.lru.Back())
	}
}

func (c *digestCache) removeLocked(el *list.Element) {
	old := c.lru.Remove(el).(*digestEntry)
	delete(c.byKey, old.key)
	if c.perUID[old.uid] <= 1 {
		delete(c.perUID, old.uid)
	} else {
		c.perUID[old.uid]--
	}
}
