package peercred

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Helper child: dials PEERCRED_HELPER_SOCK, writes one byte, then waits for one byte back.
// Exit codes tell the parent what happened.
const (
	helperEnv        = "PEERCRED_HELPER_SOCK"
	exitDialFailed   = 2
	exitClosedByPeer = 4
)

// TestHelperDial is not a test: it is the child process of the tests below, run as another
// uid. Without the environment variable it does nothing.
func TestHelperDial(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		return
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(exitDialFailed)
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		os.Exit(exitClosedByPeer)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		os.Exit(exitClosedByPeer)
	}
	os.Exit(0)
}

// shortDir returns a fresh directory under /tmp whose paths stay well below MaxPathLen and
// which every uid may traverse.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "pc-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// helperBinary copies the test binary where uid 1001 may execute it (go test's build dir is
// private to root).
func helperBinary(t *testing.T) string {
	t.Helper()
	helperOnce.Do(func() {
		var d, exe string
		if d, helperErr = os.MkdirTemp("/tmp", "pc-bin-"); helperErr != nil {
			return
		}
		if exe, helperErr = os.Executable(); helperErr != nil {
			return
		}
		var data []byte
		if data, helperErr = os.ReadFile(exe); helperErr != nil {
			return
		}
		helperPath = filepath.Join(d, "peercred.test")
		if helperErr = os.WriteFile(helperPath, data, 0o755); helperErr != nil {
			return
		}
		helperErr = os.Chmod(d, 0o755)
	})
	if helperErr != nil {
		t.Fatal(helperErr)
	}
	return helperPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helperPath != "" {
		os.RemoveAll(filepath.Dir(helperPath))
	}
	os.Exit(code)
}

// startHelper starts the helper child as uid/gid dialing sock.
func startHelper(t *testing.T, sock string, uid, gid uint32) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(helperBinary(t), "-test.run=^TestHelperDial$")
	cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	cmd.Dir = "/"
	stderr := new(strings.Builder)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, stderr
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
