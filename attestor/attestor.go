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

// DefaultMaxBinarySize is the largest binary Attest hashes (Envoy is about 100 MB).
const DefaultMaxBinarySize = 512 << 20

// Config configures an Attestor.
type Config struct {
	// Logger receives skipped selectors and oversized binaries (default: discard).
	Logger *slog.Logger
	// ProcRoot is where procfs is mounted (default "/proc").
	ProcRoot string
	// MaxBinarySize bounds the binaries Attest hashes; a larger one gets no unix:sha256
	// selector, and a line in the log (default DefaultMaxBinarySize).
	MaxBinarySize int64
}

// Options says which costly selectors one attestation needs.
type Options struct {
	// Digest asks for unix:sha256 of the caller's binary. Hashing a 100 MB Envoy takes a
	// fraction of a second the first time (the result is cached per file version), so the
	// agent asks only when some entry uses a sha256 selector.
	Digest bool
}

// Attestor derives selectors for callers. It is safe for concurrent use.
type Attestor struct {
	log    *slog.Logger
	proc   string
	maxBin int64

	selfPidNS, selfMntNS nsID

	digests *digestCache
	names   *nameCache

	// hashes counts binaries actually read and hashed (cache misses).
	hashes atomic.Int64
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
		digests: newDigestCache(256),
		names:   newNameCache(time.Minute),
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
	at, err := a.attest(ctx, p, o, false)
	if err != nil {
		return nil, err
	}
	return at.Selectors, nil
}

// Attestation is the outcome of Record: the caller's selectors, and the identity of the binary
// it ran, for Unchanged.
type Attestation struct {
	Selectors []entry.Selector
	exe       exeID
	digest    bool // the selectors include the binary's sha256
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
	return a.attest(ctx, p, o, true)
}

// Unchanged reports whether an attestation Record made of p still holds: the very process that
// was attested is alive, and it still runs the same binary (same path; and, when the
// attestation includes the binary's sha256, the same version of the file: not replaced or
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
		if at.digest {
			if id, err := readExeID(unix.AT_FDCWD, exe); err != nil || id != at.exe {
				return nil
			}
		} else if path, err := readlinkat(unix.AT_FDCWD, exe); err != nil || path != at.exe.path {
			// Without the sha256 selector the path is all the selectors say of the binary.
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

// attest is Attest; record also fills in the binary's identity (one more stat).
func (a *Attestor) attest(ctx context.Context, p *peercred.Peer, o Options, record bool) (*Attestation, error) {
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

	// The path keeps a " (deleted)" suffix: a binary replaced on disk (an upgrade) no longer
	// is what the path names, so it must not match entries written for that path.
	var exe string
	var exeKey exeID
	if record {
		exeKey, err = readExeID(dir.fd, "exe")
		exe = exeKey.path
		if err != nil {
			err = dir.err("readlink", "exe", err)
		}
	} else {
		exe, err = dir.readlink("exe")
	}
	switch {
	case err == nil:
		add(entry.TypeUnix, "path", exe)
	case isPermission(err):
		a.log.Warn("cannot read caller's binary path; svidd needs root or CAP_SYS_PTRACE", "pid", pid, "error", err)
	default:
		return nil, a.readErr(pid, "reading binary path", err)
	}

	if o.Digest {
		sum, err := a.exeDigest(ctx, dir, pid)
		switch {
		case err == nil && sum != "":
			add(entry.TypeUnix, "sha256", sum)
		case err == nil:
		case isPermission(err):
			a.log.Warn("cannot read caller's binary; svidd needs root or CAP_SYS_PTRACE", "pid", pid, "error", err)
		case ctx.Err() != nil:
			return nil, ctx.Err()
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
		a.log.Warn("cannot read caller's namespaces", "pid", pid, "error", err)
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
	return &Attestation{Selectors: entry.Normalize(sels), exe: exeKey, digest: o.Digest}, nil
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
