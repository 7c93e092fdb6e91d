package ownership

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// otherUID owns what "another user" made; the tests chown to it, which needs root.
const otherUID = 1001

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown to another uid (CI runs as root)")
	}
}

// base is a fresh root-owned 0755 directory under /tmp (sticky, root-owned: a sound parent).
func base(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "own-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func mkdir(t *testing.T, p string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func TestDirCreates(t *testing.T) {
	d := filepath.Join(base(t), "a", "agent")
	old := setUmask(0o077)
	defer setUmask(old)
	if err := Dir("socket directory", d, 0o755); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(d)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
		t.Fatalf("created %v, %v; want a 0755 directory despite umask 077", fi.Mode(), err)
	}
	// Again: an existing directory of ours is accepted and left as it is.
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Dir("socket directory", d, 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o700 {
		t.Fatalf("existing directory's mode changed to %v", fi.Mode())
	}
}

func TestDirRefuses(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		// setup makes the tree under b and returns the directory to check.
		setup func(t *testing.T, b string) string
		want  []string
	}{
		{"owned by another user", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "agent"), 0o755, otherUID)
			return filepath.Join(b, "agent")
		}, []string{"/agent is owned by uid 1001", "not by root"}},
		{"owned by another user, mode 0700", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "data"), 0o700, otherUID)
			return filepath.Join(b, "data")
		}, []string{"/data is owned by uid 1001"}},
		{"writable by others", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "agent"), 0o777, 0)
			return filepath.Join(b, "agent")
		}, []string{"writable by group or others (mode 0777)"}},
		{"sticky and world-writable itself", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "agent"), 0o777|os.ModeSticky, 0)
			return filepath.Join(b, "agent")
		}, []string{"writable by group or others"}},
		{"group-writable", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "agent"), 0o770, 0)
			return filepath.Join(b, "agent")
		}, []string{"mode 0770"}},
		{"parent writable by others, not sticky", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "p"), 0o777, 0)
			mkdir(t, filepath.Join(b, "p", "agent"), 0o755, 0)
			return filepath.Join(b, "p", "agent")
		}, []string{"/p is writable by group or others without the sticky bit (mode 0777)"}},
		{"parent owned by another user", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "home"), 0o755, otherUID)
			mkdir(t, filepath.Join(b, "home", "agent"), 0o700, 0)
			return filepath.Join(b, "home", "agent")
		}, []string{"its parent", "/home is owned by uid 1001"}},
		{"missing, under a parent owned by another user", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "home"), 0o777, otherUID)
			return filepath.Join(b, "home", "agent")
		}, []string{"/home is owned by uid 1001"}},
		{"symbolic link owned by another user", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "theirs"), 0o755, 0)
			if err := os.Symlink(filepath.Join(b, "theirs"), filepath.Join(b, "agent")); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(filepath.Join(b, "agent"), otherUID, otherUID); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(b, "agent")
		}, []string{"symbolic link owned by uid 1001"}},
		{"our symbolic link to a directory of another user", func(t *testing.T, b string) string {
			mkdir(t, filepath.Join(b, "theirs"), 0o755, otherUID)
			if err := os.Symlink(filepath.Join(b, "theirs"), filepath.Join(b, "agent")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(b, "agent")
		}, []string{"/theirs) is owned by uid 1001"}},
		{"a file", func(t *testing.T, b string) string {
			if err := os.WriteFile(filepath.Join(b, "agent"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(b, "agent")
		}, []string{"is not a directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := base(t)
			d := tc.setup(t, b)
			before, _ := os.Lstat(d)
			err := Dir("socket directory", d, 0o755)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "socket directory "+d) {
				t.Errorf("error %q does not start by naming the directory %s", err, d)
			}
			if after, _ := os.Lstat(d); before != nil && (after == nil || after.Mode() != before.Mode()) {
				t.Errorf("mode changed from %v to %v", before.Mode(), after.Mode())
			}
		})
	}
}

// TestDirAccepts: what must keep working — svidd's own 0700 and 0755 directories, root's
// directories, a sticky world-writable parent like /tmp, and a symbolic link of ours.
func TestDirAccepts(t *testing.T) {
	requireRoot(t)
	b := base(t)
	mkdir(t, filepath.Join(b, "d700"), 0o700, 0)
	mkdir(t, filepath.Join(b, "d755"), 0o755, 0)
	mkdir(t, filepath.Join(b, "sticky"), 0o777|os.ModeSticky, 0)
	mkdir(t, filepath.Join(b, "sticky", "agent"), 0o755, 0)
	if err := os.Symlink(filepath.Join(b, "d755"), filepath.Join(b, "link")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"d700", "d755", "sticky/agent", "sticky/new", "link"} {
		if err := Dir("data dir", filepath.Join(b, d), 0o700); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}

func TestFile(t *testing.T) {
	requireRoot(t)
	b := base(t)
	write := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(b, name)
		if err := os.WriteFile(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := File("store", filepath.Join(b, "missing")); err != nil {
		t.Errorf("missing file: %v", err)
	}
	if err := File("store", write("ours", 0o600, 0)); err != nil {
		t.Errorf("our 0600 file: %v", err)
	}
	if err := File("store", write("ours644", 0o644, 0)); err != nil {
		t.Errorf("our 0644 file: %v", err)
	}
	for name, tc := range map[string]struct {
		path string
		want string
	}{
		"other owner":    {write("theirs", 0o600, otherUID), "is owned by uid 1001"},
		"group-writable": {write("gw", 0o620, 0), "writable by group or others (mode 0620)"},
		"directory":      {filepath.Join(b, "dir"), "not a regular file"},
		"symlink":        {filepath.Join(b, "link"), "not a regular file"},
	} {
		if name == "directory" {
			mkdir(t, tc.path, 0o700, 0)
		}
		if name == "symlink" {
			if err := os.Symlink(filepath.Join(b, "ours"), tc.path); err != nil {
				t.Fatal(err)
			}
		}
		err := File("store", tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: %v, want an error naming %s and saying %q", name, err, tc.path, tc.want)
		}
	}
}
