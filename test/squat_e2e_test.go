package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
)

// asUID runs name args as uid/gid uid and fails the test if it fails: what another local
// user does on the host.
func asUID(t *testing.T, uid uint32, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d: %s %v: %v\n%s", uid, name, args, err, out)
	}
}

// sharedTmp is a fresh directory that behaves like /tmp (root's, mode 1777): every user may
// create entries in it, and only an entry's owner may rename or remove it.
func sharedTmp(t *testing.T) string {
	t.Helper()
	d := proctest.ShortDir(t)
	if err := os.Chmod(d, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSquattedDirectoriesRefused attacks the real svidd (root) from uid 1001: the attacker
// creates the socket directory or the data dir before svidd starts (or owns a file svidd
// trusts in it, or a parent it could rename the directory through). svidd must refuse to start,
// naming the directory (or file) and its owner, and must put nothing there; a directory of
// svidd's own user still works, whatever its mode 0700 or 0755.
func TestSquattedDirectoriesRefused(t *testing.T) {
	requireRoot(t)
	proctest.NoRaceExitDelay(t)

	t.Run("socket dir created by another user", func(t *testing.T) {
		tmp := sharedTmp(t)
		sock := filepath.Join(tmp, "agent")
		asUID(t, 1001, "mkdir", "-m", "0755", sock)
		refusedWith(t, tmp, sock, sock, filepath.Join(tmp, "data"), "socket directory "+sock+" is owned by uid 1001")
		wantEmpty(t, sock)
	})
	t.Run("admin socket dir created by another user", func(t *testing.T) {
		tmp := sharedTmp(t)
		mine, theirs := filepath.Join(tmp, "mine"), filepath.Join(tmp, "theirs")
		mkdirMode(t, mine, 0o755)
		asUID(t, 1001, "mkdir", "-m", "0700", theirs)
		refusedWith(t, tmp, mine, theirs, filepath.Join(tmp, "data"), "socket directory "+theirs+" is owned by uid 1001")
		wantEmpty(t, theirs)
		if _, err := os.Stat(filepath.Join(mine, "api.sock")); err == nil {
			t.Error("the api socket was left behind after the refusal")
		}
	})
	t.Run("socket dir is a shared directory like /tmp", func(t *testing.T) {
		tmp := sharedTmp(t) // anyone could take the socket's name while svidd is down
		refusedWith(t, tmp, tmp, tmp, filepath.Join(tmp, "data"), "socket directory "+tmp+" is writable by group or others")
	})
	t.Run("socket dir writable by others", func(t *testing.T) {
		tmp := sharedTmp(t)
		sock := filepath.Join(tmp, "agent")
		mkdirMode(t, sock, 0o777|os.ModeSticky)
		refusedWith(t, tmp, sock, sock, filepath.Join(tmp, "data"), "socket directory "+sock+" is writable by group or others")
	})
	t.Run("socket dir under a parent another user owns", func(t *testing.T) {
		tmp := sharedTmp(t)
		home := filepath.Join(tmp, "home")
		asUID(t, 1001, "mkdir", "-m", "0755", home)
		sock := filepath.Join(home, "agent")
		mkdirMode(t, sock, 0o755) // root made it, but uid 1001 can rename it
		refusedWith(t, tmp, sock, sock, filepath.Join(tmp, "data"), "its parent "+home+" is owned by uid 1001")
	})
	t.Run("socket dir under a parent writable by others, not sticky", func(t *testing.T) {
		tmp := sharedTmp(t)
		open := filepath.Join(tmp, "open")
		mkdirMode(t, open, 0o777)
		sock := filepath.Join(open, "agent")
		refusedWith(t, tmp, sock, sock, filepath.Join(tmp, "data"), "its parent "+open+" is writable by group or others without the sticky bit")
	})
	t.Run("data dir created by another user", func(t *testing.T) {
		tmp := sharedTmp(t)
		data := filepath.Join(tmp, "data")
		asUID(t, 1001, "mkdir", "-m", "0700", data) // 0700 passed the old mode-only check
		sock := filepath.Join(tmp, "s")
		refusedWith(t, tmp, sock, sock, data, "data dir "+data+" is owned by uid 1001")
		wantEmpty(t, data)
	})

	// A data dir of svidd's that held a store, CA and lock; then one file at a time is given to
	// uid 1001 (who could have swapped it while svidd was down).
	t.Run("files in the data dir owned by another user", func(t *testing.T) {
		a := startAgent(t)
		a.createEntry("spiffe://example.org/squat", "-selector", "unix:uid:1001")
		a.stop()
		for _, name := range []string{"svidd.db", "svidd.lock", "ca.json"} {
			p := filepath.Join(a.dataDir, name)
			if err := os.Chown(p, 1001, 1001); err != nil {
				t.Fatal(err)
			}
			code, out := runSviddOnce(t, a.args()[1:]...)
			wantRefused(t, code, out, p+" is owned by uid 1001")
			if err := os.Chown(p, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		// A -wal file left by another user (SQLite would replay it into the store).
		wal := filepath.Join(a.dataDir, "svidd.db-wal")
		asUIDWrite(t, a.dataDir, wal)
		code, out := runSviddOnce(t, a.args()[1:]...)
		wantRefused(t, code, out, wal+" is owned by uid 1001")
		if err := os.Remove(wal); err != nil {
			t.Fatal(err)
		}
		a.start()
		if out := a.mustSvidctl("entry", "list"); !strings.Contains(out, "spiffe://example.org/squat") {
			t.Fatalf("entry lost after the refusals:\n%s", out)
		}
	})

	// What must keep working: socket and data dirs of svidd's own user, 0700 or 0755, made
	// before it starts.
	for _, mode := range []os.FileMode{0o700, 0o755} {
		t.Run("own directories "+mode.String(), func(t *testing.T) {
			tmp := sharedTmp(t)
			sock, data := filepath.Join(tmp, "agent"), filepath.Join(tmp, "data")
			for _, d := range []string{sock, data} {
				if err := os.Mkdir(d, mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(d, mode); err != nil {
					t.Fatal(err)
				}
			}
			a := startAgent(t, func(a *agent) {
				a.api, a.admin, a.dataDir = filepath.Join(sock, "api.sock"), filepath.Join(sock, "admin.sock"), data
			})
			a.mustSvidctl("healthcheck")
			for _, d := range []string{sock, data} {
				if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != mode {
					t.Errorf("%s: mode %v (%v), want it left at %v", d, fi.Mode(), err, mode)
				}
			}
		})
	}
}

// TestDefaultSocketDirOnFreshHost: `make run` on a fresh machine — svidd with no socket flags
// creates /tmp/agent itself (0755, its own) and serves there. Run in a private mount namespace
// with an empty /tmp, so the host's /tmp/agent (if any) is neither used nor disturbed.
func TestDefaultSocketDirOnFreshHost(t *testing.T) {
	requireRoot(t)
	proctest.NoRaceExitDelay(t)
	work := proctest.ShortDir(t)
	if err := os.WriteFile(filepath.Join(work, "svidd.hcl"), []byte(testListeners), 0o644); err != nil {
		t.Fatal(err)
	}
	// /mnt shows the real /tmp inside the namespace (binaries, the work dir); /tmp is empty.
	script := `set -e
mount --bind /tmp /mnt
mount -t tmpfs -o mode=1777 tmpfs /tmp
cd "/mnt/$WORK"
"/mnt/$BIN/svidd" run -config svidd.hcl >svidd.log 2>&1 &
pid=$!
i=0
until "/mnt/$BIN/svidctl" healthcheck >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 1500 ] || { echo "svidd not ready"; cat svidd.log; kill $pid; exit 1; }
  kill -0 $pid || { echo "svidd exited"; cat svidd.log; exit 1; }
  sleep 0.01
done
stat -c 'dir %u %a' /tmp/agent
stat -c 'admin %a' /tmp/agent/admin.sock
stat -c 'api %a' /tmp/agent/api.sock
kill -TERM $pid
wait $pid
echo "exit $?"
`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "WORK="+strings.TrimPrefix(work, "/tmp/"), "BIN="+strings.TrimPrefix(bins.dir, "/tmp/"))
	if !strings.HasPrefix(work, "/tmp/") || !strings.HasPrefix(bins.dir, "/tmp/") {
		t.Fatalf("the test expects its dirs under /tmp: %s, %s", work, bins.dir)
	}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("timed out:\n%s", out)
	}
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	for _, want := range []string{"dir 0 755", "admin 600", "api 666", "exit 0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if fi, err := os.Stat(filepath.Join(work, ".svidd")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("default data dir ./.svidd: %v, %v; want 0700", fi, err)
	}
}

// refusedWith runs svidd with its api socket in apiDir, its admin socket in adminDir and its
// data in dataDir (a config file in tmp): it must refuse to start, saying want.
func refusedWith(t *testing.T, tmp, apiDir, adminDir, dataDir, want string) {
	t.Helper()
	code, out := runSviddOnce(t, sviddArgs(t, tmp, filepath.Join(apiDir, "api.sock"), filepath.Join(adminDir, "admin.sock"), dataDir, testListeners)...)
	wantRefused(t, code, out, want)
}

// mkdirMode makes directory p with exactly mode (the umask does not narrow it).
func mkdirMode(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// sviddArgs are `svidd run` flags for the given paths, with a config file in dir.
func sviddArgs(t *testing.T, dir, api, admin, data, hcl string) []string {
	t.Helper()
	cfg := filepath.Join(dir, "svidd-"+strings.ReplaceAll(t.Name(), "/", "-")+".hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"-socketPath", api, "-adminSocketPath", admin, "-dataDir", data, "-config", cfg}
}

func wantRefused(t *testing.T, code int, out, want string) {
	t.Helper()
	if code == 0 || !strings.Contains(out, want) {
		t.Fatalf("svidd exit %d; want a refusal saying %q:\n%s", code, want, out)
	}
}

// wantEmpty: svidd put nothing in a directory it refused.
func wantEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("svidd wrote into the refused %s: %v", dir, ents)
	}
}

// asUIDWrite makes path as uid 1001, through a world-writable moment of dir (as if the
// directory had once been open to them), then restores dir's mode.
func asUIDWrite(t *testing.T, dir, path string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	asUID(t, 1001, "sh", "-c", "printf x > "+path)
	if err := os.Chmod(dir, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}
