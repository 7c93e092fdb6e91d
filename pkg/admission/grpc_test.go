package admission

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/peercred"
)

// server is a gRPC server (the health service stands in for SDS: it has a unary call and a
// stream) on a peercred socket, limited by a Controller, as the agent wires it.
type server struct {
	path string
	c    *Controller
}

func startServer(t *testing.T, cfg Config) *server {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(proctest.ShortDir(t), "api.sock")
	ln, err := peercred.Listen(path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(c.ServerOptions(), grpc.Creds(peercred.TransportCredentials()))...)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(c.Listener(ln)) }()
	t.Cleanup(func() { gs.Stop(); <-done; ln.Close() })
	return &server{path: path, c: c}
}

func (s *server) client(t *testing.T) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+s.path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// waitOpen waits until uid 0 (this process) has conns and streams open on the server side.
func (s *server) waitOpen(t *testing.T, conns, streams int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, st := s.c.Open(uint32(os.Geteuid()))
		if c == conns && st == streams {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("open = %d connections, %d streams; want %d, %d", c, st, conns, streams)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// watch opens a health Watch stream and waits for its first response.
func watch(ctx context.Context, hc healthpb.HealthClient) (context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return cancel, nil
}

func wantExhausted(t *testing.T, err error, msg string) {
	t.Helper()
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), msg) {
		t.Fatalf("err = %v, want ResourceExhausted containing %q", err, msg)
	}
}

// TestOpenStreamCapAcrossConnections: the cap is per uid, whatever connection the streams
// use; a refused stream fails at once; a stream that ends frees its slot.
func TestOpenStreamCapAcrossConnections(t *testing.T) {
	s := startServer(t, Config{MaxOpenStreamsPerUID: 3})
	ctx := ctxFor(t)
	hc1, hc2 := s.client(t), s.client(t)
	uid := os.Geteuid()

	var cancels []context.CancelFunc
	for i, hc := range []healthpb.HealthClient{hc1, hc1, hc2} {
		cancel, err := watch(ctx, hc)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		cancels = append(cancels, cancel)
	}
	s.waitOpen(t, 2, 3)
	start := time.Now()
	_, err := watch(ctx, hc2)
	wantExhausted(t, err, fmt.Sprintf("too many streams from uid %d: 3 open", uid))
	_, err = hc2.Check(ctx, &healthpb.HealthCheckRequest{})
	wantExhausted(t, err, "too many streams")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusals took %v", d)
	}

	cancels[0]()
	s.waitOpen(t, 2, 2)
	if _, err := hc2.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("unary call after a stream ended: %v", err)
	}
	s.waitOpen(t, 2, 2) // the unary call released its slot too
	cancel, err := watch(ctx, hc2)
	if err != nil {
		t.Fatalf("stream after another ended: %v", err)
	}
	cancel()
	cancels[1]()
	cancels[2]()
	s.waitOpen(t, 2, 0)
}

func TestStreamRate(t *testing.T) {
	s := startServer(t, Config{StreamsPerSecond: 0.001, StreamBurst: 5})
	ctx := ctxFor(t)
	hc := s.client(t)
	for i := range 5 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	wantExhausted(t, err, "too many streams from uid")
	_, err = watch(ctx, hc)
	wantExhausted(t, err, "more than 0.001 new per second")
	s.waitOpen(t, 1, 0)
}

func TestMessageBound(t *testing.T) {
	s := startServer(t, Config{MaxMessageBytes: 64 << 10})
	ctx := ctxFor(t)
	hc := s.client(t)
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: strings.Repeat("x", 65<<10)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("65 KiB request with a 64 KiB bound: %v, want ResourceExhausted", err)
	}
	// Under the bound the call reaches the handler (which knows no such service).
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: strings.Repeat("x", 60<<10)})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("60 KiB request: %v, want the handler's NotFound", err)
	}
}

// TestConnectionLimits: a connection over its uid's limits is closed right after accept,
// before the HTTP/2 handshake; closing a connection frees its slot; another uid is served.
func TestConnectionLimitsOnSocket(t *testing.T) {
	s := startServer(t, Config{ConnectionsPerSecond: 0.001, ConnectionBurst: 3, MaxOpenConnectionsPerUID: 2})

	a, b := rawDial(t, s.path), rawDial(t, s.path)
	for i, c := range []net.Conn{a, b} {
		if err := readSome(c); err != nil {
			t.Fatalf("connection %d: %v, want the server's HTTP/2 settings", i, err)
		}
	}
	s.waitOpen(t, 2, 0)
	start := time.Now()
	if err := readSome(rawDial(t, s.path)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("third open connection: %v, want it closed (open cap 2)", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v", d)
	}
	if os.Geteuid() == 0 {
		// uid 0 is over its limits; uid 1001 is not affected.
		if code := connectAs(t, s.path, 1001); code != 0 {
			t.Fatalf("uid 1001 while uid 0 is refused: helper exit %d, want 0 (served)", code)
		}
	}
	a.Close()
	s.waitOpen(t, 1, 0)
	if err := readSome(rawDial(t, s.path)); err != nil {
		t.Fatalf("after a connection closed: %v, want served (one token left)", err)
	}
	s.waitOpen(t, 2, 0)
	b.Close()
	s.waitOpen(t, 1, 0)
	if err := readSome(rawDial(t, s.path)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("fourth connection with the burst spent: %v, want it closed (rate)", err)
	}
}

func rawDial(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readSome reads the first bytes the server sends: a gRPC server sends its HTTP/2 SETTINGS
// at once; a refused connection is closed.
func readSome(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [9]byte
	_, err := io.ReadFull(c, b[:])
	return err
}

// Helper child: connects to ADMISSION_HELPER_SOCK and exits 0 if the server speaks, 4 if it
// closes the connection.
const helperEnv = "ADMISSION_HELPER_SOCK"

func TestHelperConnect(t *testing.T) {
	c := proctest.HelperConn(helperEnv)
	if c == nil {
		return
	}
	if err := readSome(c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
	os.Exit(0)
}

func connectAs(t *testing.T, sock string, uid uint32) int {
	t.Helper()
	cmd := proctest.HelperCommand(t, &syscall.Credential{Uid: uid, Gid: uid}, []string{helperEnv + "=" + sock}, "-test.run=^TestHelperConnect$")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		t.Logf("helper: %s", stderr.String())
		return ee.ExitCode()
	default:
		t.Fatal(err)
		return -1
	}
}

func TestMain(m *testing.M) { proctest.Main(m) }
