// Package attestor turns a caller — the process on the other end of a peercred socket — into
// the selectors registration entries are matched against: unix uid, gid, user, group,
// supplementary gids, binary path and sha256, cgroup, namespace, and systemd unit.
//
// Selectors only ever grant (an entry matches when all its selectors are among the caller's),
// so a selector the attestor cannot establish is left out rather than failing the caller;
// what must never happen is attesting the wrong process. See Attest for the PID-reuse guard.
package attestor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
)

// ErrCallerGone means the process that connected can no longer be identified with certainty:
// it exited (its pid may already belong to another process), or its uid/gid are no longer
// the ones it connected with. The caller gets no identity; a live, legitimate caller simply
// reconnects (the agent should answer codes.Unavailable).
var ErrCallerGone = errors.New("caller is gone or changed since it connected")

// ErrBinaryChanged means the caller runs another binary than the one it ran when its
// connection was first attested (Options.Bound), or exec'd during an attestation. A
// connection's identity is what connected: it is never attested into the identities of a
// binary it exec'd afterwards. The agent refuses such a connection for good.
var ErrBinaryChanged = errors.New("caller runs another binary than when it connected")

// DefaultMaxBinarySize is the largest binary Attest hashes (Envoy is about 100 MB).
const DefaultMaxBinarySize = 512 << 20

// DefaultHashBudgetWindow is the window of the default per-uid hashing budget: each uid may
// have 2 × MaxBinarySize bytes hashed at once, and that much again per window.
const DefaultHashBudgetWindow = 10 * time.Minute

// Digest cache bounds: how many file versions' digests are kept, and how many of them one
// uid's callers can have put there.
const (
	digestCacheSize   = 256
	digestCachePerUID = 16
)

// Config configures an Attestor.
type Config struct {
	// Logger receives skipped selectors and oversized binaries (default: discard).
	Logger *slog.Logger
	// ProcRoot is where procfs is mounted (default "/proc").
	ProcRoot string
	// MaxBinarySize bounds the binaries Attest hashes; a larger one gets no unix:sha256
	// selector, and a line in the log (default DefaultMaxBinarySize).
	MaxBinarySize int64
	// MaxConcurrentHashes bounds how many binaries are hashed at once, for all callers
	// together (default 1): hashing is the one step of attestation that costs real CPU, and
	// the other callers' attestations must find a CPU free.
	MaxConcurrentHashes int
	// HashBudget is how many bytes of binaries one uid's callers may have hashed at once;
	// the budget refills at HashBudget per HashBudgetWindow. A caller whose binary would
	// take its uid over the budget gets ErrHashBudget. Digests already cached cost nothing.
	// Defaults: 2 × MaxBinarySize per DefaultHashBudgetWindow; at least MaxBinarySize.
	HashBudget       int64
	HashBudgetWindow time.Duration
}

// Options says which costly selectors one attestation needs, and what it must agree with.
type Options struct {
	// Digest asks for unix:sha256 of the caller's binary. Hashing a 100 MB Envoy takes a
	// fraction of a second the first time (the result is cached per file version, and
	// charged to the caller's uid, see Config.HashBudget), so the agent asks only when an
	// entry with a sha256 selector could match the caller on its other selectors.
	Digest bool
	// Bound, when set, is the first attestation of the same connection: this one must find
	// the same process (start time) running the same binary file (device and inode), else it
	// fails with ErrBinaryChanged before anything is hashed. (The file's content is the one
	// it had then: the kernel refuses to open a file for writing while a process runs it,
	// ETXTBSY.)
	Bound *Attestation
}

// Attestor derives selectors for callers. It is safe for concurrent use.
type Attestor struct {
	log    *slog.Logger
	proc   string
	maxBin int64

	selfPidNS, selfMntNS nsID

	digests   *digestCache
	budget    *hashBudget
	hashSlots chan struct{} // a semaphore: one token per hash in progress
	names     *nameCache
	warns     *warnLimiter

	// hashes counts binaries actually read and hashed (cache misses); hashing is how many are
	// being hashed now, maxHashing the most there ever were at once.
	hashes, hashing, maxHashing atomic.Int64
	// testBeforeLiveness, when set, runs just before the final pidfd liveness check.
	testBeforeLiveness func()
}

type nsID struct{ dev, ino uint64 }

// New returns an Attestor. It reads svidd's own namespaces from procfs, so it fails when
// ProcRoot is not a procfs.
func New(cfg Config) (*Attestor, error) {
	a := &Attestor{
		log:     cfg.Logger,
		proc:    cfg.ProcRoot,
		maxBin:  cfg.MaxBinarySize,
		digests: newDigestCache(digestCacheSize, digestCachePerUID),
		names:   newNameCache(time.Minute),
		warns:   newWarnLimiter(time.Now),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.proc == "" {
		a.proc = "/proc"
	}
	if a.maxBin == 0 {
		a.maxBin = DefaultMaxBinarySize
	}
	if a.maxBin < 0 {
		return nil, fmt.Errorf("max binary size %d is negative", a.maxBin)
	}
	switch n := cfg.MaxConcurrentHashes; {
	case n < 0:
		return nil, fmt.Errorf("max concurrent hashes %d is negative", n)
	case n == 0:
		a.hashSlots = make(chan struct{}, 1)
	default:
		a.hashSlots = make(chan struct{}, n)
	}
	budget, window := cfg.HashBudget, cfg.HashBudgetWindow
	if budget == 0 {
		budget = 2 * a.maxBin
	}
	if window == 0 {
		window = DefaultHashBudgetWindow
	}
	if budget < a.maxBin || window < 0 {
		return nil, fmt.Errorf("hash budget of %d bytes per %v is below the max binary size %d: a binary of that size could never be hashed", budget, window, a.maxBin)
	}
	a.budget = newHashBudget(budget, window)
	var err error
	if a.selfPidNS, err = statNS(filepath.Join(a.proc, "self/ns/pid")); err != nil {
		return nil, fmt.Errorf("reading svidd's own pid namespace: %w", err)
	}
	if a.selfMntNS, err = statNS(filepath.Join(a.proc, "self/ns/mnt")); err != nil {
		return nil, fmt.Errorf("reading svidd's own mount namespace: %w", err)
	}
	return a, nil
}

// Attest returns the caller's selectors, normalized (entry.Normalize).
//
// uid and gid come from the peer credentials the kernel recorded at connect time, never from
// /proc. Everything else is read from /proc/PID, and PID could by then name another process
// (the caller exited, its pid was reused), so the reads are fenced:
//
//  1. first: open /proc/PID as a directory fd (all reads go through it, and it is bound to
//     the process it was opened for: once that process is reaped they fail, they never
//     show a newcomer's files); read its start time (field 22 of stat); with a pidfd, the
//     pidfd's fdinfo must show the same PID (the pidfd's process holds PID right now);
//  2. the reads;
//  3. last: /proc/PID/status uid/gid still equal the peer's credentials, the start time is
//     unchanged, and the pidfd's process is still alive (pidfd_send_signal, signal 0).
//
// With a pidfd, 1 and 3 prove that one process held PID from before the first read to after
// the last, so every read was of it. If the listener got the pidfd by SO_PEERPIDFD that
// process is exactly the one that connected; if by pidfd_open after accept, it is whoever
// held the pid at accept (a reuse between connect and accept is caught only when the
// newcomer's uid/gid differ). Without a pidfd, the directory fd and the start-time and
// uid/gid checks catch a reuse during the reads, but not one before them by a process of the
// same uid/gid. Any failed check is ErrCallerGone; no selectors are returned with an error.
func (a *Attestor) Attest(ctx context.Context, p *peercred.Peer, o Options) ([]entry.Selector, error) {
	at, err := a.attest(ctx, p, o)
	if err != nil {
		return nil, err
	}
	return at.Selectors, nil
}

// Attestation is the outcome of Record: the caller's selectors, and the identity of the
// process and of the binary it ran, for Unchanged, SameBinary and Options.Bound.
type Attestation struct {
	Selectors []entry.Selector
	start     uint64 // the process's start time (field 22 of /proc/PID/stat)
	exe       exeID
	digest    bool // the selectors include the binary's sha256
}

// SameBinary reports whether two attestations are of the same process (start time) running
// the same binary file (device and inode; unknown to both when svidd could not read it).
func (at *Attestation) SameBinary(o *Attestation) bool {
	return at.start == o.start && at.exe.ok == o.exe.ok &&
		at.exe.key.dev == o.exe.key.dev && at.exe.key.ino == o.exe.key.ino
}

// exeID identifies the binary a process runs: the path /proc/PID/exe names (with its
// " (deleted)" suffix, if any) and the file version behind it. ok is false when it could not be
// read (svidd without ptrace rights): Unchanged then always says no.
type exeID struct {
	path string
	key  digestKey
	ok   bool
}

// Record attests the caller like Attest and also records which binary it runs, so that a
// later Unchanged can tell in three system calls that the attestation still describes it. The
// agent records a connection's attestation as soon as it is accepted, off the path of the
// first request.
func (a *Attestor) Record(ctx context.Context, p *peercred.Peer, o Options) (*Attestation, error) {
	return a.attest(ctx, p, o)
}

// Unchanged reports whether an attestation Record made of p still holds: the very process that
// was attested is alive, and it still runs the same binary (same path, device and inode; and,
// when the attestation includes the binary's sha256, the same version of the file: not
// rewritten). Only an attestation made with the peer's pidfd can be confirmed so: without one,
// or when svidd cannot read the caller's binary, the answer is false and the caller must be
// attested again. A false answer says nothing about why: the fresh attestation tells a caller
// that is gone (ErrCallerGone) from one that exec'd.
//
// Why that is enough: Record's fences established that the pidfd's process held PID through
// the reads. The pidfd is alive after the binary is read here, so the same process still held
// PID then (a pid is not reused while its process lives), and /proc/PID/exe was its. What an
// exec changes for the selectors is the binary (path, sha256); uid and gid are the connect-time
// credentials and do not change. The rest (cgroup, groups, namespaces) is as the process had it
// when it was attested, just after it connected: rights are taken at connect, as for a file
// descriptor.
func (a *Attestor) Unchanged(p *peercred.Peer, at *Attestation) bool {
	if p == nil || at == nil || !at.exe.ok || p.PID <= 0 {
		return false
	}
	exe := filepath.Join(a.proc, strconv.Itoa(int(p.PID)), "exe")
	same := false
	// The Peer's lock keeps the pidfd open (and its number ours) for these two or three calls.
	_ = p.WithPIDFD(func(pidfd int) error {
		if pidfd < 0 {
			return nil
		}
		id, err := readExeID(unix.AT_FDCWD, exe)
		if err != nil || id.path != at.exe.path || id.key.dev != at.exe.key.dev || id.key.ino != at.exe.key.ino {
			return nil
		}
		if at.digest && id != at.exe {
			// Without the sha256 selector the file's content is not part of the selectors.
			return nil
		}
		same = unix.PidfdSendSignal(pidfd, 0, nil, 0) == nil
		return nil
	})
	return same
}

// readExeID reads the binary identity of name (an exe link) relative to dirfd.
func readExeID(dirfd int, name string) (exeID, error) {
	path, err := readlinkat(dirfd, name)
	if err != nil {
		return exeID{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, 0); err != nil {
		return exeID{}, err
	}
	return exeID{path: path, key: digestKey{
		dev: st.Dev, ino: st.Ino, size: uint64(st.Size),
		mtimeSec: st.Mtim.Sec, mtimeNsec: st.Mtim.Nsec,
		ctimeSec: st.Ctim.Sec, ctimeNsec: st.Ctim.Nsec,
	}, ok: true}, nil
}

// attest is Attest and Record.
func (a *Attestor) attest(ctx context.Context, p *peercred.Peer, o Options) (*Attestation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p == nil {
		return nil, errors.New("attesting caller: no peer")
	}
	if p.PID <= 0 {
		// SO_PEERCRED reports pid 0 when the caller's pid namespace is not visible from ours.
		return nil, fmt.Errorf("attesting caller uid %d: its pid is not visible in svidd's pid namespace", p.UID)
	}
	pid := int(p.PID)
	pidfd, err := dupPIDFD(p)
	if err != nil {
		return nil, fmt.Errorf("attesting pid %d: %w", pid, err)
	}
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	dir, err := openProcDir(filepath.Join(a.proc, strconv.Itoa(pid)))
	if err != nil {
		return nil, a.readErr(pid, "opening its /proc directory", err)
	}
	defer dir.close()

	// 1. Fence: which process is /proc/PID?
	start, err := readStartTime(dir)
	if err != nil {
		return nil, a.readErr(pid, "reading start time", err)
	}
	if pidfd >= 0 {
		fdPID, err := a.pidfdPID(pidfd)
		if err != nil {
			return nil, fmt.Errorf("attesting pid %d: %w", pid, err)
		}
		if fdPID != pid {
			return nil, fmt.Errorf("attesting pid %d: %w: its pidfd refers to pid %d", pid, ErrCallerGone, fdPID)
		}
	}

	// 2. Reads.
	sels := make([]entry.Selector, 0, 16)
	add := func(typ, kind, value string) {
		s := entry.Selector{Type: typ, Value: kind + ":" + value}
		if err := entry.ValidateSelector(s); err != nil {
			// e.g. a binary path with a newline: no selector can name it, so none is given.
			a.log.Debug("skipping selector the caller's value cannot form", "pid", pid, "error", err)
			return
		}
		sels = append(sels, s)
	}
	add(entry.TypeUnix, "uid", strconv.FormatUint(uint64(p.UID), 10))
	add(entry.TypeUnix, "gid", strconv.FormatUint(uint64(p.GID), 10))
	if name, ok := a.names.user(p.UID); ok {
		add(entry.TypeUnix, "user", name)
	}
	if name, ok := a.names.group(p.GID); ok {
		add(entry.TypeUnix, "group", name)
	}

	exeKey, err := readExeID(dir.fd, "exe")
	switch {
	case err == nil:
		if a.pathIsExe(exeKey) {
			add(entry.TypeUnix, "path", exeKey.path)
		} else {
			a.log.Debug("caller's binary is not the file its path names in svidd's mount namespace; no unix:path selector",
				"pid", pid, "path", exeKey.path)
		}
	case isPermission(err):
		a.warns.warn(a.log, "cannot read caller's binary path; svidd needs root or CAP_SYS_PTRACE", "pid", pid, "error", err)
	default:
		return nil, a.readErr(pid, "reading binary path", dir.err("readlink", "exe", err))
	}
	if b := o.Bound; b != nil && !b.SameBinary(&Attestation{start: start, exe: exeKey}) {
		return nil, fmt.Errorf("attesting pid %d: %w: it connected running %q", pid, ErrBinaryChanged, b.exe.path)
	}

	if o.Digest && exeKey.ok {
		sum, key, err := a.exeDigest(ctx, dir, pid, p.UID)
		switch {
		case err == nil && (key.dev != exeKey.key.dev || key.ino != exeKey.key.ino):
			return nil, fmt.Errorf("attesting pid %d: %w: it exec'd while it was attested", pid, ErrBinaryChanged)
		case err == nil && sum != "":
			add(entry.TypeUnix, "sha256", sum)
		case err == nil:
		case isPermission(err):
			a.warns.warn(a.log, "cannot read caller's binary; svidd needs root or CAP_SYS_PTRACE", "pid", pid, "error", err)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, ErrHashBudget):
			return nil, fmt.Errorf("attesting pid %d: %w", pid, err)
		default:
			return nil, a.readErr(pid, "hashing binary", err)
		}
	}

	cg, err := readCgroup(dir)
	if err != nil {
		return nil, a.readErr(pid, "reading cgroup", err)
	}
	if cg != "" {
		add(entry.TypeUnix, "cgroup", cg)
		if unit := systemdUnit(cg); unit != "" {
			add(entry.TypeSystemd, "unit", unit)
		}
	}

	switch ns, err := a.namespace(dir); {
	case err == nil:
		add(entry.TypeUnix, "namespace", ns)
	case isPermission(err):
		a.warns.warn(a.log, "cannot read caller's namespaces", "pid", pid, "error", err)
	default:
		return nil, a.readErr(pid, "reading namespaces", err)
	}

	// 3. Fence: still the same process, with the credentials it connected with?
	st, err := readStatus(dir)
	if err != nil {
		return nil, a.readErr(pid, "reading status", err)
	}
	if st.euid != p.UID || st.egid != p.GID {
		return nil, fmt.Errorf("attesting pid %d: %w: it connected as uid %d gid %d, /proc shows uid %d gid %d",
			pid, ErrCallerGone, p.UID, p.GID, st.euid, st.egid)
	}
	for _, g := range st.groups {
		add(entry.TypeUnix, "supplementary_gid", strconv.FormatUint(uint64(g), 10))
	}
	end, err := readStartTime(dir)
	if err != nil {
		return nil, a.readErr(pid, "reading start time", err)
	}
	if end != start {
		return nil, fmt.Errorf("attesting pid %d: %w: its start time changed", pid, ErrCallerGone)
	}
	if exeKey.ok {
		// An exec during the reads would mix two binaries' selectors (the path of one, the
		// cgroup a new one moved to...): the binary must be the same from first read to last.
		var st unix.Stat_t
		if err := unix.Fstatat(dir.fd, "exe", &st, 0); err != nil || st.Dev != exeKey.key.dev || st.Ino != exeKey.key.ino {
			return nil, fmt.Errorf("attesting pid %d: %w: it exec'd while it was attested", pid, ErrBinaryChanged)
		}
	}
	if a.testBeforeLiveness != nil {
		a.testBeforeLiveness()
	}
	if pidfd >= 0 {
		// EPERM means the process exists but svidd may not signal it (svidd not root).
		if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil && !errors.Is(err, unix.EPERM) {
			if errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("attesting pid %d: %w: it exited", pid, ErrCallerGone)
			}
			return nil, fmt.Errorf("attesting pid %d: checking it is alive: %w", pid, err)
		}
	}
	return &Attestation{Selectors: entry.Normalize(sels), start: start, exe: exeKey, digest: o.Digest}, nil
}

// pathIsExe reports whether id's path, resolved in svidd's own mount namespace, is the very
// file the process runs (same device and inode). The path /proc/PID/exe shows is only a name
// the kernel gives the file the process runs: in another mount namespace (a container, or an
// unprivileged user+mount namespace with a bind mount over /usr/bin/envoy) the same name can
// stand for another file, and a binary deleted or replaced since it was started (" (deleted)")
// is no longer what its path names. An entry's unix:path means the file at that path on the
// host svidd runs on.
func (a *Attestor) pathIsExe(id exeID) bool {
	var st unix.Stat_t
	if err := unix.Stat(id.path, &st); err != nil {
		return false
	}
	return st.Dev == id.key.dev && st.Ino == id.key.ino
}

// readErr wraps a failed /proc read; ENOENT and ESRCH mean the process is gone (its /proc
// directory vanishes when it is reaped; exe and ns links fail once it is a zombie).
func (a *Attestor) readErr(pid int, what string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("attesting pid %d: %w: %s: %w", pid, ErrCallerGone, what, err)
	}
	return fmt.Errorf("attesting pid %d: %s: %w", pid, what, err)
}

func isPermission(err error) bool {
	return errors.Is(err, fs.ErrPermission)
}

// dupPIDFD returns a duplicate of the peer's pidfd (or -1), so the attestation owns an fd
// that stays valid even if the connection closes meanwhile, without holding the Peer's lock
// through the reads and the hashing.
func dupPIDFD(p *peercred.Peer) (int, error) {
	dup := -1
	err := p.WithPIDFD(func(fd int) error {
		if fd < 0 {
			return nil
		}
		var err error
		dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("duplicating pidfd: %w", err)
		}
		return nil
	})
	return dup, err
}

// pidfdPID returns the pid (in procfs's pid namespace) of the process a pidfd refers to.
func (a *Attestor) pidfdPID(pidfd int) (int, error) {
	var buf [512]byte // a pidfd's fdinfo is about 100 bytes
	b, err := readAt(unix.AT_FDCWD, filepath.Join(a.proc, "self/fdinfo", strconv.Itoa(pidfd)), buf[:0])
	if err != nil {
		return 0, fmt.Errorf("reading pidfd info: %w", err)
	}
	v, ok := field(b, "Pid:")
	if !ok {
		return 0, errors.New("reading pidfd info: no Pid line")
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("reading pidfd info: %w", err)
	}
	if n <= 0 { // -1: the process exited; 0: not in our namespace
		return 0, fmt.Errorf("%w: it exited", ErrCallerGone)
	}
	return n, nil
}

// namespace is "host" when the caller shares svidd's pid and mount namespaces, else
// "container". "host" therefore means "where svidd runs", which is the host in the
// supported deployment (svidd as a host service).
func (a *Attestor) namespace(dir *procDir) (string, error) {
	pidNS, err := dir.stat("ns/pid")
	if err != nil {
		return "", err
	}
	mntNS, err := dir.stat("ns/mnt")
	if err != nil {
		return "", err
	}
	if pidNS == a.selfPidNS && mntNS == a.selfMntNS {
		return "host", nil
	}
	return "container", nil
}

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}
