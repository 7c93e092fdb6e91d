package examples_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svidd/svidd/conf"
)

// TestMakeInstall runs `make install` into a temp DESTDIR and checks that what the unit names
// is there: ExecStart's binary, its -config (which loads), the Documentation= file; that an
// operator's existing config is kept; and that uninstall removes the rest.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed: apt-get install make")
	}
	dest := t.TempDir()
	const prefix = "/opt/svidd"
	install := func() string {
		cmd := exec.Command("make", "install", "DESTDIR="+dest, "PREFIX="+prefix, "BIN="+filepath.Join(t.TempDir(), "bin"))
		cmd.Dir = repoRoot
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
		return string(out)
	}
	install()

	for path, mode := range map[string]os.FileMode{
		prefix + "/bin/svidd":                                             0o755,
		prefix + "/bin/svidctl":                                           0o755,
		prefix + "/lib/systemd/system/svidd.service":                      0o644,
		"/etc/svidd/svidd.hcl":                                            0o644,
		prefix + "/share/doc/svidd/README.md":                             0o644,
		prefix + "/share/doc/svidd/SECURITY.md":                           0o644,
		prefix + "/share/doc/svidd/svidd-defaults.hcl":                    0o644,
		prefix + "/share/doc/svidd/examples/envoy/frontend-listener.yaml": 0o644,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %o, want %o", path, fi.Mode().Perm(), mode)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dest, prefix, "share/doc/svidd/examples/*_test.go")); len(m) > 0 {
		t.Errorf("tests installed as docs: %v", m)
	}

	// The installed unit points at the installed files.
	unit := parseUnit(t, filepath.Join(dest, prefix, "lib/systemd/system/svidd.service"))
	exec0 := strings.Fields(unit["Service"]["ExecStart"][0])
	if len(exec0) != 4 || exec0[0] != prefix+"/bin/svidd" || exec0[1] != "run" || exec0[2] != "-config" {
		t.Fatalf("installed ExecStart = %q", exec0)
	}
	if fi, err := os.Stat(filepath.Join(dest, exec0[0])); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("ExecStart's %s is not an installed executable: %v", exec0[0], err)
	}
	if _, err := conf.LoadFile(filepath.Join(dest, exec0[3]), conf.Overrides{}); err != nil {
		t.Errorf("ExecStart's -config %s does not load: %v", exec0[3], err)
	}
	doc, ok := strings.CutPrefix(unit["Unit"]["Documentation"][0], "file://")
	if !ok {
		t.Fatalf("Documentation= %q is not a file:// URL", unit["Unit"]["Documentation"][0])
	}
	if _, err := os.Stat(filepath.Join(dest, doc)); err != nil {
		t.Errorf("Documentation= points at a file not installed: %v", err)
	}
	// The installed binary runs.
	if out, err := exec.Command(filepath.Join(dest, prefix, "bin/svidctl"), "-h").CombinedOutput(); err != nil || !strings.Contains(string(out), "entry create") {
		t.Errorf("installed svidctl -h: %v\n%s", err, out)
	}

	// A second install keeps the operator's config.
	cfg := filepath.Join(dest, "etc/svidd/svidd.hcl")
	if err := os.WriteFile(cfg, []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if b, _ := os.ReadFile(cfg); string(b) != "# mine\n" {
		t.Errorf("make install replaced the existing config: %q", b)
	}

	cmd := exec.Command("make", "uninstall", "DESTDIR="+dest, "PREFIX="+prefix)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	for _, p := range []string{prefix + "/bin/svidd", prefix + "/lib/systemd/system/svidd.service", prefix + "/share/doc/svidd"} {
		if _, err := os.Stat(filepath.Join(dest, p)); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall (%v)", p, err)
		}
	}
	if _, err := os.Stat(cfg); err != nil {
		t.Errorf("uninstall removed the config: %v", err)
	}
}
