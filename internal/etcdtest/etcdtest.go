// Package etcdtest runs real etcd clusters for tests: one or three members on loopback, on
// free ports, in a temp dir, started from the etcd server that test/tools/etcd builds. A test
// can kill and restart a member, stop and start the whole cluster, cut one client off with a
// Proxy, and ask for client-certificate TLS (etcd's --client-cert-auth, a CN per user) for
// the registry's own authentication. Every process is stopped when the test ends.
package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options shape a cluster.
type Options struct {
	// Members is 1 (the default) or 3.
	Members int
	// TLS serves clients over TLS and requires a client certificate signed by the cluster's
	// test CA (Cluster.CA); Cluster.ClientTLS issues one per user.
	TLS bool
}

// Cluster is a running etcd cluster. Its methods are safe for one test goroutine.
type Cluster struct {
	t       testing.TB
	bin     string
	dir     string
	members []*Member
	// CA is the test CA clients trust and sign their certificates with (nil without TLS).
	CA *CA
}

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	dataDir   string
	logPath   string
	args      []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the test etcd server's path, building it on first use (test/tools/etcd/
// build.sh; `make test` builds it beforehand, so this is then a cache hit).
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("SVIDD_ETCD"); p != "" {
			binPath = p
			return
		}
		root, err := repoRoot()
		if err != nil {
			binErr = err
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command(filepath.Join(root, "test/tools/etcd/build.sh"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("building the test etcd: %v: %s", err, stderr.Bytes())
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// repoRoot finds the directory holding svidd's go.mod above the working directory (a test
// runs in its package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/svidd/svidd\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("etcdtest: svidd's go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Start starts a cluster and waits until every member reports healthy. It is stopped and its
// files removed when the test ends.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	n := opts.Members
	if n == 0 {
		n = 1
	}
	if n != 1 && n != 3 {
		t.Fatalf("etcdtest: %d members; use 1 or 3", n)
	}
	c := &Cluster{t: t, bin: Binary(t), dir: t.TempDir()}
	scheme := "http"
	if opts.TLS {
		c.CA = NewCA(t, c.dir)
		scheme = "https"
	}
	ports := freePorts(t, 2*n)
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
		m.dataDir = filepath.Join(c.dir, m.Name)
		m.logPath = filepath.Join(c.dir, m.Name+".log")
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", m.dataDir,
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "svidd-test",
			// Loopback: short timings keep elections (after a kill) well under a second.
			"--heartbeat-interval", "50",
			"--election-timeout", "500",
			// A killed process keeps what it wrote (the page cache survives it); only power
			// loss would not, which no test simulates. fsync would make tests slow on a busy
			// machine.
			"--unsafe-no-fsync",
			"--log-level", "warn",
		}
		if opts.TLS {
			m.args = append(m.args,
				"--cert-file", c.CA.ServerCert, "--key-file", c.CA.ServerKey,
				"--trusted-ca-file", c.CA.CertFile, "--client-cert-auth")
		}
	}
	t.Cleanup(c.cleanup)
	for _, m := range c.members {
		c.startMember(m)
	}
	c.WaitHealthy()
	return c
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Members returns the cluster's members.
func (c *Cluster) Members() []*Member { return c.members }

func (c *Cluster) startMember(m *Member) {
	c.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		c.t.Fatalf("etcdtest: member %s is already running", m.Name)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the test binary dies without its cleanups, the kernel ends etcd too: no member is
	// left listening on a port after a crashed test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("etcdtest: starting %s: %v", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	m.cmd, m.done = cmd, done
}

// stopMember sends sig and waits for the member to exit (SIGKILL after 10 s).
func (c *Cluster) stopMember(m *Member, sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd, m.done = nil, nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Kill ends member i with SIGKILL.
func (c *Cluster) Kill(i int) { c.stopMember(c.members[i], syscall.SIGKILL) }

// Restart starts member i again (after Kill) with its data and ports, and waits until the
// cluster is healthy.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.startMember(c.members[i])
	c.WaitHealthy()
}

// Stop stops every member (SIGTERM); the data stays for Start.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Go(func() { c.stopMember(m, syscall.SIGTERM) })
	}
	wg.Wait()
}

// Start starts every stopped member again and waits until the cluster is healthy.
func (c *Cluster) Start() {
	c.t.Helper()
	for _, m := range c.members {
		m.mu.Lock()
		running := m.cmd != nil
		m.mu.Unlock()
		if !running {
			c.startMember(m)
		}
	}
	c.WaitHealthy()
}

func (c *Cluster) cleanup() {
	c.Stop()
	if c.t.Failed() {
		for _, m := range c.members {
			if b, err := os.ReadFile(m.logPath); err == nil && len(b) > 0 {
				c.t.Logf("etcd member %s log (tail):\n%s", m.Name, tail(b, 4096))
			}
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// WaitHealthy waits up to 30 s until every running member answers /health with true (it has
// a leader and no alarm).
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	if c.CA != nil {
		cfg, err := c.ClientTLS("root")
		if err != nil {
			c.t.Fatal(err)
		}
		hc.Transport = &http.Transport{TLSClientConfig: cfg}
	}
	defer hc.CloseIdleConnections()
	for _, m := range c.members {
		m.mu.Lock()
		done := m.done
		m.mu.Unlock()
		if done == nil {
			continue
		}
		var last error
		for {
			select {
			case <-done:
				c.t.Fatalf("etcdtest: member %s exited while starting; see %s", m.Name, m.logPath)
			default:
			}
			if last = healthy(ctx, hc, m.ClientURL); last == nil {
				break
			}
			select {
			case <-ctx.Done():
				c.t.Fatalf("etcdtest: member %s not healthy after 30 s: %v", m.Name, last)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

func healthy(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Contains(b.Bytes(), []byte(`"health":"true"`)) {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b.Bytes()))
	}
	return nil
}

// ClientTLS returns a TLS config that trusts the cluster's CA and presents a client
// certificate with CN = user, which etcd's authentication takes as the user name.
func (c *Cluster) ClientTLS(user string) (*tls.Config, error) {
	if c.CA == nil {
		return nil, errors.New("etcdtest: cluster started without TLS")
	}
	return c.CA.ClientConfig(user)
}

// freePorts reserves n distinct loopback ports by listening on port 0, then releases them for
// etcd. Another process could take one in between; on loopback in a test run that is rare,
// and a member that cannot bind fails its start loudly.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var lns []net.Listener
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		port, _ := strconv.Atoi(p)
		ports = append(ports, port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}
