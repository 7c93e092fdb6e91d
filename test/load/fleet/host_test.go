package fleet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/test/envoy"
)

var (
	sviddOnce sync.Once
	sviddBin  string
	sviddErr  error
	binDir    string
)

// buildSvidd builds svidd once per test binary as `make build` does (CGO off, -trimpath,
// grpcnotrace), into a directory removed by TestMain.
func buildSvidd(t testing.TB) string {
	t.Helper()
	sviddOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fleet-bin-")
		if err != nil {
			sviddErr = err
			return
		}
		binDir = dir
		sviddBin = filepath.Join(dir, "svidd")
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-o", sviddBin, "github.com/svidd/svidd/cmd/svidd")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			sviddErr = fmt.Errorf("building svidd: %v: %s", err, out)
		}
	})
	if sviddErr != nil {
		t.Fatal(sviddErr)
	}
	return sviddBin
}

// host is one svidd process with store "etcd", on sockets in its own short directory.
type host struct {
	t                          testing.TB
	name                       string
	dir, api, admin, data, cfg string
	logPath                    string
	client                     *admin.Client

	cmd       *exec.Cmd
	exited    chan struct{}
	startedAt time.Time
}

type hostOpts struct {
	svidTTL  time.Duration // 0: svidd's default
	logLevel string        // default "warn"
}

func newHost(t testing.TB, name string, endpoints []string, o hostOpts) *host {
	t.Helper()
	dir := proctest.ShortDir(t)
	h := &host{
		t: t, name: name, dir: dir,
		api:     filepath.Join(dir, "api.sock"),
		admin:   filepath.Join(dir, "admin.sock"),
		data:    filepath.Join(dir, "data"),
		cfg:     filepath.Join(dir, "svidd.hcl"),
		logPath: filepath.Join(dir, "svidd.log"),
	}
	h.client = admin.NewClient(h.admin)
	if o.logLevel == "" {
		o.logLevel = "warn"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "agent {\n  log_level = %q\n}\n", o.logLevel)
	if o.svidTTL > 0 {
		fmt.Fprintf(&b, "ca {\n  svid_ttl = %q\n  ca_ttl = \"24h\"\n}\n", o.svidTTL)
	}
	b.WriteString("telemetry {\n  prometheus {\n    address = \"127.0.0.1:0\"\n  }\n}\n")
	q := make([]string, len(endpoints))
	for i, e := range endpoints {
		q[i] = strconv.Quote(e)
	}
	fmt.Fprintf(&b, "store \"etcd\" {\n  endpoints = [%s]\n}\n", strings.Join(q, ", "))
	if err := os.WriteFile(h.cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	return h
}

// start starts svidd without waiting for it; startedAt is taken just before exec.
func (h *host) start() {
	h.t.Helper()
	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(buildSvidd(h.t), "run", "-config", h.cfg, "-socketPath", h.api, "-adminSocketPath", h.admin, "-dataDir", h.data)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	h.startedAt = time.Now()
	if err := cmd.Start(); err != nil {
		h.t.Fatalf("starting svidd %s: %v", h.name, err)
	}
	h.cmd, h.exited = cmd, make(chan struct{})
	exited := h.exited
	go func() { cmd.Wait(); close(exited) }()
}

// waitReady polls the admin health endpoint until svidd is ready and its registry reachable.
func (h *host) waitReady(timeout time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := h.client.Status(ctx)
		cancel()
		if err == nil && st.Registry != nil && st.Registry.Reachable {
			return
		}
		select {
		case <-h.exited:
			h.t.Fatalf("svidd %s exited during start; log %s:\n%s", h.name, h.logPath, h.logTail())
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("svidd %s not ready with its registry after %s (%v); log:\n%s", h.name, timeout, err, h.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop ends svidd (SIGTERM, then SIGKILL after 10 s). Safe to call twice.
func (h *host) stop() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
	h.cmd = nil
}

func (h *host) logTail() string {
	b, _ := os.ReadFile(h.logPath)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

func (h *host) rssKiB() int64 { return rssKiB(h.cmd.Process.Pid) }

// dial connects to the host's SDS socket as Envoy's envoy_grpc cluster does.
func (h *host) dial() *grpc.ClientConn {
	h.t.Helper()
	conn, err := envoy.Dial(context.Background(), h.api)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// rssKiB is VmRSS of pid, or -1.
func rssKiB(pid int) int64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

// cpuTime is a process's user+system CPU time from /proc/PID/stat (USER_HZ = 100 on every
// Linux ABI Go supports), or 0.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: the fields start after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// etcdPIDs finds the etcd member processes serving these client URLs (etcdtest keeps its
// processes private; their command lines name the URL).
func etcdPIDs(urls []string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(cl, []byte{0})
		for i, a := range args {
			if string(a) == "--listen-client-urls" && i+1 < len(args) {
				for _, u := range urls {
					if string(args[i+1]) == u {
						out = append(out, pid)
					}
				}
			}
		}
	}
	return out
}
