package attestor

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/peercred"
)

const helperEnv = "ATTESTOR_HELPER_SOCK"

// TestHelperDial is not a test: it is the caller process the tests attest, run under other
// uids. It dials the socket, writes a byte, and exits once it reads a byte back (or EOF).
// Without the environment variable it does nothing.
func TestHelperDial(t *testing.T) {
	c := proctest.HelperConn(helperEnv)
	if c == nil {
		return
	}
	c.Write([]byte{'x'})
	var b [1]byte
	io.ReadFull(c, b[:])
	os.Exit(0)
}

func TestMain(m *testing.M) { proctest.Main(m) }

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
	sock := filepath.Join(proctest.ShortDir(t), "api.sock")
	l, err := peercred.Listen(sock, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })

	c := &caller{stderr: new(strings.Builder)}
	c.cmd = proctest.HelperCommand(t, cred, []string{helperEnv + "=" + sock}, "-test.run=^TestHelperDial$")
	c.cmd.Stderr = c.stderr
	proctest.Start(t, c.cmd)

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
