package proctest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// ShortDir returns a fresh directory under /tmp, removed when the test ends. Socket paths in
// it stay far below the 108 bytes a Unix socket path may have (t.TempDir's do not), and
// every uid may traverse it, so helpers running as other uids reach the sockets in it.
func ShortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "pt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// HelperBinary returns a copy of the running test binary that every uid may execute (go
// test's build directory is private to root), made once per process: a test runs it under
// another uid as a helper (see HelperCommand). Its path is what unix:path attestation sees
// for such a helper. Main, or RemoveHelperBinary, removes it.
func HelperBinary(t testing.TB) string {
	t.Helper()
	helperOnce.Do(func() {
		var d, exe string
		var data []byte
		if d, helperErr = os.MkdirTemp("/tmp", "pt-bin-"); helperErr != nil {
			return
		}
		helperPath = filepath.Join(d, "helper.test")
		if helperErr = os.Chmod(d, 0o755); helperErr != nil {
			return
		}
		if exe, helperErr = os.Executable(); helperErr != nil {
			return
		}
		if data, helperErr = os.ReadFile(exe); helperErr != nil {
			return
		}
		helperErr = os.WriteFile(helperPath, data, 0o755)
	})
	if helperErr != nil {
		t.Fatal(helperErr)
	}
	return helperPath
}

// RemoveHelperBinary removes HelperBinary's copy, if one was made; for a TestMain that
// cannot use Main.
func RemoveHelperBinary() {
	if helperPath != "" {
		os.RemoveAll(filepath.Dir(helperPath))
	}
}

// Main is a TestMain for packages whose tests use HelperBinary: it runs the tests, removes
// the copy and exits.
func Main(m *testing.M) {
	code := m.Run()
	RemoveHelperBinary()
	os.Exit(code)
}

// HelperCommand returns a command that runs HelperBinary with args as cred's uid and gid,
// from "/" (a directory every uid may enter), with env added to the test's environment.
// The caller starts it (Start, or Run) and may set its other fields first.
func HelperCommand(t testing.TB, cred *syscall.Credential, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(HelperBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	return cmd
}

// Start starts cmd; when the test ends it is killed and reaped, unless it was waited for.
func Start(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
}

// nsLastPID is the pid the kernel handed out last in our pid namespace. Root may write it:
// the next process created gets the lowest free pid above the value written (CRIU uses
// this to restore processes at their old pids). Tests use it to make a newcomer take the
// pid of a caller that just exited, which otherwise needs the pid space to wrap.
const nsLastPID = "/proc/sys/kernel/ns_last_pid"

// StartAtPID starts cmd so that its process gets pid, by writing pid-1 to ns_last_pid (root
// in the host's pid namespace only) just before the fork: how a test makes a pid be reused.
// It returns false, with nothing left running, when another process on the host forked in
// between and took the pid (or holds it already); the caller retries with a fresh pid.
func StartAtPID(t testing.TB, cmd *exec.Cmd, pid int) bool {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
		return false // already taken by someone else
	}
	if err := os.WriteFile(nsLastPID, []byte(strconv.Itoa(pid-1)), 0); err != nil {
		t.Fatalf("forcing pid reuse needs %s writable (root in the host's pid namespace): %v", nsLastPID, err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if cmd.Process.Pid == pid {
		return true
	}
	cmd.Process.Kill()
	cmd.Wait()
	return false
}

// NoRaceExitDelay stops race-built children (helpers, svidd, svidctl) from sleeping a second
// at exit (the race runtime's default), which tests that start many of them would wait for.
func NoRaceExitDelay(t *testing.T) {
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// ExitDialFailed is a helper's exit status when HelperConn cannot dial its socket (its
// stderr says why).
const ExitDialFailed = 2

// HelperConn starts the body of a helper: a Test function that HelperBinary runs under
// another uid (-test.run=^TestHelperX$), told by the environment variable env which socket to
// dial. It returns the connection, or exits with ExitDialFailed when the dial fails. In an
// ordinary test run env is unset: it returns nil, and the Test function returns at once.
func HelperConn(env string) net.Conn {
	path := os.Getenv(env)
	if path == "" {
		return nil
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(ExitDialFailed)
	}
	return c
}
