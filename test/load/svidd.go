package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

// clkTck is USER_HZ, the unit of /proc/PID/stat's utime and stime: 100 on every Linux ABI Go
// supports (the kernel converts to it whatever its internal HZ).
const clkTck = 100

// proc is a process the tool started: svidd, or the floor server.
type proc struct {
	cmd       *exec.Cmd
	exited    chan struct{}
	startedAt time.Time
}

// startCmd starts bin with args and env added to the tool's, output to logPath; it does not
// wait for the process to be ready.
func (p *proc) startCmd(bin string, args, env []string, logPath string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	// If the tool dies, so does the process: nothing is left running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.startedAt = time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", filepath.Base(bin), err)
	}
	p.cmd = cmd
	p.exited = make(chan struct{})
	go func() { cmd.Wait(); close(p.exited) }()
	return nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM and waits, then SIGKILL.
func (p *proc) stop(timeout time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s did not stop within %s of SIGTERM (killed)", filepath.Base(p.cmd.Path), timeout)
	}
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// agentProc is one svidd process under test.
type agentProc struct {
	proc

	bin     string
	dir     string // short: the sockets live here
	api     string
	admin   string
	data    string
	config  string
	logPath string
	env     []string
	// metrics is the 127.0.0.1 address svidd is told to serve Prometheus metrics on ("" none).
	metrics string

	client *admin.Client
}

func newAgentProc(bin, dir, metrics, logLevel string, ttl time.Duration, env []string) (*agentProc, error) {
	a := &agentProc{
		bin:     bin,
		dir:     dir,
		api:     filepath.Join(dir, "api.sock"),
		admin:   filepath.Join(dir, "admin.sock"),
		data:    filepath.Join(dir, "data"),
		config:  filepath.Join(dir, "svidd.hcl"),
		logPath: filepath.Join(dir, "svidd.log"),
		env:     env,
		metrics: metrics,
	}
	a.client = admin.NewClient(a.admin)
	var b strings.Builder
	fmt.Fprintf(&b, "agent {\n  log_level = %q\n}\n", logLevel)
	if ttl > 0 {
		// Short SVIDs for -change rotate: the CA's own TTL must be at least six of them.
		fmt.Fprintf(&b, "ca {\n  svid_ttl = %q\n  ca_ttl = %q\n}\n", ttl.String(), max(24*time.Hour, 6*ttl).String())
	}
	fmt.Fprintf(&b, "telemetry {\n  prometheus {\n    address = %q\n  }\n}\n", metrics)
	if err := os.WriteFile(a.config, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

// start starts svidd; it does not wait for it to be ready.
func (a *agentProc) start() error {
	return a.startCmd(a.bin, []string{"run", "-config", a.config, "-socketPath", a.api, "-adminSocketPath", a.admin, "-dataDir", a.data}, a.env, a.logPath)
}

// waitReady polls the admin Health endpoint until svidd says it is ready.
func (a *agentProc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		h, err := a.client.Health(ctx)
		cancel()
		if err == nil && h.Ready {
			return nil
		}
		select {
		case <-a.exited:
			return fmt.Errorf("svidd exited during start (%v); log: %s", a.cmd.ProcessState, a.logPath)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("svidd not ready after %s (last: %v %+v); log: %s", timeout, err, h, a.logPath)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// usage is a sample of the agent's resource use.
type usage struct {
	RSSKiB int64
	// AnonKiB is the anonymous part of RSS (heap, stacks): what streams cost, without the
	// binary's mapped pages, which are shared and reclaimable.
	AnonKiB int64
	CPU     time.Duration
	// Goroutines and HeapKiB come from the agent's metrics; -1 when it serves none.
	Goroutines int64
	HeapKiB    int64
	// Mints counts X509-SVIDs minted so far (svidd_svid_x509_mint_duration_seconds_count);
	// -1 without metrics.
	Mints int64
	// FirstSum and FirstCount are svidd_api_first_response_seconds' sum and count: the
	// agent's own time from a stream's first request to its first response. FirstCount is -1
	// without metrics.
	FirstSum   float64
	FirstCount int64
}

// meanFirst is the agent's mean time to a first response between samples a and b, or -1.
func meanFirst(a, b usage) time.Duration {
	if a.FirstCount < 0 || b.FirstCount <= a.FirstCount {
		return -1
	}
	return time.Duration((b.FirstSum - a.FirstSum) / float64(b.FirstCount-a.FirstCount) * float64(time.Second))
}

// sample is procUsage and, if svidd serves metrics, go_goroutines,
// go_memstats_heap_inuse_bytes and svidd's mint and first-response counters.
func (a *agentProc) sample() (usage, error) {
	u, err := procUsage(a.pid())
	if err != nil {
		return u, err
	}
	if a.metrics != "" {
		if m, err := scrape(a.metrics); err == nil {
			if v, ok := m["go_goroutines"]; ok {
				u.Goroutines = int64(v)
			}
			if v, ok := m["go_memstats_heap_inuse_bytes"]; ok {
				u.HeapKiB = int64(v / 1024)
			}
			if v, ok := m["svidd_svid_x509_mint_duration_seconds_count"]; ok {
				u.Mints = int64(v)
			}
			if v, ok := m["svidd_api_first_response_seconds_count"]; ok {
				u.FirstCount = int64(v)
				u.FirstSum = m["svidd_api_first_response_seconds_sum"]
			}
		}
	}
	return u, nil
}

// procUsage reads VmRSS and RssAnon from /proc/PID/status and utime+stime from /proc/PID/stat;
// the fields only metrics give are -1.
func procUsage(pid int) (usage, error) {
	u := usage{Goroutines: -1, HeapKiB: -1, Mints: -1, FirstCount: -1}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("reading status of pid %d: %w", pid, err)
	}
	for line := range strings.Lines(string(st)) {
		for _, m := range []struct {
			prefix string
			dst    *int64
		}{{"VmRSS:", &u.RSSKiB}, {"RssAnon:", &u.AnonKiB}} {
			if v, ok := strings.CutPrefix(line, m.prefix); ok {
				if f := strings.Fields(v); len(f) > 0 {
					*m.dst, _ = strconv.ParseInt(f[0], 10, 64)
				}
			}
		}
	}
	u.CPU, err = procCPU(pid)
	if err != nil {
		return u, err
	}
	return u, nil
}

// procCPU is a process's user+system CPU time from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading stat of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc/PID/stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc/PID/stat format")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	stt, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("unexpected /proc/PID/stat format")
	}
	return time.Duration(ut+stt) * time.Second / clkTck, nil
}

// scrape reads un-labelled samples from a Prometheus text endpoint.
func scrape(addr string) (map[string]float64, error) {
	// Uncompressed: gzip of the answer is CPU the agent would spend on the tool's behalf,
	// within the windows the tool measures (the floor serves no metrics).
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// name{labels} value: labelled samples are summed under the bare name.
		name, rest := line, ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, rest = line[:i], line[j+1:]
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if len(f) < 1 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

// freeAddr returns a 127.0.0.1 address nothing listens on right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// buildTags are the build tags `make build` uses (the Makefile's BUILDTAGS): grpcnotrace
// keeps golang.org/x/net/trace, and with it text/template's reflection, out of the binary.
const buildTags = "grpcnotrace"

// build compiles pkg of the module in the working directory into dir.
func build(dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-tags", buildTags, "-o", out, pkg)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// As `make build` does (the Makefile exports CGO_ENABLED=0), unless the caller chose.
	if _, set := os.LookupEnv("CGO_ENABLED"); !set {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s (run from the repository root): %w", pkg, err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	return out, nil
}
