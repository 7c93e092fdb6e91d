package test

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
)

// TestFailedStartCreatesNothing: a start that cannot listen (api socket held by a live svidd,
// metrics port taken) fails with the reason and creates no data dir, store or CA.
func TestFailedStartCreatesNothing(t *testing.T) {
	running := startAgent(t)
	dir := proctest.ShortDir(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := filepath.Join(dir, "metrics.hcl")
	if err := os.WriteFile(cfg, []byte("telemetry {\n  prometheus {\n    address = \""+taken.Addr().String()+"\"\n  }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"api socket in use", []string{"-socketPath", running.api, "-adminSocketPath", filepath.Join(dir, "admin.sock")}, running.api},
		{"admin socket in use", []string{"-socketPath", filepath.Join(dir, "api.sock"), "-adminSocketPath", running.admin}, running.admin},
		{"metrics port in use", []string{"-socketPath", filepath.Join(dir, "api.sock"), "-adminSocketPath", filepath.Join(dir, "admin.sock"), "-config", cfg}, taken.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(dir, "data-"+strings.ReplaceAll(tc.name, " ", "-"))
			code, out := runSviddOnce(t, append(tc.args, "-dataDir", data)...)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want non-zero naming %s:\n%s", code, tc.want, out)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("the failed start created its data dir %s (%v)", data, err)
			}
			for _, p := range []string{filepath.Join(dir, "api.sock"), filepath.Join(dir, "admin.sock")} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("the failed start left %s behind", p)
				}
			}
		})
	}
	// The running svidd was not disturbed.
	if _, err := running.svidctl("healthcheck"); err != nil {
		t.Errorf("the running svidd is unhealthy after the failed starts: %v", err)
	}
}

// TestSIGINTWithOpenStreams: SIGINT stops svidd in well under a second with Envoy's streams
// open (they never end on their own: a graceful stop alone waited its whole 5 s deadline),
// and the log says what it closed.
func TestSIGINTWithOpenStreams(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry("spiffe://example.org/front", "-selector", "unix:uid:1001")
	var clients []*child
	for _, mode := range []string{"sotw", "delta"} {
		c := startAs(t, 1001, 1001, nil, bins.fakeenvoy, "-socket", a.api, "-mode", mode,
			"-names", "spiffe://example.org/front", "-follow", "-timeout", "1m")
		c.next(t, 10*time.Second) // the first response: the stream is open and served
		clients = append(clients, c)
	}
	start := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("svidd still running 10s after SIGINT:\n%s", a.logs.String())
	}
	took := time.Since(start)
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGINT, want 0", code)
	}
	// Well under a second, with headroom for a loaded machine (it took 5 s before).
	if took > 900*time.Millisecond {
		t.Errorf("svidd took %v to stop on SIGINT with 2 open streams, want well under a second:\n%s", took, a.logs.String())
	}
	if !strings.Contains(a.logs.String(), "closing open streams") || !strings.Contains(a.logs.String(), "streams=2") {
		t.Errorf("the stop did not log the streams it closed:\n%s", a.logs.String())
	}
	t.Logf("stopped %v after SIGINT", took)
}

// TestSvidFetchShowsStatusRotation: the rotation time `svid fetch` shows (as the workload) is
// the agent's own, jitter included, as `svidctl status` shows it.
func TestSvidFetchShowsStatusRotation(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(backendID, "-selector", "unix:uid:1002")
	out := svidFetchAs(t, a, 1002)
	var fetched struct {
		SVIDs []struct {
			SPIFFEID string    `json:"spiffe_id"`
			RotateAt time.Time `json:"rotate_at"`
		} `json:"svids"`
	}
	if err := json.Unmarshal([]byte(out), &fetched); err != nil || len(fetched.SVIDs) != 1 {
		t.Fatalf("svid fetch -output json: %v\n%s", err, out)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(a.mustSvidctl("status", "-output", "json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, id := range st.Identities {
		if id.SPIFFEID == backendID {
			if !id.RotateAt.Equal(fetched.SVIDs[0].RotateAt) {
				t.Fatalf("svid fetch says the SVID rotates at %s, svidctl status at %s", fetched.SVIDs[0].RotateAt, id.RotateAt)
			}
			half := id.NotBefore.Add(id.NotAfter.Sub(id.NotBefore) / 2)
			t.Logf("rotation at %s, %v from half the lifetime", id.RotateAt, id.RotateAt.Sub(half))
			return
		}
	}
	t.Fatalf("status holds no %s: %+v", backendID, st.Identities)
}

// TestExplainOtherUID: `svidctl explain -pid` over a real process under another uid shows the
// selectors svidd derives for it (as for a connection), and for the entry it almost matches the
// selector it lacks; `callers` and the log show a caller that got nothing; a selector svidd can
// never derive is warned about when the entry is written (through svidctl, and from the config).
func TestExplainOtherUID(t *testing.T) {
	requireRoot(t)
	a := startAgent(t, withConfig("entry \"ghost\" {\n  spiffe_id = \"spiffe://example.org/ghost\"\n  selectors = [\"unix:user:no-such-user-svidd\"]\n}\n"))
	waitLog(t, a, "config entry can never match")
	webID := a.createEntry("spiffe://example.org/web", "-selector", "unix:uid:1001", "-selector", "unix:path:/usr/bin/envoy")
	a.createEntry("spiffe://example.org/db", "-selector", "unix:uid:2000")

	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	if sleepPath, err = filepath.EvalSymlinks(sleepPath); err != nil {
		t.Fatal(err)
	}
	proc := exec.Command(sleepPath, "60")
	proc.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1001, Gid: 1001}}
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { proc.Process.Kill(); proc.Wait() }()
	pid := strconv.Itoa(proc.Process.Pid)

	var x admin.Explanation
	if err := json.Unmarshal([]byte(a.mustSvidctl("explain", "-pid", pid, "-output", "json")), &x); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"unix:uid:1001", "unix:gid:1001", "unix:path:" + sleepPath} {
		if !slices.Contains(x.Selectors, want) {
			t.Errorf("explain -pid %s: selectors %v lack %s", pid, x.Selectors, want)
		}
	}
	if len(x.Matched) != 0 || len(x.NearMiss) == 0 {
		t.Fatalf("explain: matched %v, near misses %v", x.Matched, x.NearMiss)
	}
	if n := x.NearMiss[0]; n.Entry.ID != webID || !slices.Equal(n.Missing, []string{"unix:path:/usr/bin/envoy"}) {
		t.Errorf("nearest miss %s missing %v, want the web entry missing unix:path:/usr/bin/envoy", n.Entry.SPIFFEID, n.Missing)
	}
	out := a.mustSvidctl("explain", "-pid", pid)
	for _, want := range []string{"unix:path:" + sleepPath, "matches no entry", "spiffe://example.org/web", "needs unix:path:/usr/bin/envoy"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	// Once the entry names its binary, the same process matches.
	a.mustSvidctl("entry", "update", "-entryID", webID, "-selector", "unix:uid:1001", "-selector", "unix:path:"+sleepPath)
	if err := json.Unmarshal([]byte(a.mustSvidctl("explain", "-pid", pid, "-output", "json")), &x); err != nil {
		t.Fatal(err)
	}
	if len(x.Matched) != 1 || x.Matched[0].ID != webID {
		t.Errorf("after the fix: matched %v, want the web entry", x.Matched)
	}
	if err := json.Unmarshal([]byte(a.mustSvidctl("explain", "-uid", "2000", "-output", "json")), &x); err != nil {
		t.Fatal(err)
	}
	if len(x.Matched) != 1 || x.Matched[0].SPIFFEID != "spiffe://example.org/db" {
		t.Errorf("explain -uid 2000: matched %v, want the db entry", x.Matched)
	}
	if _, err := a.svidctl("explain", "-pid", "999999999"); err == nil || !strings.Contains(err.Error(), "999999999") {
		t.Errorf("explain of a missing pid: %v", err)
	}

	// A real caller under uid 1002 that gets nothing: listed by callers, logged once.
	c := startAs(t, 1002, 1002, nil, bins.fakeenvoy, "-socket", a.api, "-names", "spiffe://example.org/web", "-follow", "-timeout", "1m")
	defer c.cmd.Process.Kill()
	waitLog(t, a, "caller got no identity")
	var cs []admin.Caller
	if err := json.Unmarshal([]byte(a.mustSvidctl("callers", "-output", "json")), &cs); err != nil {
		t.Fatal(err)
	}
	if len(cs) == 0 || cs[0].UID != 1002 || cs[0].PID != int32(c.cmd.Process.Pid) || len(cs[0].SPIFFEIDs) != 0 || !slices.Contains(cs[0].Selectors, "unix:uid:1002") {
		t.Errorf("callers: %+v, want the uid 1002 fakeenvoy first, with nothing", cs)
	}
	if out := a.mustSvidctl("callers"); !strings.Contains(out, "NOTHING") {
		t.Errorf("callers output does not flag the caller that got nothing:\n%s", out)
	}
	logs := a.logs.String()
	line := ""
	for l := range strings.Lines(logs) {
		if strings.Contains(l, "caller got no identity") && strings.Contains(l, "uid=1002") {
			line = l
		}
	}
	if !strings.Contains(line, "pid="+strconv.Itoa(c.cmd.Process.Pid)) || !strings.Contains(line, "selectors=") || !strings.Contains(line, "missing=") {
		t.Errorf("no-identity log line lacks pid, selectors or missing: %q", line)
	}

	// Warnings when an entry is written with a selector svidd cannot derive here.
	_, stderr := svidctlStderr(t, "-socketPath", a.admin, "entry", "create", "-spiffeID", "spiffe://example.org/nobody", "-selector", "unix:user:no-such-user-svidd")
	if !strings.Contains(stderr, "warning") || !strings.Contains(stderr, "no user") {
		t.Errorf("entry create with a user that does not exist: stderr %q, want a warning", stderr)
	}
}

// svidctlStderr runs svidctl and returns stdout and stderr (it must succeed).
func svidctlStderr(t *testing.T, args ...string) (string, string) {
	t.Helper()
	var out, errb strings.Builder
	cmd := exec.Command(bins.svidctl, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("svidctl %v: %v: %s", args, err, errb.String())
	}
	return out.String(), errb.String()
}

// TestWarnsWhenBinariesUnreadable: svidd run by an ordinary user (make run) cannot read other
// users' binaries; an entry with unix:path is warned about when it is written, and explain
// says why a root process has no unix:path selector.
func TestWarnsWhenBinariesUnreadable(t *testing.T) {
	requireRoot(t)
	dir := proctest.ShortDir(t)
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, 1001, 1001); err != nil {
		t.Fatal(err)
	}
	// The sockets are created here by uid 1001, whose directory it must be (svidd refuses a
	// socket directory others can write).
	if err := os.Chown(dir, 1001, 1001); err != nil {
		t.Fatal(err)
	}
	api, adm := filepath.Join(dir, "api.sock"), filepath.Join(dir, "admin.sock")
	cfg := filepath.Join(dir, "svidd.hcl")
	if err := os.WriteFile(cfg, []byte(testListeners), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &proctest.Buffer{}
	cmd := exec.Command(bins.svidd, "run", "-socketPath", api, "-adminSocketPath", adm, "-dataDir", data, "-config", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1001, Gid: 1001}}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := runSvidctl("-socketPath", adm, "healthcheck"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svidd as uid 1001 not ready:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, stderr := svidctlStderr(t, "-socketPath", adm, "entry", "create", "-spiffeID", "spiffe://example.org/envoy",
		"-selector", "unix:uid:0", "-selector", "unix:path:/usr/bin/envoy")
	if !strings.Contains(stderr, "warning") || !strings.Contains(stderr, "CAP_SYS_PTRACE") || !strings.Contains(stderr, "uid 1001") {
		t.Errorf("entry create with unix:path under a non-root svidd: stderr %q, want a warning", stderr)
	}
	if !strings.Contains(logs.String(), "entry can never match on this host") {
		t.Errorf("svidd did not log the warning:\n%s", logs.String())
	}
	// A root process: explain says it gets no unix:path, and why.
	proc := exec.Command("sleep", "60")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { proc.Process.Kill(); proc.Wait() }()
	var x admin.Explanation
	out, err := runSvidctl("-socketPath", adm, "explain", "-pid", strconv.Itoa(proc.Process.Pid), "-output", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &x); err != nil {
		t.Fatal(err)
	}
	for _, s := range x.Selectors {
		if strings.HasPrefix(s, "unix:path:") {
			t.Errorf("a uid-1001 svidd derived %s for a root process", s)
		}
	}
	if len(x.Notes) == 0 || !strings.Contains(x.Notes[0], "CAP_SYS_PTRACE") {
		t.Errorf("explain notes %q, want the reason unix:path is missing", x.Notes)
	}
	if len(x.NearMiss) == 0 || !slices.Contains(x.NearMiss[0].Missing, "unix:path:/usr/bin/envoy") {
		t.Errorf("near misses %+v", x.NearMiss)
	}
}
