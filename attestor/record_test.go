package attestor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/peercred"
)

// copyBinary copies src into a temporary directory and returns the copy's path.
func copyBinary(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestRecordUnchanged: an attestation Record made stays good exactly as long as the very
// process lives and runs the same version of the same binary.
func TestRecordUnchanged(t *testing.T) {
	a := newAttestor(t, Config{})
	ctx := context.Background()
	sh, sleep := "/bin/sh", "/bin/sleep 60"

	tests := []struct {
		name string
		// setup returns the peer to record, and what happens between Record and Unchanged.
		setup func(t *testing.T) (*peercred.Peer, func(t *testing.T))
		// want is Unchanged's answer for an attestation without and with the binary's sha256.
		want [2]bool
	}{
		{"nothing changed", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			c := proctest.StartExecChild(t, sh, sleep, true)
			return c.Peer, func(*testing.T) {}
		}, [2]bool{true, true}},
		{"exec'd another binary", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			c := proctest.StartExecChild(t, sh, sleep, true)
			return c.Peer, func(t *testing.T) { c.ExecNext(t) }
		}, [2]bool{false, false}},
		{"exec'd the same binary", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			// Same path, same file: nothing the selectors say has changed.
			bin := copyBinary(t, sh)
			c := proctest.StartExecChild(t, bin, bin+" -c 'read y'", true)
			return c.Peer, func(t *testing.T) { c.ExecNext(t) }
		}, [2]bool{true, true}},
		{"exited and reaped", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			c := proctest.StartExecChild(t, sh, sleep, true)
			return c.Peer, func(t *testing.T) {
				c.Kill()
			}
		}, [2]bool{false, false}},
		{"binary rewritten on disk", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			bin := copyBinary(t, "/bin/sleep")
			c := proctest.StartExecChild(t, sh, bin+" 60", true)
			c.ExecNext(t)
			return c.Peer, func(t *testing.T) {
				// Any write or chmod moves ctime: the sha256 selector may no longer hold.
				if err := os.Chmod(bin, 0o750); err != nil {
					t.Fatal(err)
				}
			}
		}, [2]bool{true, false}}, // without the sha256 selector only the path counts
		{"connection closed", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			c := proctest.StartExecChild(t, sh, sleep, true)
			return c.Peer, func(*testing.T) { c.Peer.Close() }
		}, [2]bool{false, false}},
		{"no pidfd", func(t *testing.T) (*peercred.Peer, func(*testing.T)) {
			return selfPeer(t, false), func(*testing.T) {}
		}, [2]bool{false, false}},
	}
	for _, tt := range tests {
		for i, digest := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/digest=%v", tt.name, digest), func(t *testing.T) {
				p, between := tt.setup(t)
				at, err := a.Record(ctx, p, Options{Digest: digest})
				if err != nil {
					t.Fatal(err)
				}
				plain, err := a.Attest(ctx, p, Options{Digest: digest})
				if err != nil {
					t.Fatal(err)
				}
				if got, want := strs(at.Selectors), strs(plain); !slices.Equal(got, want) {
					t.Fatalf("Record selectors %v, Attest %v", got, want)
				}
				between(t)
				if got := a.Unchanged(p, at); got != tt.want[i] {
					t.Fatalf("Unchanged = %v, want %v", got, tt.want[i])
				}
			})
		}
	}
	if a.Unchanged(nil, nil) {
		t.Fatal("Unchanged(nil, nil)")
	}
}

// TestRecordExitedCaller: Record fences like Attest does.
func TestRecordExitedCaller(t *testing.T) {
	a := newAttestor(t, Config{})
	c := proctest.StartExecChild(t, "/bin/sh", "/bin/sleep", true)
	c.Kill()
	at, err := a.Record(context.Background(), c.Peer, Options{})
	if !errors.Is(err, ErrCallerGone) || at != nil {
		t.Fatalf("Record = %v, %v; want ErrCallerGone", at, err)
	}
}

// TestUnchangedAfterPIDReuse: the caller is recorded, exits, and a newcomer of the same uid
// running the very same binary takes its pid. Everything /proc/PID shows matches the record;
// only the pidfd can tell, and Unchanged must say no.
func TestUnchangedAfterPIDReuse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("forcing pid reuse and running callers under other uids needs root (CI runs as root)")
	}
	proctest.NoRaceExitDelay(t)
	a := newAttestor(t, Config{})
	cred := &syscall.Credential{Uid: 1001, Gid: 1001}
	for attempt := range 20 {
		c := startCaller(t, cred)
		p := c.conn.Peer()
		at, err := a.Record(context.Background(), p, Options{Digest: true})
		if err != nil {
			t.Fatal(err)
		}
		if !a.Unchanged(p, at) {
			t.Fatal("Unchanged right after Record is false")
		}
		c.exit(t)

		// The newcomer: the same helper binary, same uid, dialing a socket nobody serves (it
		// then waits on nothing; we kill it).
		newcomer := proctest.HelperCommand(t, cred, []string{helperIdleEnv + "=1"}, "-test.run=^TestHelperIdle$")
		if !proctest.StartAtPID(t, newcomer, int(p.PID)) {
			t.Logf("attempt %d: pid %d was taken by another process; retrying", attempt, p.PID)
			continue
		}
		t.Cleanup(func() {
			newcomer.Process.Kill()
			newcomer.Wait()
		})
		exe := filepath.Join("/proc", strconv.Itoa(int(p.PID)), "exe")
		deadline := time.Now().Add(10 * time.Second)
		for {
			if got, _ := os.Readlink(exe); got == proctest.HelperBinary(t) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("newcomer does not run the helper binary")
			}
			time.Sleep(time.Millisecond)
		}
		if a.Unchanged(p, at) {
			t.Fatalf("Unchanged is true after pid %d was reused by the same binary under the same uid", p.PID)
		}
		return
	}
	t.Fatal("could not make a newcomer take an exited caller's pid in 20 attempts")
}

const helperIdleEnv = "ATTESTOR_HELPER_IDLE"

// TestHelperIdle is not a test: run with the environment variable it sleeps until killed.
func TestHelperIdle(t *testing.T) {
	if os.Getenv(helperIdleEnv) == "" {
		return
	}
	time.Sleep(time.Minute)
	os.Exit(0)
}
