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
	"time"

	"golang.org/x/sys/unix"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/peercred"
)

var uid1001 = &syscall.Credential{Uid: 1001, Gid: 1001}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running callers under other uids needs root (CI runs as root)")
	}
}

// copyShared copies src into dir as name, executable by all.
func copyShared(t *testing.T, src, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, name)
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestBoundRefusesAnotherBinary: once a connection's caller is attested, a later attestation
// of the same connection that finds the process running another binary (it exec'd one an
// entry names, by path or digest) fails with ErrBinaryChanged before anything is hashed,
// instead of giving that binary's selectors. Exec'ing the very same file again is no change.
// The callers run under uid 1001.
func TestBoundRefusesAnotherBinary(t *testing.T) {
	requireRoot(t)
	dir := proctest.ShortDir(t)
	sh := copyShared(t, "/bin/sh", dir, "sh")
	sleep := copyShared(t, "/bin/sleep", dir, "sleep")
	ctx := context.Background()
	tests := []struct {
		name    string
		next    string
		pidfd   bool
		wantErr error
	}{
		{"exec'd an entitled binary", sleep + " 60", true, ErrBinaryChanged},
		{"exec'd an entitled binary, no pidfd", sleep + " 60", false, ErrBinaryChanged},
		{"exec'd the same file", sh + " -c 'read y'", true, nil},
	}
	for _, tt := range tests {
		for _, digest := range []bool{false, true} {
			t.Run(tt.name+"/digest="+strconv.FormatBool(digest), func(t *testing.T) {
				a := newAttestor(t, Config{})
				c := proctest.StartExecChildAs(t, uid1001, sh, tt.next, tt.pidfd)
				first, err := a.Record(ctx, c.Peer, Options{})
				if err != nil {
					t.Fatal(err)
				}
				checkSelectors(t, first.Selectors, []string{"unix:uid:1001", "unix:path:" + sh}, nil)
				c.ExecNext(t)
				hashed := a.hashes.Load()
				at, err := a.Record(ctx, c.Peer, Options{Digest: digest, Bound: first})
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) || at != nil {
						t.Fatalf("Record after exec = %v, %v; want %v", at, err, tt.wantErr)
					}
					if n := a.hashes.Load() - hashed; n != 0 {
						t.Fatalf("the exec'd binary was hashed (%d)", n)
					}
					// Without Bound the new binary is what Record sees: the check is Bound's.
					fresh, err := a.Record(ctx, c.Peer, Options{})
					if err != nil {
						t.Fatal(err)
					}
					checkSelectors(t, fresh.Selectors, []string{"unix:path:" + sleep}, nil)
					if first.SameBinary(fresh) {
						t.Fatal("SameBinary says the exec'd process runs the same binary")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				want := []string{"unix:path:" + sh}
				if digest {
					want = append(want, "unix:sha256:"+fileSHA256(t, sh))
				}
				checkSelectors(t, at.Selectors, want, nil)
			})
		}
	}
}

// TestPathIsTheFileInSviddsNamespace: unix:path is given only when the path, in svidd's own
// mount namespace, is the file the process runs (device and inode). A uid-1001 process in an
// unprivileged user and mount namespace bind-mounts its own binary (/bin/sh) over a binary an
// entry names and execs it there: /proc/PID/exe shows the entry's path, but the file is
// another one, and no unix:path is given. The same path run for real gets it; a binary
// deleted since it was started does not.
func TestPathIsTheFileInSviddsNamespace(t *testing.T) {
	requireRoot(t)
	dir := proctest.ShortDir(t)
	legit := copyShared(t, "/bin/sleep", dir, "legit")
	evil := copyShared(t, "/bin/sh", dir, "evil")
	a := newAttestor(t, Config{})
	ctx := context.Background()

	// Control: the path run in svidd's namespace is that file.
	c := proctest.StartExecChildAs(t, uid1001, "/bin/sh", legit+" 60", true)
	c.ExecNext(t)
	sels, err := a.Attest(ctx, c.Peer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkSelectors(t, sels, []string{"unix:path:" + legit, "unix:namespace:host"}, nil)

	// A binary deleted since it was started is no longer what its path names.
	gone := copyShared(t, "/bin/sleep", dir, "gone")
	d := proctest.StartExecChildAs(t, uid1001, "/bin/sh", gone+" 60", true)
	d.ExecNext(t)
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if sels, err = a.Attest(ctx, d.Peer, Options{}); err != nil {
		t.Fatal(err)
	}
	if paths := withPrefix(sels, "unix:path:"); len(paths) != 0 {
		t.Fatalf("deleted binary attested with %v", paths)
	}

	// The bind mount.
	if out, err := exec.Command("setpriv", "--reuid=1001", "--regid=1001", "--clear-groups", "unshare", "-Urm", "true").CombinedOutput(); err != nil {
		t.Skipf("unprivileged user namespaces are not available here (%v: %s): the bind mount cannot be staged", err, out)
	}
	cmd := exec.Command("unshare", "-Urm", "/bin/sh", "-c", "mount --bind "+evil+" "+legit+" && exec "+legit+" -c 'sleep 60'")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: uid1001}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	exe := filepath.Join("/proc", strconv.Itoa(pid), "exe")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if target, _ := os.Readlink(exe); target == legit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the namespaced process never ran the bind-mounted binary")
		}
		time.Sleep(time.Millisecond)
	}
	// The attack is staged: the kernel names the entry's path for a process running /bin/sh.
	if got, want := fileSHA256(t, exe), fileSHA256(t, evil); got != want {
		t.Fatalf("the namespaced process runs %s, not the bind-mounted binary", got)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := peercred.NewPeer(int32(pid), 1001, 1001, pidfd)
	t.Cleanup(func() { p.Close() })
	if sels, err = a.Attest(ctx, p, Options{Digest: true}); err != nil {
		t.Fatal(err)
	}
	checkSelectors(t, sels, []string{"unix:uid:1001", "unix:namespace:container", "unix:sha256:" + fileSHA256(t, evil)},
		[]string{"unix:path:" + legit, "unix:sha256:" + fileSHA256(t, legit)})
}
