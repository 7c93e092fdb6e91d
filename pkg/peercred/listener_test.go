package peercred_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/peercred"
)

func listen(t *testing.T, path string, mode os.FileMode) *peercred.Listener {
	t.Helper()
	l, err := peercred.Listen(path, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// acceptOne accepts in the background so a failing dial cannot hang the test.
func acceptOne(t *testing.T, l *peercred.Listener) *peercred.Conn {
	t.Helper()
	type res struct {
		c   *peercred.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.AcceptPeer()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
		return nil
	}
}

// pidfdPID returns the pid a pidfd refers to, from /proc/self/fdinfo.
func pidfdPID(t *testing.T, fd int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("fd %d is not a pidfd:\n%s", fd, b)
	return 0
}

func TestPeerInProcess(t *testing.T) {
	tests := []struct {
		name                     string
		noPeerPIDFD, noPidfdOpen bool
		wantPIDFD                bool
	}{
		{"SO_PEERPIDFD", false, false, true},
		{"pidfd_open fallback", true, false, true},
		{"no pidfd", true, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(proctest.ShortDir(t), "api.sock")
			l := listen(t, path, 0o666)
			peercred.SetNoPIDFD(l, tt.noPeerPIDFD, tt.noPidfdOpen)

			client, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			c := acceptOne(t, l)
			p := c.Peer()
			if p.PID != int32(os.Getpid()) || p.UID != uint32(os.Getuid()) || p.GID != uint32(os.Getgid()) {
				t.Fatalf("peer = pid %d uid %d gid %d; want %d %d %d", p.PID, p.UID, p.GID, os.Getpid(), os.Getuid(), os.Getgid())
			}
			var fd int
			p.WithPIDFD(func(pidfd int) error { fd = pidfd; return nil })
			if got := fd >= 0; got != tt.wantPIDFD {
				t.Fatalf("pidfd = %d; want one: %v", fd, tt.wantPIDFD)
			}
			if fd >= 0 {
				if got := pidfdPID(t, fd); got != os.Getpid() {
					t.Fatalf("pidfd refers to pid %d; want %d", got, os.Getpid())
				}
			}
			// The connection works, and Close releases the pidfd.
			if _, err := client.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2)
			if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
				t.Fatalf("read %q, %v", buf, err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			p.WithPIDFD(func(pidfd int) error { fd = pidfd; return nil })
			if fd != -1 {
				t.Fatalf("pidfd after Close = %d; want -1", fd)
			}
		})
	}
}

func TestPeerOtherUID(t *testing.T) {
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	l := listen(t, path, 0o666)
	cmd, stderr := startHelper(t, path, 1001, 1001)
	c := acceptOne(t, l)
	p := c.Peer()
	if p.UID != 1001 || p.GID != 1001 || p.PID != int32(cmd.Process.Pid) {
		t.Fatalf("peer = pid %d uid %d gid %d; want %d 1001 1001", p.PID, p.UID, p.GID, cmd.Process.Pid)
	}
	p.WithPIDFD(func(fd int) error {
		if got := pidfdPID(t, fd); got != cmd.Process.Pid {
			t.Errorf("pidfd refers to %d; want %d", got, cmd.Process.Pid)
		}
		return nil
	})
	c.Write([]byte{'y'})
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v: %s", err, stderr)
	}
}

func TestListenModes(t *testing.T) {
	tests := []struct {
		name          string
		mode          os.FileMode
		otherUserDial bool
	}{
		{"api 0666", 0o666, true},
		{"admin 0600", 0o600, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The parent directory does not exist yet: Listen creates it 0755 despite the umask.
			dir := filepath.Join(proctest.ShortDir(t), "agent")
			path := filepath.Join(dir, "s.sock")
			old := syscall.Umask(0o077)
			l, err := peercred.Listen(path, tt.mode)
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != tt.mode {
				t.Fatalf("socket mode = %v; want socket %v", fi.Mode(), tt.mode)
			}
			di, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if di.Mode().Perm() != peercred.DefaultDirMode {
				t.Fatalf("dir mode = %v; want %v", di.Mode().Perm(), peercred.DefaultDirMode)
			}
			// No temporary directory is left behind.
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Fatalf("dir holds %d entries; want only the socket", len(ents))
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					// Read the child's byte first: closing a Unix socket with unread data
					// resets the connection, and the child would never see our byte.
					var b [1]byte
					c.Read(b[:])
					c.Write([]byte{'y'})
					c.Close()
				}
			}()
			cmd, stderr := startHelper(t, path, 1001, 1001)
			err = cmd.Wait()
			if tt.otherUserDial {
				if err != nil {
					t.Fatalf("uid 1001 could not use the socket: %v: %s", err, stderr)
				}
			} else if exitCode(err) != proctest.ExitDialFailed || !strings.Contains(stderr.String(), "permission denied") {
				t.Fatalf("uid 1001 dial on a %v socket: %v %s; want permission denied", tt.mode, err, stderr)
			}
		})
	}
}

func TestListenRefusals(t *testing.T) {
	dir := proctest.ShortDir(t)

	live := filepath.Join(dir, "live.sock")
	l := listen(t, live, 0o666)

	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	subdir := filepath.Join(dir, "subdir")
	if err := os.Mkdir(subdir, 0o755); err != nil {
		t.Fatal(err)
	}
	long := "/tmp/" + strings.Repeat("x", peercred.MaxPathLen-4)

	tests := []struct {
		name    string
		path    string
		want    string
		wantErr error
	}{
		{"live socket", live, "another svidd is serving on " + live, peercred.ErrInUse},
		{"regular file", regular, regular + " exists and is not a socket", nil},
		{"directory", subdir, subdir + " exists and is not a socket", nil},
		{"path too long", long, "at most 107", nil},
		{"empty path", "", "socket path is empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l2, err := peercred.Listen(tt.path, 0o666)
			if err == nil {
				l2.Close()
				t.Fatal("Listen succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q; want it to contain %q", err, tt.want)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v is not %v", err, tt.wantErr)
			}
		})
	}
	// The refused paths are untouched and the live listener still serves.
	if b, err := os.ReadFile(regular); err != nil || string(b) != "keep me" {
		t.Fatalf("regular file changed: %q %v", b, err)
	}
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", live)
	if err != nil {
		t.Fatalf("live listener stopped serving: %v", err)
	}
	c.Close()
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	// A crashed agent leaves its socket file behind.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := net.Dial("unix", path); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("stale socket dial: %v; want connection refused", err)
	}

	l := listen(t, path, 0o666)
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if c := acceptOne(t, l); c.Peer().PID != int32(os.Getpid()) {
		t.Fatalf("peer pid %d", c.Peer().PID)
	}
}

func TestCloseRemovesOnlyOwnSocket(t *testing.T) {
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	l, err := peercred.Listen(path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v; want net.ErrClosed", err)
	}

	// An agent whose socket was replaced by a successor's must not delete the successor's.
	first, err := peercred.Listen(path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	second := listen(t, path, 0o666)
	first.Close()
	go func() {
		if c, err := second.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("successor's socket gone: %v", err)
	}
	c.Close()
}

func TestAdmit(t *testing.T) {
	path := filepath.Join(proctest.ShortDir(t), "admin.sock")
	l := listen(t, path, 0o666)
	l.Admit = func(p *peercred.Peer) bool { return p.UID == 0 }
	accepted := make(chan *peercred.Conn, 2)
	go func() {
		for {
			c, err := l.AcceptPeer()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()

	cmd, stderr := startHelper(t, path, 1001, 1001)
	if err := cmd.Wait(); exitCode(err) != exitClosedByPeer {
		t.Fatalf("uid 1001 on admin socket: %v %s; want its connection closed", err, stderr)
	}
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	select {
	case c := <-accepted:
		defer c.Close()
		if c.Peer().UID != 0 || c.Peer().PID != int32(os.Getpid()) {
			t.Fatalf("accepted uid %d pid %d; want only root's connection from this process", c.Peer().UID, c.Peer().PID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("root's connection was not accepted")
	}
	select {
	case c := <-accepted:
		t.Fatalf("unexpected second connection from uid %d", c.Peer().UID)
	default:
	}
}

type healthServer struct {
	healthpb.UnimplementedHealthServer
	peers chan *peercred.Peer
}

func (h *healthServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p, ok := peercred.FromContext(ctx)
	if !ok {
		p = nil
	}
	h.peers <- p
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func TestGRPCFromContext(t *testing.T) {
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	l := listen(t, path, 0o666)
	srv := grpc.NewServer(grpc.Creds(peercred.TransportCredentials()))
	hs := &healthServer{peers: make(chan *peercred.Peer, 4)}
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Stop()
		<-done
	}()

	for _, name := range []string{"insecure client", "peercred client"} {
		t.Run(name, func(t *testing.T) {
			creds := insecure.NewCredentials()
			if name == "peercred client" {
				creds = peercred.TransportCredentials()
			}
			cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for range 2 { // two RPCs on one connection see the same Peer
				resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
				if err != nil {
					t.Fatal(err)
				}
				if resp.Status != healthpb.HealthCheckResponse_SERVING {
					t.Fatalf("status %v", resp.Status)
				}
			}
			p1, p2 := <-hs.peers, <-hs.peers
			if p1 == nil {
				t.Fatal("FromContext found no peer")
			}
			if p1 != p2 {
				t.Fatal("two RPCs on one connection saw different Peers")
			}
			if p1.PID != int32(os.Getpid()) || p1.UID != uint32(os.Getuid()) {
				t.Fatalf("peer pid %d uid %d", p1.PID, p1.UID)
			}
		})
	}
}

func TestServerHandshakeRefusesForeignConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := peercred.TransportCredentials().ServerHandshake(a); err == nil {
		t.Fatal("handshake on a non-peercred connection succeeded")
	}
	if _, ok := peercred.FromContext(context.Background()); ok {
		t.Fatal("FromContext found a peer in an empty context")
	}
	tc := peercred.TransportCredentials()
	if tc.Info().SecurityProtocol != "peercred" || tc.Clone().Info() != tc.Info() || tc.OverrideServerName("x") != nil {
		t.Fatal("Info/Clone/OverrideServerName")
	}
}

// TestServerHandshakeConn: the connection the handshake hands gRPC reads, writes and closes
// the accepted one (Close releases the peer's pidfd), and offers no SyscallConn, so gRPC does
// not probe socket options for channelz at every accept.
func TestServerHandshakeConn(t *testing.T) {
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	l := listen(t, path, 0o666)
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c := acceptOne(t, l)
	hc, ai, err := peercred.TransportCredentials().ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	if ai.(peercred.AuthInfo).Peer != c.Peer() {
		t.Fatal("AuthInfo does not carry the connection's Peer")
	}
	if _, ok := hc.(syscall.Conn); ok {
		t.Fatal("handshake connection offers SyscallConn")
	}
	if _, err := client.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if _, err := hc.Write([]byte("yo")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "yo" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	if err := hc.Close(); err != nil {
		t.Fatal(err)
	}
	fd := 0
	c.Peer().WithPIDFD(func(pidfd int) error { fd = pidfd; return nil })
	if fd != -1 {
		t.Fatalf("pidfd after Close = %d; want -1", fd)
	}
}
