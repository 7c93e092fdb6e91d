package svidfiles

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// File names inside a generation directory and DIR itself.
const (
	SVIDFile      = "svid.pem"
	KeyFile       = "svid_key.pem"
	BundleFile    = "bundle.pem"
	JWTSVIDFile   = "jwt_svid.token"
	JWTBundleFile = "jwt_bundle.json"

	// CurrentLink is the symlink naming the live generation.
	CurrentLink = "current"
	// CertSDSFile and ValidationSDSFile are the Envoy SDS resource files at the top of DIR.
	CertSDSFile       = "tls_certificate_sds_secret.yaml"
	ValidationSDSFile = "validation_context_sds_secret.yaml"

	genPrefix = ".gen-"
	delPrefix = ".del"
	lockFile  = ".lock"
	// genTime sorts lexically in time order (fixed width, UTC) and has no ':' for tools that
	// choke on it.
	genTime = "20060102T150405.000000000Z"
)

// Modes, enforced with chmod on every write.
const (
	keyMode  fs.FileMode = 0o600
	fileMode fs.FileMode = 0o644
	dirMode  fs.FileMode = 0o755
)

// DefaultKeep is how many generations older than the current one a Writer keeps by default.
const DefaultKeep = 2

// Config configures a Writer.
type Config struct {
	// Dir is the directory the Writer owns; it is created if missing. Made absolute, because
	// the Envoy resource files name paths inside it.
	Dir string
	// Keep is how many generations older than the current one survive a Write; 0 means
	// DefaultKeep. At least one is always kept: a reader that resolved current just before a
	// swap needs its generation to outlive the swap.
	Keep int
	// Logger defaults to discarding.
	Logger *slog.Logger

	// now is for tests; defaults to time.Now.
	now func() time.Time
}

// Writer writes generations into one directory. Its methods are safe for concurrent use, and
// writers in other processes are kept out by a lock file.
type Writer struct {
	dir  string
	keep int
	log  *slog.Logger
	now  func() time.Time

	mu  sync.Mutex
	seq uint64
}

// NewWriter validates cfg. It touches nothing on disk: the first Write creates Dir.
func NewWriter(cfg Config) (*Writer, error) {
	if cfg.Dir == "" {
		return nil, errors.New("svidfiles: no directory given")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("svidfiles: resolving %s: %w", cfg.Dir, err)
	}
	switch {
	case cfg.Keep == 0:
		cfg.Keep = DefaultKeep
	case cfg.Keep < 0:
		return nil, fmt.Errorf("svidfiles: keep %d is negative", cfg.Keep)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	return &Writer{dir: dir, keep: cfg.Keep, log: cfg.Logger, now: cfg.now}, nil
}

// Dir is the absolute directory the Writer owns.
func (w *Writer) Dir() string { return w.dir }

// Write publishes set as a new generation and returns its directory. When it returns nil,
// DIR/current names the new generation and the Envoy resource files are in place. Should the
// resource files fail after the swap, the generation is live and both the path and the error
// are returned. Failing to remove old generations is only logged.
func (w *Writer) Write(set FileSet) (string, error) {
	if err := set.validate(); err != nil {
		return "", fmt.Errorf("writing SVID files: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	if err := os.MkdirAll(w.dir, dirMode); err != nil {
		return "", fmt.Errorf("creating %s: %w", w.dir, err)
	}
	unlock, err := lockDir(w.dir)
	if err != nil {
		return "", err
	}
	defer unlock()

	cur := filepath.Join(w.dir, CurrentLink)
	if fi, err := os.Lstat(cur); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		return "", fmt.Errorf("refusing to write SVID files: %s exists and is not a symlink (is another tool managing %s?)", cur, w.dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("checking %s: %w", cur, err)
	}

	gen, err := w.writeGeneration(set)
	if err != nil {
		return "", err
	}
	if err := w.swap(filepath.Base(gen)); err != nil {
		os.RemoveAll(gen)
		return "", err
	}
	w.log.Debug("published SVID files", "dir", w.dir, "generation", filepath.Base(gen))
	// The resource files name DIR/current, so they come after current exists: Envoy must never
	// read a resource whose files are missing.
	if err := w.writeSDSFiles(); err != nil {
		return gen, err
	}
	w.prune(filepath.Base(gen))
	return gen, nil
}

// writeGeneration creates a fresh generation directory holding set, synced to disk.
func (w *Writer) writeGeneration(set FileSet) (string, error) {
	var gen string
	for {
		w.seq++
		gen = filepath.Join(w.dir, fmt.Sprintf("%s%s-%06d", genPrefix, w.now().UTC().Format(genTime), w.seq))
		err := os.Mkdir(gen, dirMode)
		if err == nil {
			break
		}
		// Another writer (or a clock that stepped back) got the name first: try the next one.
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("creating generation directory: %w", err)
		}
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(gen)
		return "", err
	}
	if err := os.Chmod(gen, dirMode); err != nil {
		return fail(fmt.Errorf("setting mode of %s: %w", gen, err))
	}
	for _, f := range set.files() {
		if err := writeNew(filepath.Join(gen, f.name), f.data, f.mode); err != nil {
			return fail(err)
		}
	}
	if err := syncDir(gen); err != nil {
		return fail(err)
	}
	return gen, nil
}

// swap points DIR/current at gen: a new symlink renamed over the old one, so readers see the
// old generation or the new one, never neither.
func (w *Writer) swap(gen string) error {
	tmp := filepath.Join(w.dir, ".current.tmp")
	// A crash between symlink and rename leaves tmp behind; the lock makes removing it safe.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale %s: %w", tmp, err)
	}
	// Relative target: DIR stays valid when mounted elsewhere (a container, a chroot).
	if err := os.Symlink(gen, tmp); err != nil {
		return fmt.Errorf("creating symlink to %s: %w", gen, err)
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, CurrentLink)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("swapping %s: %w", CurrentLink, err)
	}
	return syncDir(w.dir)
}

// prune removes generations other than current, keeping the newest w.keep of them.
func (w *Writer) prune(current string) {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		w.log.Warn("listing old SVID file generations", "dir", w.dir, "error", err)
		return
	}
	var old, dead []string
	for _, e := range entries {
		switch {
		case !e.IsDir() || e.Name() == current:
		case strings.HasPrefix(e.Name(), genPrefix):
			old = append(old, e.Name())
		case strings.HasPrefix(e.Name(), delPrefix):
			// Left by a writer that died while deleting.
			dead = append(dead, filepath.Join(w.dir, e.Name()))
		}
	}
	slices.Sort(old)
	if len(old) <= w.keep {
		w.removeAll(dead)
		return
	}
	for _, name := range old[:len(old)-w.keep] {
		// Renamed away first, so a reader inside it can tell "pruned" from "file missing"
		// (see ReadCurrent).
		del := filepath.Join(w.dir, delPrefix+name)
		if err := os.Rename(filepath.Join(w.dir, name), del); err != nil {
			w.log.Warn("removing old SVID file generation", "dir", w.dir, "generation", name, "error", err)
			continue
		}
		dead = append(dead, del)
	}
	w.removeAll(dead)
}

func (w *Writer) removeAll(paths []string) {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			w.log.Warn("removing old SVID file generation", "path", p, "error", err)
		}
	}
}

// writeSDSFiles keeps the Envoy resource files in place, rewriting each only when its content
// differs: every rename into DIR makes Envoy reload, so needless ones are avoided.
func (w *Writer) writeSDSFiles() error {
	files, err := sdsResources(w.dir)
	if err != nil {
		return err
	}
	for _, name := range []string{CertSDSFile, ValidationSDSFile} {
		if err := replaceIfChanged(w.dir, name, files[name], fileMode); err != nil {
			return err
		}
	}
	return nil
}

// writeNew creates path (which must not exist), sets its mode whatever the umask, writes and
// syncs it.
func writeNew(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// replaceIfChanged makes dir/name a regular file holding data with mode: untouched when it
// already is (bar a chmod), otherwise replaced by rename.
func replaceIfChanged(dir, name string, data []byte, mode fs.FileMode) error {
	path := filepath.Join(dir, name)
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			if fi.Mode().Perm() == mode {
				return nil
			}
			if err := os.Chmod(path, mode); err != nil {
				return fmt.Errorf("setting mode of %s: %w", path, err)
			}
			return nil
		}
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale %s: %w", tmp, err)
	}
	if err := writeNew(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a directory's entries (new files, a renamed symlink) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s to sync: %w", dir, err)
	}
	err = d.Sync()
	d.Close()
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// lockDir takes DIR/.lock exclusively (flock), waiting for another writer to finish.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	// Closing the file releases the lock.
	return func() { f.Close() }, nil
}

// ReadCurrent reads the live generation of dir the way every reader should: DIR/current is
// resolved once, that generation's directory is opened, and each file is read relative to the
// open directory (openat), so all files come from one generation even if a Write swaps current
// meanwhile. Optional files that are absent are nil.
//
// A reader slower than Keep writes can find its generation being deleted under it; ReadCurrent
// notices (the writer renames a generation away before deleting its files) and starts over
// with the new current, so it never returns a partial set.
func ReadCurrent(dir string) (FileSet, error) {
	var err error
	for range readAttempts {
		var set FileSet
		var pruned bool
		set, pruned, err = readGeneration(dir)
		if !pruned {
			return set, err
		}
	}
	return FileSet{}, fmt.Errorf("reading current SVID files: generations deleted faster than they could be read: %w", err)
}

const readAttempts = 10

type readFile struct {
	name     string
	dst      *[]byte
	optional bool
}

// readGeneration reads the generation current names. pruned reports that it vanished while
// being read (or before it could be opened), so the caller should try again.
func readGeneration(dir string) (set FileSet, pruned bool, err error) {
	target, err := os.Readlink(filepath.Join(dir, CurrentLink))
	if err != nil {
		return FileSet{}, false, fmt.Errorf("reading current SVID files: %w", err)
	}
	gen := target
	if !filepath.IsAbs(gen) {
		gen = filepath.Join(dir, target)
	}
	root, err := os.OpenRoot(gen)
	if errors.Is(err, fs.ErrNotExist) {
		return FileSet{}, true, err
	}
	if err != nil {
		return FileSet{}, false, fmt.Errorf("opening current SVID files: %w", err)
	}
	defer root.Close()
	// gone reports whether the open generation is no longer at its name: pruned, not merely
	// missing a file.
	gone := func() bool {
		opened, err := root.Stat(".")
		if err != nil {
			return true
		}
		now, err := os.Lstat(gen)
		return err != nil || !os.SameFile(opened, now)
	}
	for _, f := range []readFile{
		{SVIDFile, &set.SVID, false},
		{KeyFile, &set.Key, false},
		{BundleFile, &set.Bundle, false},
		{JWTSVIDFile, &set.JWTSVID, true},
		{JWTBundleFile, &set.JWTBundle, true},
	} {
		data, err := root.ReadFile(f.name)
		if errors.Is(err, fs.ErrNotExist) && gone() {
			return FileSet{}, true, err
		}
		if f.optional && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return FileSet{}, false, fmt.Errorf("reading current SVID files: %w", err)
		}
		*f.dst = data
	}
	return set, false, nil
}
