// Package proctest starts real processes for tests: helpers running the test binary under
// other uids (HelperBinary, HelperCommand, Start), at a chosen pid (StartAtPID), next to
// sockets in short directories every uid may reach (ShortDir); and, for attestation tests, a
// caller under the test's own uid that runs a shell until told to exec another command, so
// a test can change what a connected process runs, or end it, at a moment of its choosing
// (ExecChild).
package proctest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/pkg/peercred"
)

// ExecChild is a process running `shell -c "read x; exec next"`, and its Peer (pid, its uid
// and gid, and a pidfd when asked for, as the listener gives on this kernel).
type ExecChild struct {
	Cmd   *exec.Cmd
	Peer  *peercred.Peer
	stdin io.WriteCloser
}

// StartExecChild starts the child; it is killed and its Peer closed when the test ends.
func StartExecChild(t testing.TB, shell, next string, withPIDFD bool) *ExecChild {
	t.Helper()
	return StartExecChildAs(t, nil, shell, next, withPIDFD)
}

// StartExecChildAs is StartExecChild under the credentials cred (nil: the test's own).
func StartExecChildAs(t testing.TB, cred *syscall.Credential, shell, next string, withPIDFD bool) *ExecChild {
	t.Helper()
	cmd := exec.Command(shell, "-c", "read x; exec "+next)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/"
		uid, gid = cred.Uid, cred.Gid
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd := -1
	if withPIDFD {
		if fd, err = unix.PidfdOpen(cmd.Process.Pid, 0); err != nil {
			t.Fatal(err)
		}
	}
	c := &ExecChild{Cmd: cmd, stdin: stdin, Peer: peercred.NewPeer(int32(cmd.Process.Pid), uid, gid, fd)}
	t.Cleanup(func() {
		c.Peer.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return c
}

// ExecNext makes the child exec its next command, and waits until /proc shows it did.
func (c *ExecChild) ExecNext(t testing.TB) {
	t.Helper()
	if _, err := c.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	cmdline := filepath.Join("/proc", strconv.Itoa(c.Cmd.Process.Pid), "cmdline")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(cmdline); err == nil && len(b) > 0 && !strings.Contains(string(b), "read x") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("child did not exec")
		}
		time.Sleep(time.Millisecond)
	}
}

// Kill ends the child and reaps it: its pid is then free for reuse.
func (c *ExecChild) Kill() {
	c.Cmd.Process.Kill()
	c.Cmd.Wait()
}

// SHA256File returns the hex SHA-256 of the file at path: what unix:sha256 says of a process
// running it.
func SHA256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
