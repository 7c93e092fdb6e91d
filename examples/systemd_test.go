package examples_test

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/svidd/svidd/conf"
)

// parseUnit reads a systemd unit into section → key → values (keys may repeat).
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// TestSystemdUnit keeps the unit hardened and consistent with svidd: the config it names
// loads, its sockets and data dir are where the unit's directories are, and the hardening
// directives the README promises are present.
func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, "systemd/svidd.service")
	svc := u["Service"]
	want := map[string]string{
		"Type":                    "notify",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"StateDirectory":          "svidd",
		"StateDirectoryMode":      "0700",
		"RuntimeDirectory":        "svidd",
		"CapabilityBoundingSet":   "CAP_SYS_PTRACE",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
	}
	for k, v := range want {
		if got := svc[k]; len(got) != 1 || got[0] != v {
			t.Errorf("[Service] %s = %v, want %q", k, got, v)
		}
	}
	exec := svc["ExecStart"]
	if len(exec) != 1 || !strings.HasPrefix(exec[0], "/usr/local/bin/svidd run -config ") {
		t.Fatalf("ExecStart = %v", exec)
	}
	if got := u["Install"]["WantedBy"]; len(got) != 1 || got[0] != "multi-user.target" {
		t.Errorf("WantedBy = %v", got)
	}

	cfg, err := conf.LoadFile("systemd/svidd.hcl", conf.Overrides{})
	if err != nil {
		t.Fatalf("the unit's config does not load: %v", err)
	}
	if cfg.DataDir != "/var/lib/svidd" {
		t.Errorf("data_dir %q is not the unit's StateDirectory /var/lib/svidd", cfg.DataDir)
	}
	for _, p := range []string{cfg.SocketPath, cfg.AdminSocketPath} {
		if !strings.HasPrefix(p, "/run/svidd/") {
			t.Errorf("socket %q is not in the unit's RuntimeDirectory /run/svidd", p)
		}
	}
}
