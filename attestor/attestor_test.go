package attestor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
)

func newAttestor(t testing.TB, cfg Config) *Attestor {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	return proctest.SHA256File(t, path)
}

// selfPeer is a Peer for this test process, with a pidfd or without.
func selfPeer(t testing.TB, withPIDFD bool) *peercred.Peer {
	t.Helper()
	fd := -1
	if withPIDFD {
		var err error
		if fd, err = unix.PidfdOpen(os.Getpid(), 0); err != nil {
			t.Fatal(err)
		}
	}
	p := peercred.NewPeer(int32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid()), fd)
	t.Cleanup(func() { p.Close() })
	return p
}

func strs(sels []entry.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.String()
	}
	return out
}

// checkSelectors asserts the set is normalized, valid, contains want and none of notWant.
func checkSelectors(t *testing.T, got []entry.Selector, want, notWant []string) {
	t.Helper()
	if !slices.Equal(got, entry.Normalize(got)) {
		t.Errorf("selectors are not normalized: %v", strs(got))
	}
	for _, s := range got {
		if err := entry.ValidateSelector(s); err != nil {
			t.Errorf("invalid selector: %v", err)
		}
	}
	have := strs(got)
	for _, w := range want {
		if !slices.Contains(have, w) {
			t.Errorf("missing %s in %v", w, have)
		}
	}
	for _, n := range notWant {
		if slices.Contains(have, n) {
			t.Errorf("unexpected %s in %v", n, have)
		}
	}
}

func withPrefix(sels []entry.Selector, prefix string) []string {
	var out []string
	for _, s := range strs(sels) {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}

func TestAttestSelf(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sum := fileSHA256(t, exe)
	want := []string{
		"unix:uid:" + strconv.Itoa(os.Getuid()),
		"unix:gid:" + strconv.Itoa(os.Getgid()),
		"unix:path:" + exe,
		"unix:namespace:host",
	}
	if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
		want = append(want, "unix:user:"+u.Username)
	}
	if g, err := user.LookupGroupId(strconv.Itoa(os.Getgid())); err == nil {
		want = append(want, "unix:group:"+g.Name)
	}
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		want = append(want, "unix:supplementary_gid:"+strconv.Itoa(g))
	}
	a := newAttestor(t, Config{})

	tests := []struct {
		name      string
		pidfd     bool
		digest    bool
		wantSHA   bool
		wantError bool
	}{
		{"pidfd digest", true, true, true, false},
		{"pidfd no digest", true, false, false, false},
		{"no pidfd digest", false, true, true, false},
		{"no pidfd no digest", false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Attest(context.Background(), selfPeer(t, tt.pidfd), Options{Digest: tt.digest})
			if err != nil {
				t.Fatal(err)
			}
			w := slices.Clone(want)
			var nw []string
			if tt.wantSHA {
				w = append(w, "unix:sha256:"+sum)
			} else if sha := withPrefix(got, "unix:sha256:"); len(sha) > 0 {
				t.Errorf("digest not asked for, got %v", sha)
			}
			checkSelectors(t, got, w, nw)
			cg := withPrefix(got, "unix:cgroup:/")
			if len(cg) != 1 {
				t.Errorf("want one unix:cgroup selector, got %v", cg)
			}
			if gids := withPrefix(got, "unix:supplementary_gid:"); len(gids) != len(groups) {
				t.Errorf("supplementary gids %v; want %v", gids, groups)
			}
		})
	}
}

func TestAttestOtherUser(t *testing.T) {
	bin := proctest.HelperBinary(t)
	c := startCaller(t, &syscall.Credential{Uid: 1001, Gid: 1001, Groups: []uint32{1001, 2000}})
	defer c.exit(t)
	a := newAttestor(t, Config{})

	got, err := a.Attest(context.Background(), c.conn.Peer(), Options{Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"unix:uid:1001",
		"unix:gid:1001",
		"unix:supplementary_gid:1001",
		"unix:supplementary_gid:2000",
		"unix:path:" + bin,
		"unix:sha256:" + fileSHA256(t, bin),
		"unix:namespace:host",
	}
	notWant := []string{"unix:uid:0", "unix:gid:0", "unix:supplementary_gid:0"}
	if u, err := user.LookupId("1001"); err == nil {
		want = append(want, "unix:user:"+u.Username)
	} else if u := withPrefix(got, "unix:user:"); len(u) > 0 {
		t.Errorf("uid 1001 has no name, got %v", u)
	}
	checkSelectors(t, got, want, notWant)
	if gids := withPrefix(got, "unix:supplementary_gid:"); len(gids) != 2 {
		t.Errorf("supplementary gids %v; want exactly 1001 and 2000", gids)
	}
}

func TestAttestCallerGone(t *testing.T) {
	a := newAttestor(t, Config{})
	cred := &syscall.Credential{Uid: 1001, Gid: 1001}

	// gone exited before attestation; its pid is free for reuse.
	gone := startCaller(t, cred)
	gonePID := gone.conn.Peer().PID
	var goneFD int
	gone.conn.Peer().WithPIDFD(func(fd int) error {
		var err error
		goneFD, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	gone.exit(t)

	// alive is another caller, still running.
	alive := startCaller(t, cred)
	defer alive.exit(t)
	var aliveFD int
	alive.conn.Peer().WithPIDFD(func(fd int) error {
		var err error
		aliveFD, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	selfFD, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	self := int32(os.Getpid())

	tests := []struct {
		name string
		peer *peercred.Peer
	}{
		// The peer as the listener made it (SO_PEERPIDFD), after the caller exited.
		{"exited, kernel pidfd", gone.conn.Peer()},
		// Without a pidfd: /proc/PID is gone.
		{"exited, no pidfd", peercred.NewPeer(gonePID, 1001, 1001, -1)},
		// PID now names a live process (here: us) but the pidfd is the dead caller's: what a
		// pid reuse looks like.
		{"pid reused, dead pidfd", peercred.NewPeer(self, uint32(os.Getuid()), uint32(os.Getgid()), goneFD)},
		// PID names a live process that is not the pidfd's.
		{"pid names another process than the pidfd", peercred.NewPeer(self, uint32(os.Getuid()), uint32(os.Getgid()), aliveFD)},
		// PID is a live process with other credentials than the caller connected with.
		{"credentials differ", peercred.NewPeer(self, 1001, 1001, selfFD)},
		{"credentials differ, no pidfd", peercred.NewPeer(self, 1001, 1001, -1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.peer.Close()
			got, err := a.Attest(context.Background(), tt.peer, Options{Digest: true})
			if !errors.Is(err, ErrCallerGone) {
				t.Fatalf("Attest = %v, %v; want ErrCallerGone", strs(got), err)
			}
			if got != nil {
				t.Fatalf("selectors returned with the error: %v", strs(got))
			}
			t.Log(err)
		})
	}
}

// TestAttestCallerExitsDuringAttestation kills and reaps the caller after every /proc read
// succeeded: only the final pidfd check can tell, and it must.
func TestAttestCallerExitsDuringAttestation(t *testing.T) {
	c := startCaller(t, &syscall.Credential{Uid: 1001, Gid: 1001})
	a := newAttestor(t, Config{})
	a.testBeforeLiveness = func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
	got, err := a.Attest(context.Background(), c.conn.Peer(), Options{})
	if !errors.Is(err, ErrCallerGone) || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Attest = %v, %v; want ErrCallerGone from the pidfd check", strs(got), err)
	}
}

func TestAttestRejects(t *testing.T) {
	a := newAttestor(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.Attest(ctx, selfPeer(t, true), Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if _, err := a.Attest(context.Background(), peercred.NewPeer(0, 0, 0, -1), Options{}); err == nil {
		t.Error("pid 0 attested")
	}
	if _, err := a.Attest(context.Background(), nil, Options{}); err == nil {
		t.Error("nil peer attested")
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{}, ""},
		{"negative max", Config{MaxBinarySize: -1}, "negative"},
		{"no procfs", Config{ProcRoot: t.TempDir()}, "own pid namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if a.proc != "/proc" || a.maxBin != DefaultMaxBinarySize {
					t.Fatalf("defaults: proc %q max %d", a.proc, a.maxBin)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDigestCachedPerFileVersion(t *testing.T) {
	a := newAttestor(t, Config{})
	ctx := context.Background()

	// The caller's binary is hashed once for any number of attestations.
	for range 3 {
		got, err := a.Attest(ctx, selfPeer(t, true), Options{Digest: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(withPrefix(got, "unix:sha256:")) != 1 {
			t.Fatalf("no sha256 selector in %v", strs(got))
		}
	}
	if n := a.hashes.Load(); n != 1 {
		t.Fatalf("binary hashed %d times; want 1", n)
	}

	// A file rewritten with the same size and its mtime put back is hashed again (ctime
	// changed), and the new digest is the new content's.
	path := filepath.Join(t.TempDir(), "bin")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	digest := func() string {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sum, _, err := a.fileDigest(ctx, f, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	write("version one")
	fi, _ := os.Stat(path)
	mtime := fi.ModTime()
	before := a.hashes.Load()
	if got, want := digest(), fileSHA256(t, path); got != want {
		t.Fatalf("digest %s; want %s", got, want)
	}
	digest()
	if n := a.hashes.Load() - before; n != 1 {
		t.Fatalf("unchanged file hashed %d times; want 1", n)
	}
	time.Sleep(10 * time.Millisecond) // let ctime move on coarse-clock filesystems
	write("version two")
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if got, want := digest(), fileSHA256(t, path); got != want {
		t.Fatalf("after rewrite: digest %s; want %s (stale cache)", got, want)
	}
	if n := a.hashes.Load() - before; n != 2 {
		t.Fatalf("rewritten file: %d hashes in all; want 2", n)
	}
}

func TestDigestConcurrentOnce(t *testing.T) {
	a := newAttestor(t, Config{})
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, make([]byte, 8<<20), 0o755); err != nil {
		t.Fatal(err)
	}
	want := fileSHA256(t, path)
	const n = 8
	sums := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			f, err := os.Open(path)
			if err != nil {
				errs[i] = err
				return
			}
			defer f.Close()
			sums[i], _, errs[i] = a.fileDigest(context.Background(), f, 0, 0)
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || sums[i] != want {
			t.Fatalf("goroutine %d: %s, %v; want %s", i, sums[i], errs[i], want)
		}
	}
	if got := a.hashes.Load(); got != 1 {
		t.Fatalf("%d concurrent digests of one file read it %d times; want 1", n, got)
	}
}

func TestDigestCacheBounded(t *testing.T) {
	c := newDigestCache(2, 2)
	computed := 0
	get := func(ino uint64) {
		t.Helper()
		sum, err := c.get(context.Background(), digestKey{ino: ino}, 0, func(context.Context) (string, error) {
			computed++
			return fmt.Sprint(ino), nil
		})
		if err != nil || sum != fmt.Sprint(ino) {
			t.Fatalf("get(%d) = %q, %v", ino, sum, err)
		}
	}
	get(1)
	get(2)
	get(1) // 1 is now the most recent
	get(3) // evicts 2
	if computed != 3 {
		t.Fatalf("computed %d; want 3", computed)
	}
	get(1)
	if computed != 3 {
		t.Fatal("recently used entry was evicted")
	}
	get(2)
	if computed != 4 {
		t.Fatal("least recently used entry was not evicted")
	}
	if c.lru.Len() != 2 || len(c.byKey) != 2 {
		t.Fatalf("cache holds %d/%d entries; want 2", c.lru.Len(), len(c.byKey))
	}
	// Errors are not cached.
	_, err := c.get(context.Background(), digestKey{ino: 9}, 0, func(context.Context) (string, error) { return "", errors.New("boom") })
	if err == nil || c.byKey[digestKey{ino: 9}] != nil {
		t.Fatalf("error %v cached", err)
	}
}

func TestDigestSkippedOverMax(t *testing.T) {
	a := newAttestor(t, Config{MaxBinarySize: 1024})
	exe, _ := os.Executable()
	got, err := a.Attest(context.Background(), selfPeer(t, true), Options{Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	if sha := withPrefix(got, "unix:sha256:"); len(sha) != 0 {
		t.Fatalf("binary over MaxBinarySize hashed: %v", sha)
	}
	checkSelectors(t, got, []string{"unix:path:" + exe}, nil)
	if n := a.hashes.Load(); n != 0 {
		t.Fatalf("hashed %d times", n)
	}
}

func BenchmarkAttest(b *testing.B) {
	for _, digest := range []bool{false, true} {
		name := "no-digest"
		if digest {
			name = "digest-cached"
		}
		b.Run(name, func(b *testing.B) {
			a := newAttestor(b, Config{})
			p := selfPeer(b, true)
			ctx := context.Background()
			if _, err := a.Attest(ctx, p, Options{Digest: digest}); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Attest(ctx, p, Options{Digest: digest}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
