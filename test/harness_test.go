// Package test holds svidd's end-to-end tests: they build the real binaries, start svidd on
// sockets in a temp dir, register entries with the svidctl binary, and connect as Envoy does,
// from processes running under other uids.
package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
)

// Binaries built once for the whole package, in a directory every uid can read and execute.
var bins struct {
	dir                                     string
	svidd, svidctl, fakeenvoy, spiffeclient string
	// plainSvidd and plainSvidctl are built without the race detector even when the tests
	// run with it (the same files as svidd and svidctl otherwise), for the tests that
	// plainBinaries says.
	plainSvidd, plainSvidctl string
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "svidd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bins.dir = dir
	defer proctest.RemoveHelperBinary()
	// One go build for the four: it compiles their shared packages once and links them in
	// parallel. The tags `make build` ships with (Makefile BUILDTAGS), so the tests run the
	// same binary operators do.
	args := []string{"build", "-tags", "grpcnotrace", "-o", dir + "/"}
	if raceEnabled {
		args = append(args, "-race")
	}
	var pkgs []string
	for _, b := range []struct {
		dst *string
		pkg string
	}{
		{&bins.svidd, "github.com/svidd/svidd/cmd/svidd"},
		{&bins.svidctl, "github.com/svidd/svidd/cmd/svidctl"},
		{&bins.fakeenvoy, "github.com/svidd/svidd/test/cmd/fakeenvoy"},
		{&bins.spiffeclient, "github.com/svidd/svidd/test/cmd/spiffeclient"},
	} {
		*b.dst = filepath.Join(dir, filepath.Base(b.pkg))
		pkgs = append(pkgs, b.pkg)
	}
	bins.plainSvidd, bins.plainSvidctl = bins.svidd, bins.svidctl
	builds := [][]string{append(args, pkgs...)}
	if raceEnabled {
		plain := filepath.Join(dir, "plain")
		bins.plainSvidd, bins.plainSvidctl = filepath.Join(plain, "svidd"), filepath.Join(plain, "svidctl")
		builds = append(builds, []string{"build", "-tags", "grpcnotrace", "-o", plain + "/", pkgs[0], pkgs[1]})
	}
	for _, b := range builds {
		cmd := exec.Command("go", b...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "go %s: %v\n", strings.Join(b, " "), err)
			return 1
		}
	}
	flag.Parse()
	if !flagSet("test.parallel") {
		// The waitsInParallel tests sleep through CA lifetimes; let them all wait at once.
		_ = flag.Set("test.parallel", "8")
	}
	// Race-built binaries otherwise sleep a second on every exit; the suite runs hundreds.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return m.Run()
}

// flagSet reports whether the command line set the named flag.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// waitsInParallel marks a test whose wall time goes to waiting for CA lifetimes and
// rotations (30s CAs, 5s SVIDs), not to measuring how fast svidd is, and whose assertions
// have seconds of margin. Such tests run together (-test.parallel is 8 here unless the
// command line sets it), and only once every sequential test of the package has finished:
// testing starts top-level parallel tests after the last sequential one returns, so the
// latency and flood tests never share the machine with them.
func waitsInParallel(t *testing.T) {
	t.Helper()
	t.Parallel()
}

// requireRoot: tests that start workloads under other uids need root (CI runs as root).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workloads under other uids (CI runs as root)")
	}
}

// agent is one running svidd.
type agent struct {
	t       *testing.T
	dir     string // short, so socket paths stay under 108 bytes
	api     string
	admin   string
	dataDir string
	config  string
	extra   []string
	env     []string
	bin     string // the svidd binary; "" is bins.svidd
	ctl     string // the svidctl binary a.svidctl runs; "" is bins.svidctl
	cmd     *exec.Cmd
	logs    *proctest.Buffer
	exited  chan struct{}
}

type agentOpt func(*agent)

// withConfig writes an HCL config file (appended to the defaults the harness sets by flag).
func withConfig(hcl string) agentOpt {
	return func(a *agent) {
		a.config = filepath.Join(a.dir, "svidd.hcl")
		if err := os.WriteFile(a.config, []byte(hcl), 0o644); err != nil {
			a.t.Fatal(err)
		}
	}
}

// withEnv adds environment variables to svidd's.
func withEnv(kv ...string) agentOpt {
	return func(a *agent) { a.env = append(a.env, kv...) }
}

// withArgs adds flags to `svidd run`.
func withArgs(args ...string) agentOpt {
	return func(a *agent) { a.extra = append(a.extra, args...) }
}

// plainBinaries runs this agent's svidd, and svidctl through a.svidctl, as operators get them:
// built without the race detector even when the tests run with it. For tests that measure
// svidd's RSS or latency (they would otherwise measure the race detector's shadow memory and
// 5-10× slowdown), and for tests whose time goes to what -race only slows and does not check:
// svidd killed and started hundreds of times, or decrypting a step-ca provisioner key (600,000
// PBKDF2 rounds) at every start. Every other test runs the race-built binaries: the sds, ops,
// CA rotation, Workload API, hygiene, federation, abuse, attestation and disk-upstream fleet
// tests are the suite that checks svidd under -race (and the unit tests, all of svidd's code).
func plainBinaries() agentOpt {
	return func(a *agent) { a.bin, a.ctl = bins.plainSvidd, bins.plainSvidctl }
}

// startAgent starts svidd and waits until svidctl healthcheck says it is ready.
func startAgent(t *testing.T, opts ...agentOpt) *agent {
	t.Helper()
	dir := proctest.ShortDir(t)
	a := &agent{t: t, dir: dir, api: filepath.Join(dir, "api.sock"), admin: filepath.Join(dir, "admin.sock"), dataDir: filepath.Join(dir, "data")}
	for _, o := range opts {
		o(a)
	}
	a.start()
	t.Cleanup(a.stop)
	return a
}

// testListeners keeps concurrent test agents off the default metrics port; the agent logs the
// address it bound ("metrics serving").
const testListeners = "telemetry {\n  prometheus {\n    address = \"127.0.0.1:0\"\n  }\n}\n"

// isolateListeners prepends testListeners to the agent's config (creating one if needed),
// unless the test's config sets telemetry itself.
func (a *agent) isolateListeners() {
	if a.config == "" {
		a.config = filepath.Join(a.dir, "svidd.hcl")
	}
	old, err := os.ReadFile(a.config)
	if err != nil && !os.IsNotExist(err) {
		a.t.Fatal(err)
	}
	if strings.Contains(string(old), "telemetry") {
		return
	}
	if err := os.WriteFile(a.config, append([]byte(testListeners), old...), 0o644); err != nil {
		a.t.Fatal(err)
	}
}

// metricsAddr returns the address the agent's metrics listener bound.
func (a *agent) metricsAddr() string { return a.loggedAddr("metrics serving") }

// loggedAddr returns the address= of the first log line containing msg.
func (a *agent) loggedAddr(msg string) string {
	a.t.Helper()
	waitLog(a.t, a, msg)
	for _, line := range strings.Split(a.logs.String(), "\n") {
		if i := strings.Index(line, msg); i >= 0 {
			if j := strings.Index(line, "address="); j >= 0 {
				return strings.Fields(line[j+len("address="):])[0]
			}
		}
	}
	a.t.Fatalf("no address on the %q log line", msg)
	return ""
}

func (a *agent) args() []string {
	args := []string{"run", "-socketPath", a.api, "-adminSocketPath", a.admin, "-dataDir", a.dataDir, "-logLevel", "debug"}
	if a.config != "" {
		args = append(args, "-config", a.config)
	}
	return append(args, a.extra...)
}

func (a *agent) start() {
	t := a.t
	t.Helper()
	a.isolateListeners()
	a.logs = &proctest.Buffer{}
	bin := a.bin
	if bin == "" {
		bin = bins.svidd
	}
	a.cmd = exec.Command(bin, a.args()...)
	a.cmd.Stdout = a.logs
	a.cmd.Stderr = a.logs
	a.cmd.Env = append(os.Environ(), a.env...)
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func() { a.cmd.Wait(); close(a.exited) }()
	deadline := time.Now().Add(15 * time.Second)
	admc := admin.NewClient(a.admin)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		h, err := admc.Health(ctx)
		cancel()
		if err == nil && h.Ready {
			return
		}
		select {
		case <-a.exited:
			t.Fatalf("svidd exited during start (%v):\n%s", a.cmd.ProcessState, a.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("svidd not ready after 15s:\n%s", a.logs.String())
		}
		time.Sleep(5 * time.Millisecond) // the kill test restarts svidd hundreds of times
	}
}

// stop sends SIGTERM and asserts a clean exit (status 0, sockets removed).
func (a *agent) stop() {
	t := a.t
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	select {
	case <-a.exited:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
		t.Errorf("svidd did not stop within 15s of SIGTERM:\n%s", a.logs.String())
		return
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("svidd exited %d after SIGTERM, want 0:\n%s", code, a.logs.String())
	}
	for _, p := range []string{a.api, a.admin} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("socket %s left behind after stop", p)
		}
	}
}

// kill sends SIGKILL (no cleanup) and waits.
func (a *agent) kill() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

// restart stops svidd cleanly and starts it again on the same dirs.
func (a *agent) restart() {
	a.stop()
	a.start()
}

// svidctl runs the svidctl binary against this agent's admin socket.
func (a *agent) svidctl(args ...string) (string, error) {
	bin := a.ctl
	if bin == "" {
		bin = bins.svidctl
	}
	return runSvidctlBin(bin, append([]string{"-socketPath", a.admin}, args...)...)
}

func runSvidctl(args ...string) (string, error) { return runSvidctlBin(bins.svidctl, args...) }

func runSvidctlBin(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("svidctl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// mustSvidctl runs svidctl and fails the test on error.
func (a *agent) mustSvidctl(args ...string) string {
	a.t.Helper()
	out, err := a.svidctl(args...)
	if err != nil {
		a.t.Fatal(err)
	}
	return out
}

// createEntry registers an entry and returns its ID.
func (a *agent) createEntry(spiffeID string, extra ...string) string {
	a.t.Helper()
	return registerEntry(a.t, a, spiffeID, extra...)
}

// registerEntry is createEntry failing t, for subtests of a test that started a.
func registerEntry(t *testing.T, a *agent, spiffeID string, extra ...string) string {
	t.Helper()
	out, err := a.svidctl(append([]string{"entry", "create", "-spiffeID", spiffeID, "-output", "json"}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.ID == "" {
		t.Fatalf("entry create output %q: %v", out, err)
	}
	return e.ID
}

// child is a process started under another uid whose stdout is read line by line.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *proctest.Buffer
	done   chan struct{}
}

// startAs runs path with args as uid/gid (and extra groups).
func startAs(t *testing.T, uid, gid uint32, groups []uint32, path string, args ...string) *child {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	cmd.Dir = "/"
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 1024), stderr: &proctest.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// next returns the next stdout line within d, or fails.
func (c *child) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			<-c.done
			t.Fatalf("child exited (%v) before printing; stderr:\n%s", c.cmd.ProcessState, c.stderr.String())
		}
		return l
	case <-time.After(d):
		t.Fatalf("child printed nothing within %v; stderr:\n%s", d, c.stderr.String())
	}
	return ""
}

// nextOrNone returns the next line within d, or "" when nothing came.
func (c *child) nextOrNone(d time.Duration) (string, bool) {
	select {
	case l, ok := <-c.lines:
		return l, ok
	case <-time.After(d):
		return "", false
	}
}
