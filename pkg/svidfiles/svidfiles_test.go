package svidfiles

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// newPair returns a fresh ECDSA key and a self-signed certificate for it, PEM-encoded; the
// serial makes every pair distinguishable.
func newPair(t testing.TB, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "gen"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
}

// newSet is a complete FileSet; the bundle is the certificate itself, so a reader can check
// that the bundle comes from the same generation as the pair.
func newSet(t testing.TB, serial int64) FileSet {
	c, k := newPair(t, serial)
	return FileSet{SVID: c, Key: k, Bundle: c}
}

// memDir is a temporary directory on tmpfs when there is one. The tests that write hundreds of
// generations test atomicity, not durability: on tmpfs fsync is free and they stay fast on a
// busy disk, through the very same code.
func memDir(t testing.TB) string {
	t.Helper()
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "svidfiles-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newWriter(t testing.TB, cfg Config) *Writer {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	w, err := NewWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func mode(t testing.TB, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// generations lists DIR's generation directories, oldest first.
func generations(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var gens []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), genPrefix) {
			gens = append(gens, e.Name())
		}
	}
	slices.Sort(gens)
	return gens
}

// currentTarget checks DIR/current is a relative symlink to an existing generation and
// returns that generation's name.
func currentTarget(t testing.TB, dir string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, CurrentLink))
	if err != nil {
		t.Fatalf("current is not a symlink: %v", err)
	}
	if filepath.IsAbs(target) || !strings.HasPrefix(target, genPrefix) {
		t.Fatalf("current -> %q, want a relative %s* name", target, genPrefix)
	}
	if fi, err := os.Stat(filepath.Join(dir, target)); err != nil || !fi.IsDir() {
		t.Fatalf("current -> %s, which is not a directory: %v", target, err)
	}
	return target
}

func TestWriteLayout(t *testing.T) {
	tests := []struct {
		name      string
		jwt       bool
		wantFiles []string
	}{
		{"x509 only", false, []string{BundleFile, SVIDFile, KeyFile}},
		{"with JWT", true, []string{BundleFile, JWTBundleFile, JWTSVIDFile, SVIDFile, KeyFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "svid") // created by Write
			w := newWriter(t, Config{Dir: dir})
			set := newSet(t, 1)
			if tt.jwt {
				set.JWTSVID = []byte("header.claims.sig")
				set.JWTBundle = []byte(`{"example.org":{"keys":[]}}`)
			}
			gen, err := w.Write(set)
			if err != nil {
				t.Fatal(err)
			}
			if got := currentTarget(t, dir); got != filepath.Base(gen) {
				t.Errorf("current -> %s, Write returned %s", got, gen)
			}
			entries, err := os.ReadDir(gen)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if !slices.Equal(names, tt.wantFiles) {
				t.Errorf("generation holds %v, want %v", names, tt.wantFiles)
			}
			wantModes := map[string]fs.FileMode{
				gen: 0o755, filepath.Join(gen, SVIDFile): 0o644, filepath.Join(gen, KeyFile): 0o600,
				filepath.Join(gen, BundleFile):  0o644,
				filepath.Join(dir, CertSDSFile): 0o644, filepath.Join(dir, ValidationSDSFile): 0o644,
			}
			if tt.jwt {
				wantModes[filepath.Join(gen, JWTSVIDFile)] = 0o600
				wantModes[filepath.Join(gen, JWTBundleFile)] = 0o644
			}
			for p, want := range wantModes {
				if got := mode(t, p); got != want {
					t.Errorf("%s has mode %o, want %o", p, got, want)
				}
			}
			got, err := ReadCurrent(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !equalSets(got, set) {
				t.Errorf("ReadCurrent = %+v, want what was written", got)
			}
		})
	}
}

func equalSets(a, b FileSet) bool {
	return bytes.Equal(a.SVID, b.SVID) && bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Bundle, b.Bundle) &&
		bytes.Equal(a.JWTSVID, b.JWTSVID) && bytes.Equal(a.JWTBundle, b.JWTBundle) &&
		(a.JWTSVID == nil) == (b.JWTSVID == nil) && (a.JWTBundle == nil) == (b.JWTBundle == nil)
}

// TestModesIgnoreUmask: modes come from chmod, not from whatever umask the user runs with.
// Not parallel: the umask is per process.
func TestModesIgnoreUmask(t *testing.T) {
	for _, umask := range []int{0o077, 0o000, 0o022} {
		t.Run(fs.FileMode(umask).String(), func(t *testing.T) {
			old := syscall.Umask(umask)
			defer syscall.Umask(old)
			w := newWriter(t, Config{})
			gen, err := w.Write(newSet(t, 1))
			if err != nil {
				t.Fatal(err)
			}
			for p, want := range map[string]fs.FileMode{
				gen: 0o755, filepath.Join(gen, SVIDFile): 0o644, filepath.Join(gen, KeyFile): 0o600,
				filepath.Join(gen, BundleFile): 0o644, filepath.Join(w.Dir(), CertSDSFile): 0o644,
			} {
				if got := mode(t, p); got != want {
					t.Errorf("umask %o: %s has mode %o, want %o", umask, p, got, want)
				}
			}
		})
	}
}

// TestRewriteRepairs: every Write restores the resource files' modes and content, and leaves
// them alone (same inode: Envoy sees no move) when they are already right.
func TestRewriteRepairs(t *testing.T) {
	tests := []struct {
		name       string
		damage     func(path string) error
		wantNewIno bool
	}{
		{"untouched", func(string) error { return nil }, false},
		{"mode loosened", func(p string) error { return os.Chmod(p, 0o666) }, false},
		{"mode tightened", func(p string) error { return os.Chmod(p, 0o600) }, false},
		{"content edited", func(p string) error { return os.WriteFile(p, []byte("resources: []\n"), 0o644) }, true},
		{"replaced by a symlink", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink("/etc/hostname", p)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWriter(t, Config{})
			gen1, err := w.Write(newSet(t, 1))
			if err != nil {
				t.Fatal(err)
			}
			res := filepath.Join(w.Dir(), CertSDSFile)
			want, err := os.ReadFile(res)
			if err != nil {
				t.Fatal(err)
			}
			before := inode(t, res)
			if err := tt.damage(res); err != nil {
				t.Fatal(err)
			}
			// The old generation's key loosened too: the next generation must not inherit it.
			if err := os.Chmod(filepath.Join(gen1, KeyFile), 0o644); err != nil {
				t.Fatal(err)
			}
			gen2, err := w.Write(newSet(t, 2))
			if err != nil {
				t.Fatal(err)
			}
			if got := mode(t, res); got != 0o644 {
				t.Errorf("%s has mode %o after rewrite, want 644", res, got)
			}
			if got, _ := os.ReadFile(res); !bytes.Equal(got, want) {
				t.Errorf("%s = %q after rewrite, want %q", res, got, want)
			}
			if fi, _ := os.Lstat(res); !fi.Mode().IsRegular() {
				t.Errorf("%s is %v, want a regular file", res, fi.Mode())
			}
			if gotNew := inode(t, res) != before; gotNew != tt.wantNewIno {
				t.Errorf("resource file replaced = %v, want %v", gotNew, tt.wantNewIno)
			}
			if got := mode(t, filepath.Join(gen2, KeyFile)); got != 0o600 {
				t.Errorf("new key has mode %o, want 600", got)
			}
		})
	}
}

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestPrune(t *testing.T) {
	tests := []struct {
		keep, wantOld int
	}{
		{0, DefaultKeep},
		{1, 1},
		{3, 3},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("keep ", tt.keep), func(t *testing.T) {
			w := newWriter(t, Config{Keep: tt.keep})
			var written []string
			for i := range 6 {
				gen, err := w.Write(newSet(t, int64(i)))
				if err != nil {
					t.Fatal(err)
				}
				written = append(written, filepath.Base(gen))
				if got := currentTarget(t, w.Dir()); got != filepath.Base(gen) {
					t.Fatalf("write %d: current -> %s, want %s", i, got, gen)
				}
				gens := generations(t, w.Dir())
				if want := written[max(0, len(written)-tt.wantOld-1):]; !slices.Equal(gens, want) {
					t.Fatalf("write %d: generations %v, want %v", i, gens, want)
				}
			}
		})
	}
}

// TestPruneSparesCurrent: a generation named later than current (a clock that stepped back)
// is old, but current itself is never deleted.
func TestPruneSparesCurrent(t *testing.T) {
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	w := newWriter(t, Config{Keep: 1, now: func() time.Time { return clock }})
	for range 3 {
		if _, err := w.Write(newSet(t, 1)); err != nil {
			t.Fatal(err)
		}
	}
	clock = clock.Add(-24 * time.Hour)
	gen, err := w.Write(newSet(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	if got := currentTarget(t, w.Dir()); got != filepath.Base(gen) {
		t.Fatalf("current -> %s, want %s", got, gen)
	}
	if gens := generations(t, w.Dir()); len(gens) != 2 || !slices.Contains(gens, filepath.Base(gen)) {
		t.Fatalf("generations %v, want current %s and one other", gens, filepath.Base(gen))
	}
}

func TestRefuses(t *testing.T) {
	c1, k1 := newPair(t, 1)
	c2, k2 := newPair(t, 2)
	tests := []struct {
		name    string
		prepare func(dir string) error
		set     FileSet
		want    string
	}{
		{"current is a file", func(d string) error { return os.WriteFile(filepath.Join(d, CurrentLink), nil, 0o644) },
			FileSet{SVID: c1, Key: k1, Bundle: c1}, "not a symlink"},
		{"current is a directory", func(d string) error { return os.Mkdir(filepath.Join(d, CurrentLink), 0o755) },
			FileSet{SVID: c1, Key: k1, Bundle: c1}, "not a symlink"},
		{"key of another certificate", nil, FileSet{SVID: c1, Key: k2, Bundle: c1}, "key pair"},
		{"no key", nil, FileSet{SVID: c2, Bundle: c2}, "no private key"},
		{"no bundle", nil, FileSet{SVID: c2, Key: k2}, "no trust bundle"},
		{"no SVID", nil, FileSet{Key: k2, Bundle: c2}, "no SVID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.prepare != nil {
				if err := tt.prepare(dir); err != nil {
					t.Fatal(err)
				}
			}
			w := newWriter(t, Config{Dir: dir})
			_, err := w.Write(tt.set)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Write: err = %v, want one mentioning %q", err, tt.want)
			}
			if gens := generations(t, dir); len(gens) != 0 {
				t.Errorf("a refused write left generations %v", gens)
			}
		})
	}
	for _, cfg := range []Config{{}, {Dir: t.TempDir(), Keep: -1}} {
		if _, err := NewWriter(cfg); err == nil {
			t.Errorf("NewWriter(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestReadCurrentErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadCurrent(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadCurrent of an empty dir: err = %v, want ErrNotExist", err)
	}
	// A generation missing a required file (someone deleted it) is an error, not a half set.
	w := newWriter(t, Config{Dir: dir})
	gen, err := w.Write(newSet(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(gen, KeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadCurrent(dir); err == nil {
		t.Error("ReadCurrent of a generation without a key succeeded")
	}
}

// TestReadersNeverSeeMismatch is the reason the package exists: while a writer publishes
// hundreds of generations, each with a fresh key, a reader resolving current once always gets
// a certificate, key and bundle from one generation, complete.
func TestReadersNeverSeeMismatch(t *testing.T) {
	const generations = 500
	w := newWriter(t, Config{Dir: memDir(t)})
	// Pregenerate so the writer swaps as fast as the disk allows, maximising the overlap.
	sets := make([]FileSet, generations)
	for i := range sets {
		sets[i] = newSet(t, int64(i+1))
	}
	if _, err := w.Write(sets[0]); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	errs := make(chan error, 4)
	var reads [2]int
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				set, err := ReadCurrent(w.Dir())
				if err != nil {
					errs <- err
					return
				}
				if _, err := tls.X509KeyPair(set.SVID, set.Key); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(set.SVID, set.Bundle) {
					errs <- errors.New("svid.pem and bundle.pem come from different generations")
					return
				}
				reads[r]++
			}
		})
	}
	for _, s := range sets[1:] {
		if _, err := w.Write(s); err != nil {
			t.Error(err)
			break
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if reads[0]+reads[1] < generations {
		t.Errorf("only %d reads during %d writes: the test did not exercise the race", reads[0]+reads[1], generations)
	}
	t.Logf("%d reads during %d generations", reads[0]+reads[1], generations)
}

// TestTwoWriters: two Writers (two processes' worth) on one directory take turns through the
// lock file; each of their writes is published and current stays valid.
func TestTwoWriters(t *testing.T) {
	dir := memDir(t)
	ws := []*Writer{newWriter(t, Config{Dir: dir, Keep: 1}), newWriter(t, Config{Dir: dir, Keep: 1})}
	sets := make([]FileSet, 50)
	for i := range sets {
		sets[i] = newSet(t, int64(i+1))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, w := range ws {
		wg.Go(func() {
			for _, s := range sets {
				if _, err := w.Write(s); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	currentTarget(t, dir)
	if gens := generations(t, dir); len(gens) != 2 {
		t.Errorf("generations %v, want current and one old", gens)
	}
	if _, err := ReadCurrent(dir); err != nil {
		t.Error(err)
	}
}
