package peercred

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/pkg/ownership"
)

// MaxPathLen is the longest socket path the kernel accepts: sun_path is 108 bytes including
// the terminating NUL.
const MaxPathLen = 107

// ErrInUse is returned by Listen when a live process answers on the socket path. The daemon
// should exit with the error: a second svidd must not steal a running one's socket.
var ErrInUse = errors.New("another svidd is serving")

// DefaultDirMode is the mode of a socket's parent directory when Listen creates it: every
// local user must be able to traverse it to reach the api socket.
const DefaultDirMode os.FileMode = 0o755

// staleDialTimeout bounds the probe that tells a live socket from a stale one. A live agent
// accepts in microseconds; a socket nobody listens on is refused at once.
const staleDialTimeout = time.Second

// peerPIDFDUnsupported is set once the kernel has said it does not know SO_PEERPIDFD (before
// Linux 6.5), so later accepts go straight to the fallback.
var peerPIDFDUnsupported atomic.Bool

// pidfdOpenUnsupported is set once pidfd_open returned ENOSYS (before Linux 5.3).
var pidfdOpenUnsupported atomic.Bool

// ListenConfig holds the options of Listen that most callers leave at their defaults.
type ListenConfig struct {
	// DirMode is the mode given to the socket's parent directory if Listen creates it
	// (default DefaultDirMode). An existing directory is left as it is, and must be svidd's
	// (pkg/ownership).
	DirMode os.FileMode
	// Logger receives one line per connection the listener drops (default: discard).
	Logger *slog.Logger
}

// Listener is a Unix stream listener whose connections carry the kernel's credentials of
// the connecting process. It implements net.Listener; Accept returns *Conn.
type Listener struct {
	// Admit, when set, is asked about every accepted connection; Accept closes and drops
	// the connections it returns false for and waits for the next one. Set it before the
	// first Accept. The admin socket uses it to refuse every uid but its owner's and root's.
	Admit func(*Peer) bool

	ul   *net.UnixListener
	path string
	addr *net.UnixAddr
	dev  uint64
	ino  uint64
	log  *slog.Logger

	// test knobs: pretend the kernel lacks SO_PEERPIDFD / pidfd_open.
	noPeerPIDFD bool
	noPidfdOpen bool

	closeOnce sync.Once
	closeErr  error
}

// Listen listens on the Unix socket path with the given permission bits, creating the
// parent directory (0755) if needed and refusing one that is not svidd's. See ListenConfig.Listen.
func Listen(path string, mode os.FileMode) (*Listener, error) {
	return ListenConfig{}.Listen(path, mode)
}

// Listen creates a Unix stream socket at path with permission bits mode (0666 for the api
// socket: attestation decides what a caller gets; 0600 for the admin socket).
//
// It refuses a path longer than MaxPathLen, a parent directory owned by another user or
// writable by others (see pkg/ownership), a path that exists and is not a socket, and a
// socket a live process answers on (ErrInUse). A socket file nobody answers on is left over
// from a crashed agent and is removed.
//
// The socket is bound inside a fresh 0700 directory next to path, chmodded there, and then
// hard-linked into place. Go's net package binds and listens in one call, so a plain
// bind-then-chmod leaves a window in which the socket has the umask's mode (0777 under a
// zero umask) and any user may connect to what is meant to be an owner-only socket. link(2)
// also refuses to replace a file that appeared meanwhile, so two agents starting at once
// cannot both win. When the temporary path would exceed MaxPathLen we bind at path and chmod
// right after; that window is then covered by Listener.Admit, which the admin socket sets.
func (c ListenConfig) Listen(path string, mode os.FileMode) (*Listener, error) {
	if path == "" {
		return nil, errors.New("socket path is empty")
	}
	if len(path) > MaxPathLen {
		return nil, fmt.Errorf("socket path %s is %d bytes long; Unix sockets allow at most %d", path, len(path), MaxPathLen)
	}
	if mode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("socket mode %v has bits other than permissions", mode)
	}
	dirMode := c.DirMode
	if dirMode == 0 {
		dirMode = DefaultDirMode
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	if err := ensureDir(dir, dirMode); err != nil {
		return nil, err
	}
	if err := clearStale(path); err != nil {
		return nil, err
	}

	ul, err := bindPrivately(dir, path, mode)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ul.Close()
		return nil, fmt.Errorf("checking socket %s: %w", path, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return &Listener{
		ul:   ul,
		path: path,
		addr: &net.UnixAddr{Name: path, Net: "unix"},
		dev:  uint64(st.Dev),
		ino:  st.Ino,
		log:  logger,
	}, nil
}

// ensureDir creates the socket directory with mode, owned by svidd, or checks that an
// existing one is svidd's (pkg/ownership): whoever else could write it, or rename it through
// a parent, could move the live socket aside and listen in its place. An existing directory
// (0700 or 0755) keeps its mode.
func ensureDir(dir string, mode os.FileMode) error {
	return ownership.Dir("socket directory", dir, mode)
}

// clearStale makes path free for a new socket: nothing there, or a socket nobody answers on
// (removed). A live socket is ErrInUse; any other file is refused, never deleted.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking socket path: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	conn, err := net.DialTimeout("unix", path, staleDialTimeout)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%w on %s", ErrInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// EAGAIN (full backlog), a timeout or EACCES: somebody may well be serving there.
		return fmt.Errorf("checking whether %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// bindPrivately binds a socket with the given mode and links it to path; see Listen.
func bindPrivately(dir, path string, mode os.FileMode) (*net.UnixListener, error) {
	tmpDir, err := os.MkdirTemp(dir, ".svidd-") // 0700: nobody else can reach the socket yet
	if err != nil {
		return nil, fmt.Errorf("creating temporary socket directory: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) > MaxPathLen {
		return bindDirect(path, mode)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// The listener knows only the temporary name; we remove the real one ourselves.
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		ul.Close()
		return nil, fmt.Errorf("setting socket mode: %w", err)
	}
	if err := os.Link(tmp, path); err != nil {
		ul.Close()
		if errors.Is(err, fs.ErrExist) {
			if err := clearStale(path); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%s appeared while svidd was starting; try again", path)
		}
		return nil, fmt.Errorf("placing socket at %s: %w", path, err)
	}
	return ul, nil
}

func bindDirect(path string, mode os.FileMode) (*net.UnixListener, error) {
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false)
	// Until this chmod the socket has the umask's mode; see Listen.
	if err := os.Chmod(path, mode); err != nil {
		ul.Close()
		os.Remove(path)
		return nil, fmt.Errorf("setting socket mode: %w", err)
	}
	return ul, nil
}

// Addr returns the socket's path as a *net.UnixAddr.
func (l *Listener) Addr() net.Addr { return l.addr }

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Accept implements net.Listener; the connection is a *Conn.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptPeer()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptPeer waits for the next connection whose peer credentials could be read and which
// Admit (if set) accepts. Connections from a process that is already gone, or that Admit
// refuses, are closed and logged; they never reach the caller.
func (l *Listener) AcceptPeer() (*Conn, error) {
	for {
		uc, err := l.ul.AcceptUnix()
		if err != nil {
			return nil, err
		}
		p, err := l.peerOf(uc)
		if err != nil {
			uc.Close()
			l.log.Debug("dropping connection", "socket", l.path, "error", err)
			continue
		}
		if l.Admit != nil && !l.Admit(p) {
			l.log.Warn("refusing connection", "socket", l.path, "pid", p.PID, "uid", p.UID, "gid", p.GID)
			p.Close()
			uc.Close()
			continue
		}
		return &Conn{UnixConn: uc, peer: p}, nil
	}
}

// peerOf reads the peer's credentials and a pidfd for it.
//
// What the pidfd guarantees depends on how we got it:
//   - SO_PEERPIDFD (Linux 6.5+) is the pidfd of the very process that called connect (the
//     kernel keeps a reference to its struct pid); it can never refer to a newcomer that
//     reused the pid. If the peer is already gone the kernel says ESRCH (or, from 6.17,
//     hands out a pidfd of the dead process), and the connection is dropped (or attestation
//     fails): never do we fall back to pidfd_open then, which could find the newcomer.
//   - pidfd_open(pid) right after accept (Linux 5.3–6.4) refers to whoever holds the pid at
//     that instant: exact unless the peer exited and its pid was reused between connect and
//     accept. The attestor's uid/gid re-check catches a reuse by another user.
//   - Neither: -1, and the attestor relies on /proc start time and uid/gid checks alone.
func (l *Listener) peerOf(uc *net.UnixConn) (*Peer, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("reading peer credentials: %w", err)
	}
	var (
		cred    *unix.Ucred
		credErr error
		pidfd   = -1
		pfdErr  error
	)
	// Control, not File(): File would dup the fd and switch it to blocking mode.
	err = rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil || l.noPeerPIDFD || peerPIDFDUnsupported.Load() {
			return
		}
		pidfd, pfdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		return nil, fmt.Errorf("reading peer credentials: %w", err)
	}
	switch {
	case pfdErr == nil && pidfd >= 0:
	case errors.Is(pfdErr, unix.ENOPROTOOPT):
		peerPIDFDUnsupported.Store(true)
		pidfd = l.openPIDFD(cred.Pid)
	case pfdErr != nil:
		return nil, fmt.Errorf("peer pid %d: SO_PEERPIDFD: %w", cred.Pid, pfdErr)
	default: // option disabled
		pidfd = l.openPIDFD(cred.Pid)
	}
	return NewPeer(cred.Pid, cred.Uid, cred.Gid, pidfd), nil
}

// openPIDFD is the fallback for kernels without SO_PEERPIDFD. It returns -1 when there is no
// pidfd to be had (no pid visible in our namespace, no pidfd_open, or the process is gone:
// the attestor then finds /proc/PID missing or changed).
func (l *Listener) openPIDFD(pid int32) int {
	if pid <= 0 || l.noPidfdOpen || pidfdOpenUnsupported.Load() {
		return -1
	}
	fd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			pidfdOpenUnsupported.Store(true)
		}
		return -1
	}
	return fd
}

// Close stops listening and removes the socket file, unless another agent has since put its
// own socket at the path. It is idempotent.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil {
			st := fi.Sys().(*syscall.Stat_t)
			if uint64(st.Dev) == l.dev && st.Ino == l.ino {
				if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
					l.closeErr = fmt.Errorf("removing socket: %w", err)
				}
			}
		}
		if err := l.ul.Close(); err != nil && l.closeErr == nil {
			l.closeErr = err
		}
	})
	return l.closeErr
}

// Conn is an accepted connection and the Peer that made it. Close closes both.
type Conn struct {
	*net.UnixConn
	peer *Peer
}

// Peer returns the process that connected. It stays valid after Close, without a pidfd.
func (c *Conn) Peer() *Peer { return c.peer }

// Close closes the connection and releases the peer's pidfd.
func (c *Conn) Close() error {
	err := c.UnixConn.Close()
	c.peer.Close()
	return err
}
