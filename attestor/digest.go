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
)

// digestKey identifies one version of a file. ctime is part of it because mtime is not
// proof of anything: the owner of a binary can rewrite it and set its mtime back (utimes),
// but cannot set ctime, which every write and utimes updates.
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
// MaxBinarySize. It hashes the file /proc/PID/exe opens — the very inode the process runs,
// wherever it was moved or whatever now sits at its old path.
func (a *Attestor) exeDigest(ctx context.Context, d *procDir, pid int) (string, error) {
	f, err := d.open("exe")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return a.fileDigest(ctx, f, pid)
}

func (a *Attestor) fileDigest(ctx context.Context, f *os.File, pid int) (string, error) {
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if fi.Size() > a.maxBin {
		a.log.Warn("caller's binary is larger than max_binary_size; no sha256 selector",
			"pid", pid, "size", fi.Size(), "max", a.maxBin)
		return "", nil
	}
	key, err := keyOf(fi)
	if err != nil {
		return "", err
	}
	return a.digests.get(ctx, key, func() (string, error) { return a.hashFile(f, key) })
}

// hashFile reads f in full. It refuses to produce a digest if the file changed while it was
// read: the digest would be of no version of the file, and would be cached under the old key.
func (a *Attestor) hashFile(f *os.File, key digestKey) (string, error) {
	a.hashes.Add(1)
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

// digestCache is a bounded LRU of digests by file version. Concurrent requests for a version
// not yet cached share one computation: a burst of Envoy streams must not read the same
// 100 MB binary a dozen times.
type digestCache struct {
	mu       sync.Mutex
	max      int
	lru      *list.List // of *digestEntry, most recent first
	byKey    map[digestKey]*list.Element
	inflight map[digestKey]*flight
}

type digestEntry struct {
	key digestKey
	sum string
}

type flight struct {
	done chan struct{}
	sum  string
	err  error
}

func newDigestCache(max int) *digestCache {
	return &digestCache{
		max:      max,
		lru:      list.New(),
		byKey:    make(map[digestKey]*list.Element),
		inflight: make(map[digestKey]*flight),
	}
}

// get returns the cached digest for key, or waits for the computation in flight, or runs
// compute. The computation is not cancelled with ctx (others may be waiting for it, and it
// is bounded by MaxBinarySize); a waiter stops waiting when its ctx is done.
func (c *digestCache) get(ctx context.Context, key digestKey, compute func() (string, error)) (string, error) {
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
			return f.sum, f.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	c.inflight[key] = f
	c.mu.Unlock()

	f.sum, f.err = compute()

	c.mu.Lock()
	delete(c.inflight, key)
	if f.err == nil {
		c.byKey[key] = c.lru.PushFront(&digestEntry{key: key, sum: f.sum})
		for c.lru.Len() > c.max {
			old := c.lru.Remove(c.lru.Back()).(*digestEntry)
			delete(c.byKey, old.key)
		}
	}
	c.mu.Unlock()
	close(f.done)
	return f.sum, f.err
}
