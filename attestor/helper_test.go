package attestor

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
	"time"

	"github.com/svidd/svidd/pkg/peercred"
)

const helperEnv = "ATTESTOR_HELPER_SOCK"

// TestHelperDial is not a test: it is the caller process the tests attest, run under other
// uids. It dials the socket, writes a byte, and exits once it reads a byte back (or EOF).
// Without the environment variable it does nothing.
func TestHelperDial(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		return
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c.Write([]byte{'x'})
	var b [1]byte
	io.ReadFull(c, b[:])
	os.Exit(0)
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// helperBinary copies the test binary where other uids may execute it; the path is also
// what unix:path must say for the children.
func helperBinary(t testing.TB) string {
	t.Helper()
	helperOnce.Do(func() {
		var d, exe string
		if d, helperErr = os.MkdirTemp("/tmp", "at-bin-"); helperErr != nil {
			return
		}
		if exe, helperErr = os.Executable(); helperErr != nil {
			return
		}
		var data []byte
		if data, helperErr = os.ReadFile(exe); helperErr != nil {
			return
		}
		helperPath = filepath.Join(d, "attestor.test")
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

// caller is a child process connected to a peercred listener.
type caller struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	conn   *peercred.Conn
}

// exit tells the child to exit and reaps it, so its pid is free for reuse.
func (c *caller) exit(t testing.TB) {
	t.Helper()
	c.conn.Write([]byte{'y'})
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("caller: %v: %s", err, c.stderr)
	}
}

// startCaller runs the helper under cred, lets it connect to a fresh peercred socket, and
// returns the accepted connection.
func startCaller(t testing.TB, cred *syscall.Credential) *caller {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "at-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	l, err := peercred.Listen(sock, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	c := &caller{stderr: new(strings.Builder)}
	c.cmd = exec.Command(helperBinary(t), "-test.run=^TestHelperDial$")
	c.cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	c.cmd.Dir = "/"
	c.cmd.Stderr = c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})

	accepted := make(chan *peercred.Conn, 1)
	go func() {
		conn, err := l.AcceptPeer()
		if err == nil {
			accepted <- conn
		}
	}()
	select {
	case c.conn = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatalf("caller did not connect: %s", c.stderr)
	}
	t.Cleanup(func() { c.conn.Close() })
	// Wait for its byte: the child is now certainly running the helper.
	var b [1]byte
	if _, err := io.ReadFull(c.conn, b[:]); err != nil {
		t.Fatal(err)
	}
	return c
}
