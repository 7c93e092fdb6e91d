package attestor

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/peercred"
)

// reusedPID is a caller that connected and exited, and the newcomer that now holds its pid.
type reusedPID struct {
	pid       int32
	peer      *peercred.Peer // as the listener made it when the caller connected
	newcomer  *exec.Cmd
	newcomerU uint32
}

// reusePID connects a caller as uid 1001, lets it exit, and starts /bin/sleep under
// newcomerUID at the caller's pid. It retries a few times if the host's other processes
// race it for the pid.
func reusePID(t *testing.T, newcomerUID uint32) *reusedPID {
	t.Helper()
	proctest.NoRaceExitDelay(t)
	for attempt := range 20 {
		c := startCaller(t, &syscall.Credential{Uid: 1001, Gid: 1001})
		p := c.conn.Peer()
		c.exit(t)
		cmd := exec.Command("/bin/sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: newcomerUID, Gid: newcomerUID}}
		if !proctest.StartAtPID(t, cmd, int(p.PID)) {
			t.Logf("attempt %d: pid %d was taken by another process; retrying", attempt, p.PID)
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		return &reusedPID{pid: p.PID, peer: p, newcomer: cmd, newcomerU: newcomerUID}
	}
	t.Fatal("could not make a newcomer take an exited caller's pid in 20 attempts")
	return nil
}

// TestPIDReuseNeverAttestsNewcomer is the attack the pidfd guard exists for: a caller
// connects as uid 1001 and exits, and a newcomer takes its pid before svidd attests the
// connection. Whatever svidd holds for the connection — the kernel's SO_PEERPIDFD pidfd, no
// pidfd at all (old kernels), or a pidfd_open made after the reuse — attestation fails with
// ErrCallerGone and never yields the newcomer's selectors.
func TestPIDReuseNeverAttestsNewcomer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("forcing pid reuse and running callers under other uids needs root (CI runs as root)")
	}
	proctest.NoRaceExitDelay(t)
	a := newAttestor(t, Config{})
	sleepPath, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		newcomerUID uint32
		// peer is what svidd holds for the exited caller's connection.
		peer func(t *testing.T, r *reusedPID) *peercred.Peer
	}{
		{"kernel pidfd, newcomer under another uid", 1002, func(t *testing.T, r *reusedPID) *peercred.Peer { return r.peer }},
		// Only the pidfd can tell here: uid, gid and binary path of the newcomer could
		// all be the caller's.
		{"kernel pidfd, newcomer under the same uid", 1001, func(t *testing.T, r *reusedPID) *peercred.Peer { return r.peer }},
		{"no pidfd, newcomer under another uid", 1002, func(t *testing.T, r *reusedPID) *peercred.Peer {
			return peercred.NewPeer(r.pid, 1001, 1001, -1)
		}},
		// pidfd_open(pid) after the reuse (the fallback before SO_PEERPIDFD, had accept come
		// late) names the newcomer; the uid re-check must catch it.
		{"pidfd_open after the reuse, newcomer under another uid", 1002, func(t *testing.T, r *reusedPID) *peercred.Peer {
			fd, err := unix.PidfdOpen(int(r.pid), 0)
			if err != nil {
				t.Fatal(err)
			}
			return peercred.NewPeer(r.pid, 1001, 1001, fd)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := reusePID(t, tt.newcomerUID)
			p := tt.peer(t, r)
			defer p.Close()

			// Control: the pid really is the newcomer's now, and attesting the newcomer
			// itself gives its selectors — so an Attest that leaked them would show.
			fd, err := unix.PidfdOpen(int(r.pid), 0)
			if err != nil {
				t.Fatal(err)
			}
			uid := strconv.FormatUint(uint64(tt.newcomerUID), 10)
			newcomer := peercred.NewPeer(r.pid, tt.newcomerUID, tt.newcomerUID, fd)
			defer newcomer.Close()
			own, err := a.Attest(context.Background(), newcomer, Options{})
			if err != nil {
				t.Fatalf("attesting the newcomer itself: %v", err)
			}
			checkSelectors(t, own, []string{"unix:uid:" + uid, "unix:path:" + sleepPath}, nil)

			got, err := a.Attest(context.Background(), p, Options{Digest: true})
			if !errors.Is(err, ErrCallerGone) {
				t.Fatalf("Attest of the exited caller's connection = %v, %v; want ErrCallerGone", strs(got), err)
			}
			if got != nil {
				t.Fatalf("selectors returned with the error: %v", strs(got))
			}
			t.Logf("pid %d reused by uid %d: %v", r.pid, tt.newcomerUID, err)
		})
	}
}

// TestStartAtPID checks the tool the pid-reuse tests rely on: a process started right after
// ns_last_pid is set gets the pid asked for (allowing for the host's other forks).
func TestStartAtPID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("writing ns_last_pid needs root (CI runs as root)")
	}
	for attempt := range 20 {
		probe := exec.Command("/bin/true")
		if err := probe.Run(); err != nil {
			t.Fatal(err)
		}
		want := probe.Process.Pid // free again: true exited and was reaped
		cmd := exec.Command("/bin/true")
		if proctest.StartAtPID(t, cmd, want) {
			if err := cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Logf("attempt %d: pid %d taken by another process", attempt, want)
	}
	t.Fatal("never got the pid asked for in 20 attempts")
}

// TestPIDReusedDuringAttestation: the caller exits and a newcomer under another uid takes its
// pid after every /proc read succeeded, just before the final check: the pidfd still says the
// caller is gone, so nothing is returned.
func TestPIDReusedDuringAttestation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("forcing pid reuse and running callers under other uids needs root (CI runs as root)")
	}
	proctest.NoRaceExitDelay(t)
	for attempt := range 20 {
		c := startCaller(t, &syscall.Credential{Uid: 1001, Gid: 1001})
		a := newAttestor(t, Config{})
		landed := false
		a.testBeforeLiveness = func() {
			c.cmd.Process.Kill()
			c.cmd.Wait()
			cmd := exec.Command("/bin/sleep", "60")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1002, Gid: 1002}}
			if landed = proctest.StartAtPID(t, cmd, int(c.conn.Peer().PID)); landed {
				t.Cleanup(func() {
					cmd.Process.Kill()
					cmd.Wait()
				})
			}
		}
		got, err := a.Attest(context.Background(), c.conn.Peer(), Options{})
		if !landed {
			t.Logf("attempt %d: pid %d was taken by another process; retrying", attempt, c.conn.Peer().PID)
			continue
		}
		if !errors.Is(err, ErrCallerGone) || got != nil {
			t.Fatalf("Attest = %v, %v; want ErrCallerGone and no selectors", strs(got), err)
		}
		return
	}
	t.Fatal("could not make a newcomer take the caller's pid in 20 attempts")
}
