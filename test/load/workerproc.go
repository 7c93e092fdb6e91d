package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// workerProc is the coordinator's handle on one worker process.
type workerProc struct {
	uid    int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan event
	exited chan struct{}
	stderr *tailBuffer
}

// startWorker re-executes the tool (exe) in worker mode as uid (when asUID), with its events
// on stdout.
func startWorker(exe string, uid int, asUID bool, extra ...*os.File) (*workerProc, error) {
	cmd := exec.Command(exe, "-worker")
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if asUID {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}
	}
	cmd.Dir = "/"
	p := &workerProc{uid: uid, cmd: cmd, events: make(chan event, 1024), exited: make(chan struct{}), stderr: &tailBuffer{max: 8 << 10}}
	cmd.Stderr = p.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting worker for uid %d: %w", uid, err)
	}
	go func() {
		defer close(p.events)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = event{T: evError, Err: fmt.Sprintf("bad worker output %q: %v", truncate(sc.Text(), 200), err)}
			}
			p.events <- e
		}
	}()
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *workerProc) send(c command) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("worker uid %d: sending %s: %w", p.uid, c.Cmd, err)
	}
	return nil
}

// until hands each event to fn until one of type terminal arrives (returned), the worker
// fails or exits, or timeout passes.
func (p *workerProc) until(terminal string, timeout time.Duration, fn func(event)) (event, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case e, ok := <-p.events:
			if !ok {
				<-p.exited
				return event{}, fmt.Errorf("worker uid %d exited (%v) waiting for %q: %s", p.uid, p.cmd.ProcessState, terminal, p.stderr.String())
			}
			switch e.T {
			case terminal:
				return e, nil
			case evError:
				return e, fmt.Errorf("worker uid %d: %s", p.uid, e.Err)
			}
			if fn != nil {
				fn(e)
			}
		case <-t.C:
			return event{}, fmt.Errorf("worker uid %d: no %q within %s", p.uid, terminal, timeout)
		}
	}
}

// close asks the worker to stop, then kills it if it does not.
func (p *workerProc) close(timeout time.Duration) {
	_ = p.send(command{Cmd: "close"})
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// copyExecutable copies the running binary to dst (mode 0755), so workers under other uids
// can execute it: `go run` leaves it in a directory only its owner may enter.
func copyExecutable(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// receiveConns reads n descriptors sent one per message over the SOCK_SEQPACKET socket sock
// (a connector's handover), within timeout.
func receiveConns(sock *os.File, n int, timeout time.Duration) ([]*os.File, error) {
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(int(sock.Fd()), syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	var out []*os.File
	fail := func(err error) ([]*os.File, error) {
		for _, f := range out {
			f.Close()
		}
		return nil, err
	}
	buf := make([]byte, 1)
	oob := make([]byte, syscall.CmsgSpace(4))
	for len(out) < n {
		_, oobn, _, _, err := syscall.Recvmsg(int(sock.Fd()), buf, oob, syscall.MSG_CMSG_CLOEXEC)
		if err == syscall.EINTR {
			// With SO_RCVTIMEO set, a signal to this process (Go's runtime preempts with
			// SIGURG) interrupts the call instead of restarting it.
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("receiving connection %d of %d: %w", len(out)+1, n, err))
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return fail(fmt.Errorf("receiving connection %d of %d: no descriptor (%v)", len(out)+1, n, err))
		}
		fds, err := syscall.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return fail(fmt.Errorf("receiving connection %d of %d: bad descriptor message (%v)", len(out)+1, n, err))
		}
		out = append(out, os.NewFile(uintptr(fds[0]), "conn"))
	}
	return out, nil
}

// seqpacketPair returns both ends of a Unix SOCK_SEQPACKET socket pair.
func seqpacketPair() (*os.File, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "handover"), os.NewFile(uintptr(fds[1]), "handover-peer"), nil
}
