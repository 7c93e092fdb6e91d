package test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/svidd/svidd/internal/proctest"
)

// runSviddOnce runs `svidd run ARGS` expecting it to exit by itself (bad config, refused
// start); it returns the exit code and stderr.
func runSviddOnce(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bins.svidd, append([]string{"run"}, args...)...)
	cmd.Stderr = &errb
	cmd.Stdout = &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("svidd %v did not exit by itself:\n%s", args, errb.String())
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), errb.String()
		}
		t.Fatal(err)
	}
	return 0, errb.String()
}

func TestBadConfigExitsWithPosition(t *testing.T) {
	dir := proctest.ShortDir(t)
	for _, tc := range []struct {
		name, hcl, want string
	}{
		{"unknown key", "agent {\n  trust_domian = \"example.org\"\n}\n", "svidd.hcl:2:3"},
		{"wrong type", "ca {\n  ca_ttl = [1]\n}\n", "svidd.hcl:2:"},
		{"bad duration", "ca {\n  svid_ttl = \"1x\"\n}\n", "svidd.hcl:2:"},
		{"bad trust domain", "agent {\n  trust_domain = \"Example Org\"\n}\n", "svidd.hcl:2:"},
		{"bad selector in entry", "entry \"web\" {\n  spiffe_id = \"spiffe://example.org/web\"\n  selectors = [\"unix:uid:x\"]\n}\n", "svidd.hcl:3:"},
		{"syntax error", "agent {\n  trust_domain = \n", "svidd.hcl:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "svidd.hcl")
			if err := os.WriteFile(cfg, []byte(tc.hcl), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out := runSviddOnce(t, "-config", cfg, "-dataDir", filepath.Join(dir, "data"),
				"-socketPath", filepath.Join(dir, "api.sock"), "-adminSocketPath", filepath.Join(dir, "admin.sock"))
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output:\n%s\nwant non-zero and %q", code, out, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
				t.Fatal("a bad config still created the data dir: nothing should be touched")
			}
		})
	}
	if code, out := runSviddOnce(t, "-trustDomain", "spiffe://Bad Domain", "-dataDir", filepath.Join(dir, "data")); code == 0 || !strings.Contains(out, "-trustDomain") {
		t.Fatalf("bad -trustDomain flag: exit %d\n%s", code, out)
	}
	if code, out := runSviddOnce(t, "-config", filepath.Join(dir, "missing.hcl")); code == 0 || !strings.Contains(out, "missing.hcl") {
		t.Fatalf("missing config file: exit %d\n%s", code, out)
	}
}

type listedEntry struct {
	ID, Name, SPIFFEID string
	DNSNames           []string
}

func (a *agent) entries() []listedEntry {
	a.t.Helper()
	// SPIRE's shape: {"entries": [{"spiffe_id": {"trust_domain", "path"}, ...}]}.
	var list struct {
		Entries []struct {
			ID       string   `json:"id"`
			Name     string   `json:"name"`
			DNSNames []string `json:"dns_names"`
			SPIFFEID struct {
				TrustDomain string `json:"trust_domain"`
				Path        string `json:"path"`
			} `json:"spiffe_id"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(a.mustSvidctl("entry", "list", "-output", "json")), &list); err != nil {
		a.t.Fatal(err)
	}
	var es []listedEntry
	for _, e := range list.Entries {
		es = append(es, listedEntry{ID: e.ID, Name: e.Name, DNSNames: e.DNSNames,
			SPIFFEID: "spiffe://" + e.SPIFFEID.TrustDomain + e.SPIFFEID.Path})
	}
	return es
}

// TestConfigEntriesReconciled: entry blocks are registered at start, idempotently across
// restarts, updated in place when the block changes and removed when it goes; entries made
// with svidctl are never touched.
func TestConfigEntriesReconciled(t *testing.T) {
	block := func(dns string) string {
		return "entry \"web\" {\n  spiffe_id = \"spiffe://example.org/web\"\n  selectors = [\"unix:uid:1000\"]\n  dns_names = [\"" + dns + "\"]\n}\n"
	}
	a := startAgent(t, withConfig(block("web.local")))
	manual := a.createEntry("spiffe://example.org/manual", "-selector", "unix:uid:2000")
	es := a.entries()
	if len(es) != 2 {
		t.Fatalf("entries = %+v, want the config entry and the manual one", es)
	}
	var web listedEntry
	for _, e := range es {
		if e.Name == "web" {
			web = e
		}
	}
	if web.ID == "" {
		t.Fatalf("config entry not registered: %+v", es)
	}

	a.restart()
	if es := a.entries(); len(es) != 2 {
		t.Fatalf("after restart: %+v, want still 2 (idempotent)", es)
	}

	if err := os.WriteFile(a.config, []byte(block("web2.local")), 0o644); err != nil {
		t.Fatal(err)
	}
	a.restart()
	for _, e := range a.entries() {
		if e.Name == "web" && (e.ID != web.ID || len(e.DNSNames) != 1 || e.DNSNames[0] != "web2.local") {
			t.Fatalf("changed block: %+v, want same ID %s with web2.local", e, web.ID)
		}
	}

	if err := os.WriteFile(a.config, []byte("# no entries\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.restart()
	es = a.entries()
	if len(es) != 1 || es[0].ID != manual {
		t.Fatalf("after removing the block: %+v, want only the manual entry", es)
	}
}

// TestSecondAgentRefuses: a live agent's sockets and data dir are never taken over.
func TestSecondAgentRefuses(t *testing.T) {
	a := startAgent(t)
	other := proctest.ShortDir(t)
	code, out := runSviddOnce(t, "-socketPath", a.api, "-adminSocketPath", filepath.Join(other, "admin.sock"), "-dataDir", filepath.Join(other, "data"))
	if code == 0 || !strings.Contains(out, "another svidd is serving on "+a.api) {
		t.Fatalf("second agent on a live api socket: exit %d\n%s", code, out)
	}
	code, out = runSviddOnce(t, "-socketPath", filepath.Join(other, "api.sock"), "-adminSocketPath", filepath.Join(other, "admin.sock"), "-dataDir", a.dataDir)
	if code == 0 || !strings.Contains(out, "in use by another svidd") {
		t.Fatalf("second agent on a live data dir: exit %d\n%s", code, out)
	}
	// The first agent is unharmed.
	a.mustSvidctl("healthcheck")
}

// TestSocketPermissions: the api socket is open to every user; the admin socket is 0600 and,
// even if its mode were loosened, svidd drops connections from any uid but its own and root.
func TestSocketPermissions(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	for path, want := range map[string]os.FileMode{a.api: 0o666, a.admin: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want socket %04o", path, fi.Mode(), want)
		}
	}
	fi, err := os.Stat(a.dataDir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v (%v), want 0700", fi.Mode(), err)
	}
	fi, err = os.Stat(filepath.Join(a.dataDir, "ca.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key file mode %v (%v), want 0600", fi.Mode(), err)
	}

	asUID := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		cmd := exec.Command(bins.svidctl, append([]string{"-socketPath", a.admin}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1001, Gid: 1001}}
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return errb.String(), err
	}
	if msg, err := asUID("entry", "list"); err == nil || !strings.Contains(msg, "permission denied") {
		t.Fatalf("uid 1001 on the 0600 admin socket: err %v, %q", err, msg)
	}
	// Loosen the file mode: the peer-uid check must still refuse.
	if err := os.Chmod(a.admin, 0o666); err != nil {
		t.Fatal(err)
	}
	if msg, err := asUID("entry", "create", "-spiffeID", "spiffe://example.org/evil", "-selector", "unix:uid:1001"); err == nil {
		t.Fatalf("uid 1001 created an entry through a world-writable admin socket: %q", msg)
	}
	if !strings.Contains(a.logs.String(), "refused admin connection") {
		t.Errorf("refused admin connection was not logged")
	}
	if es := a.entries(); len(es) != 0 {
		t.Fatalf("entries after the refused attempts: %+v", es)
	}
	// Root (and the owner, here the same) is served.
	a.createEntry("spiffe://example.org/ok", "-selector", "unix:uid:1001")

	// The api socket accepts any uid.
	c := startAs(t, 1001, 1001, nil, bins.fakeenvoy, "-socket", a.api, "-names", "spiffe://example.org/ok", "-timeout", "20s")
	if line := c.next(t, 25*time.Second); !strings.Contains(line, "spiffe://example.org/ok") {
		t.Fatalf("uid 1001 on the api socket got %s", line)
	}
}

// TestFlagsOverrideFile: the file overrides defaults, flags override the file.
func TestFlagsOverrideFile(t *testing.T) {
	a := startAgent(t, withConfig("agent {\n  trust_domain = \"file.example\"\n}\n"), withArgs("-trustDomain", "flag.example"))
	var b struct {
		TrustDomain string `json:"trust_domain"`
	}
	if err := json.Unmarshal([]byte(a.mustSvidctl("bundle", "show", "-output", "json")), &b); err != nil {
		t.Fatal(err)
	}
	if b.TrustDomain != "flag.example" {
		t.Fatalf("trust domain %q, want the flag's flag.example", b.TrustDomain)
	}
	if _, err := a.svidctl("entry", "create", "-spiffeID", "spiffe://file.example/x", "-selector", "unix:uid:1"); err == nil {
		t.Fatal("entry in the file's (overridden) trust domain accepted")
	}
}

// TestAPISocketAnswersGRPCHealth: the api socket serves grpc.health.v1 next to SDS.
func TestAPISocketAnswersGRPCHealth(t *testing.T) {
	a := startAgent(t)
	conn, err := grpc.NewClient("unix://"+a.api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctxFor(t, 10*time.Second), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check: %v, %v; want SERVING", resp, err)
	}
}

// TestSystemdNotify: under a Type=notify unit svidd says READY=1 once it serves, RELOADING=1
// then READY=1 around a SIGHUP reload, and STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir := proctest.ShortDir(t)
	sock := filepath.Join(dir, "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := ln.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-msgs:
			if got != want {
				t.Fatalf("notify message %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %q from svidd", want)
		}
	}
	a := startAgent(t, withConfig("# none\n"), withEnv("NOTIFY_SOCKET="+sock))
	expect("READY=1")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expect("RELOADING=1")
	expect("READY=1")
	a.stop()
	expect("STOPPING=1")
}

// TestHealthEndpoints: svidctl healthcheck fails before svidd runs and succeeds once it is
// ready; the HTTP health listener answers /live and /ready.
func TestHealthEndpoints(t *testing.T) {
	dir := proctest.ShortDir(t)
	if _, err := runSvidctl("-socketPath", filepath.Join(dir, "admin.sock"), "healthcheck"); err == nil {
		t.Fatal("healthcheck succeeded with no agent running")
	}
	a := startAgent(t, withConfig("health {\n  address = \"127.0.0.1:0\"\n}\n"))
	if out := a.mustSvidctl("healthcheck"); !strings.Contains(out, "healthy") {
		t.Fatalf("healthcheck: %q", out)
	}
	addr := a.loggedAddr("health serving")
	for path, want := range map[string]int{"/live": 200, "/ready": 200, "/nope": 404} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
	a.stop()
	if _, err := a.svidctl("healthcheck"); err == nil {
		t.Fatal("healthcheck succeeded after svidd stopped")
	}
}
