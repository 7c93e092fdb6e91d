package peercred_test

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/svidd/svidd/internal/proctest"
)

// Helper child: dials PEERCRED_HELPER_SOCK, writes one byte, then waits for one byte back.
// Exit codes tell the parent what happened (proctest.ExitDialFailed: it could not dial).
const (
	helperEnv        = "PEERCRED_HELPER_SOCK"
	exitClosedByPeer = 4
)

// TestHelperDial is not a test: it is the child process of the tests below, run as another
// uid. Without the environment variable it does nothing.
func TestHelperDial(t *testing.T) {
	c := proctest.HelperConn(helperEnv)
	if c == nil {
		return
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

func TestMain(m *testing.M) { proctest.Main(m) }

// startHelper starts the helper child as uid/gid dialing sock.
func startHelper(t *testing.T, sock string, uid, gid uint32) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := proctest.HelperCommand(t, &syscall.Credential{Uid: uid, Gid: gid}, []string{helperEnv + "=" + sock}, "-test.run=^TestHelperDial$")
	stderr := new(strings.Builder)
	cmd.Stderr = stderr
	proctest.Start(t, cmd)
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
