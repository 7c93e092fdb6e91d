package test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/test/envoy"
)

// hygieneCycles is how many streams TestHygieneStreamCycles opens and closes. The full
// 100,000 run without the race detector (`go test ./test -run Hygiene`); under -race both
// svidd and the test are ten times slower, so the race run does a tenth of them, which still
// shows a leak of 1.6 KiB or one goroutine per thousand streams.
func hygieneCycles() int {
	if raceEnabled {
		return 10_000
	}
	return 100_000
}

// freeLocalAddr returns a loopback address nothing listens on right now.
func freeLocalAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// quietConfig is a config for tests that open streams by the tens of thousands: metrics on a
// known address (the "metrics serving" line is not logged at level error) and, where this
// svidd has per-uid limits, limits above what the test asks of it.
func quietConfig(t *testing.T) (agentOpt, string) {
	t.Helper()
	addr := freeLocalAddr(t)
	hcl := fmt.Sprintf("telemetry {\n  prometheus {\n    address = %q\n  }\n}\n", addr)
	if bytes.Contains(conf.DefaultFile, []byte("limits {")) {
		hcl += "limits {\n  streams_per_second = 1000000\n  stream_burst = 1000000\n}\n"
	}
	return withConfig(hcl), addr
}

// usage is what svidd holds: goroutines and heap from its /metrics, open fds from /proc.
type usage struct {
	goroutines, fds int
	heap            float64
}

func (u usage) String() string {
	return fmt.Sprintf("%d goroutines, %d fds, %.1f MiB heap in use", u.goroutines, u.fds, u.heap/(1<<20))
}

func measure(t *testing.T, a *agent, metricsAddr string) usage {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var u usage
	found := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "go_goroutines":
			n, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatal(err)
			}
			u.goroutines = int(n)
			found++
		case "go_memstats_heap_inuse_bytes":
			if u.heap, err = strconv.ParseFloat(value, 64); err != nil {
				t.Fatal(err)
			}
			found++
		}
	}
	if found != 2 {
		t.Fatalf("/metrics lacks go_goroutines or go_memstats_heap_inuse_bytes")
	}
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(a.cmd.Process.Pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	u.fds = len(fds)
	return u
}

// settle waits (up to 10 s) until svidd's goroutines and fds are back within tolerance of
// base — streams are torn down asynchronously — and returns the last measurement.
func settle(t *testing.T, a *agent, metricsAddr string, base usage, goroutineTol, fdTol int) usage {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u := measure(t, a, metricsAddr)
		if u.goroutines <= base.goroutines+goroutineTol && u.fds <= base.fds+fdTol || time.Now().After(deadline) {
			return u
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cycleKind is one kind of stream the hygiene test opens and closes.
type cycleKind int

const (
	entitled   cycleKind = iota // gets its SVID
	noEntry                     // attested, entitled to nothing: Workload API, PermissionDenied
	goneCaller                  // its process exited: attestation fails, Unavailable
)

// cycle opens one SDS stream, sends the first request, waits for the first response (or the
// error a gone caller gets) and closes the stream: half by cancelling it (RST_STREAM), half by
// closing its send side as Envoy does on shutdown. Every fifth is a DeltaSecrets stream. A
// caller with no entry gets no SDS response at all (not even a bundle), so its streams are
// Workload API FetchX509SVID streams, which end at once with PermissionDenied.
func cycle(ctx context.Context, cc *grpc.ClientConn, n int64, kind cycleKind, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if kind == noEntry {
		st, err := workload.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"), &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		r, err := st.Recv()
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("FetchX509SVID from a caller with no entry: %d SVIDs, %v; want PermissionDenied", len(r.GetSvids()), err)
		}
		return nil
	}
	cli := secretv3.NewSecretDiscoveryServiceClient(cc)
	var (
		resources int
		err       error
		closeSend func() error
		recv      func() error
	)
	if n%5 == 0 {
		var st grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]
		if st, err = cli.DeltaSecrets(ctx); err != nil {
			return err
		}
		err = st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: hygieneNode, TypeUrl: envoy.SecretTypeURL, ResourceNamesSubscribe: []string{name}})
		if err == nil {
			var r *discoveryv3.DeltaDiscoveryResponse
			r, err = st.Recv()
			resources = len(r.GetResources())
		}
		closeSend, recv = st.CloseSend, func() error { _, err := st.Recv(); return err }
	} else {
		var st grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
		if st, err = cli.StreamSecrets(ctx); err != nil {
			return err
		}
		err = st.Send(&discoveryv3.DiscoveryRequest{Node: hygieneNode, TypeUrl: envoy.SecretTypeURL, ResourceNames: []string{name}})
		if err == nil {
			var r *discoveryv3.DiscoveryResponse
			r, err = st.Recv()
			resources = len(r.GetResources())
		}
		closeSend, recv = st.CloseSend, func() error { _, err := st.Recv(); return err }
	}
	switch {
	case kind == goneCaller:
		if status.Code(err) != codes.Unavailable {
			return fmt.Errorf("stream from an exited caller: %d resources, %v; want Unavailable", resources, err)
		}
		return nil
	case err != nil:
		return err
	case resources != 1:
		return fmt.Errorf("first response has %d resources, want 1 (%s)", resources, name)
	}
	if n%2 == 0 {
		return nil // cancel
	}
	if err := closeSend(); err != nil {
		return err
	}
	if err := recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after CloseSend: %v, want EOF", err)
	}
	return nil
}

var hygieneNode = envoy.NewNode("hygiene")

// TestHygieneStreamCycles opens and closes 100,000 streams (see hygieneCycles for -race):
// SDS SotW and delta streams from entitled callers (about 40%: two root connections and two
// from uid 1005), Workload API streams from uid 1003, which has no entry (about 30%), and SDS
// streams on two connections whose process (uid 1004) has exited, so attestation fails
// (about 30%) — four workers on each of the eight connections. Afterwards svidd's goroutines,
// open fds and heap are where they were before, within a tolerance that a per-stream leak
// would blow through: +10 goroutines, +4 fds, heap in use +50% or +16 MiB (whichever is more;
// 16 MiB over 100,000 streams is 168 bytes each). Once every connection is closed,
// goroutines and fds are back to what svidd had before the first connection.
func TestHygieneStreamCycles(t *testing.T) {
	requireRoot(t)
	proctest.NoRaceExitDelay(t)
	cfg, metricsAddr := quietConfig(t)
	a := startAgent(t, cfg, withArgs("-logLevel", "error"))
	const id = "spiffe://example.org/hygiene"
	a.createEntry(id, "-selector", "unix:uid:0")
	a.createEntry(id, "-selector", "unix:uid:1005")
	ctx := ctxFor(t, 5*time.Minute)
	initial := measure(t, a, metricsAddr)

	type lane struct {
		kind cycleKind
		cc   *grpc.ClientConn
		name string
	}
	var lanes []lane
	for range 2 {
		cc, err := envoy.Dial(ctx, a.api)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		lanes = append(lanes, lane{entitled, cc, id})
	}
	for _, d := range []struct {
		uid  uint32
		kind cycleKind
		name string
	}{{1005, entitled, id}, {1003, noEntry, ""}, {1004, goneCaller, id}} {
		dn := donateConns(t, d.uid, a.api, 2)
		for _, c := range dn.conns {
			cc := grpcOver(t, c)
			if err := cc.Invoke(ctx, "/grpc.health.v1.Health/Check", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
				t.Fatalf("health check on a donated connection: %v", err) // svidd accepted it
			}
			lanes = append(lanes, lane{d.kind, cc, d.name})
		}
		if d.kind == goneCaller {
			dn.exit(t)
		}
	}

	run := func(total int64) (time.Duration, [3]int64) {
		var (
			next   atomic.Int64
			counts [3]atomic.Int64
			wg     sync.WaitGroup
			errc   = make(chan error, 1)
		)
		const workersPerConn = 4
		begin := time.Now()
		for _, l := range lanes {
			for range workersPerConn {
				wg.Go(func() {
					for {
						n := next.Add(1)
						if n > total {
							return
						}
						if err := cycle(ctx, l.cc, n, l.kind, l.name); err != nil {
							select {
							case errc <- fmt.Errorf("cycle %d (kind %d): %w", n, l.kind, err):
							default:
							}
							next.Store(total) // stop everyone
							return
						}
						counts[l.kind].Add(1)
					}
				})
			}
		}
		wg.Wait()
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
		return time.Since(begin), [3]int64{counts[0].Load(), counts[1].Load(), counts[2].Load()}
	}

	// Warm up (pools, caches, the runtime's own growth), then measure.
	run(2000)
	time.Sleep(200 * time.Millisecond) // let the warm-up streams' teardown finish
	base := measure(t, a, metricsAddr)
	total := hygieneCycles()
	took, counts := run(int64(total))
	t.Logf("%d stream cycles in %v (%.0f/s): %d entitled, %d with no entry, %d from an exited caller",
		total, took.Round(time.Millisecond), float64(total)/took.Seconds(), counts[entitled], counts[noEntry], counts[goneCaller])
	for k, c := range counts {
		if c < int64(total)/8 {
			t.Errorf("only %d cycles of kind %d", c, k)
		}
	}
	after := settle(t, a, metricsAddr, base, 10, 4)
	t.Logf("before: %v; after: %v", base, after)
	if after.goroutines > base.goroutines+10 {
		t.Errorf("goroutines grew from %d to %d", base.goroutines, after.goroutines)
	}
	if after.fds > base.fds+4 {
		t.Errorf("open fds grew from %d to %d", base.fds, after.fds)
	}
	if limit := max(base.heap*1.5, base.heap+16<<20); after.heap > limit {
		t.Errorf("heap in use grew from %.1f MiB to %.1f MiB (limit %.1f MiB)", base.heap/(1<<20), after.heap/(1<<20), limit/(1<<20))
	}

	// With every connection gone, svidd is back where it began.
	for _, l := range lanes {
		l.cc.Close()
	}
	end := settle(t, a, metricsAddr, initial, 10, 4)
	t.Logf("initially: %v; after closing every connection: %v", initial, end)
	if end.goroutines > initial.goroutines+10 || end.fds > initial.fds+4 {
		t.Errorf("after every connection closed: %v; initially %v", end, initial)
	}
}

// stallConn is a connection whose reads can be stopped: a client that stops reading its
// socket altogether, the slowest consumer there is (svidd's writes to it fill the socket
// buffer, then HTTP/2 flow control, then block).
type stallConn struct {
	net.Conn
	stalled, closed chan struct{}
	stallOnce       sync.Once
	closeOnce       sync.Once
}

func newStallConn(c net.Conn) *stallConn {
	return &stallConn{Conn: c, stalled: make(chan struct{}), closed: make(chan struct{})}
}

func (c *stallConn) Read(b []byte) (int, error) {
	select {
	case <-c.stalled:
		<-c.closed
		return 0, net.ErrClosed
	default:
	}
	return c.Conn.Read(b)
}

func (c *stallConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *stallConn) stall() { c.stallOnce.Do(func() { close(c.stalled) }) }

// TestSlowConsumerDoesNotBlockOthers: a client that opens 200 streams, each entitled to 20
// SVIDs, and then never reads again cannot hold up anyone else: every entry update still
// reaches a stream on another connection promptly, and svidd keeps answering.
func TestSlowConsumerDoesNotBlockOthers(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t, withArgs("-logLevel", "warn"))
	const id = "spiffe://example.org/pushed"
	entryID := a.createEntry(id, "-selector", "unix:uid:0")
	for i := range 19 {
		a.createEntry(fmt.Sprintf("spiffe://example.org/bulk/%d", i), "-selector", "unix:uid:0")
	}
	ctx := ctxFor(t, time.Minute)

	raw, err := net.Dial("unix", a.api)
	if err != nil {
		t.Fatal(err)
	}
	slow := newStallConn(raw)
	t.Cleanup(func() { slow.Close() })
	cc := grpcOver(t, slow)
	if err := cc.Invoke(ctx, "/grpc.health.v1.Health/Check", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	slow.stall()
	cli := secretv3.NewSecretDiscoveryServiceClient(cc)
	for range 200 {
		st, err := cli.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Wildcard: every SVID, about 50 KB a response.
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: hygieneNode, TypeUrl: envoy.SecretTypeURL}); err != nil {
			t.Fatal(err)
		}
	}

	fast := dialAgentNames(t, a, []string{id})
	if _, err := fast.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	for i := range 5 {
		dns := fmt.Sprintf("push%d.local", i)
		begin := time.Now()
		a.mustSvidctl("entry", "update", "-entryID", entryID, "-dns", dns)
		for {
			r, err := fast.RecvWithin(ctx, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r == nil {
				t.Fatalf("update %d: nothing pushed to the fast stream within 5s while a consumer is stalled", i)
			}
			if got := leafOf(t, r, id).DNSNames; len(got) == 1 && got[0] == dns {
				break
			}
		}
		slowest = max(slowest, time.Since(begin))
	}
	t.Logf("slowest update→push with a stalled consumer holding 200 streams: %v", slowest)
	if slowest > 3*time.Second {
		t.Errorf("a push took %v; want well under 3s", slowest)
	}
	// A new caller is served at once, too.
	if r, err := dialAgentNames(t, a, []string{id}).RecvWithin(ctx, 5*time.Second); err != nil || r == nil {
		t.Fatalf("new stream while a consumer is stalled: %v, %v", r, err)
	}
	a.mustSvidctl("healthcheck")
}

// TestStoreBrieflyLocked: another process holds an exclusive lock on svidd's database for
// two seconds (a backup tool, an operator's sqlite3 shell). Meanwhile reads (svidctl entry
// list, health) and serving (an open stream, a new stream) go on; a write waits for the lock
// and then succeeds (busy_timeout: a lock held past 10 s makes it fail with "database is
// locked"); after the release everything works and the write reaches the open stream.
func TestStoreBrieflyLocked(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t, withArgs("-logLevel", "warn"))
	const id = "spiffe://example.org/locked"
	a.createEntry(id, "-selector", "unix:uid:0")
	ctx := ctxFor(t, time.Minute)
	open := dialAgentNames(t, a, nil) // wildcard: sees entries added later
	if _, err := open.Recv(ctx); err != nil {
		t.Fatal(err)
	}

	db, err := sql.Open("sqlite", "file:"+filepath.Join(a.dataDir, "svidd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	const hold = 2 * time.Second
	locked := time.Now()
	released := false
	release := func() {
		if !released {
			released = true
			if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
				t.Error(err)
			}
		}
	}
	defer release()

	type result struct {
		id   string
		err  error
		done time.Time
	}
	write := make(chan result, 1)
	go func() {
		out, err := a.svidctl("entry", "create", "-spiffeID", "spiffe://example.org/during-lock", "-selector", "unix:uid:0", "-output", "json")
		r := result{err: err, done: time.Now()}
		if err == nil {
			r.id = strings.TrimSpace(out)
		}
		write <- r
	}()

	// Reads and serving while the lock is held.
	begin := time.Now()
	if out := a.mustSvidctl("entry", "list"); !strings.Contains(out, id) {
		t.Fatalf("entry list during the lock: %s", out)
	}
	a.mustSvidctl("healthcheck")
	if r, err := dialAgentNames(t, a, []string{id}).RecvWithin(ctx, 5*time.Second); err != nil || r == nil || r.Get(id) == nil {
		t.Fatalf("new stream during the lock: %v, %v", r, err)
	}
	if took := time.Since(begin); took > hold {
		t.Fatalf("reads and a new stream took %v with the store locked: they waited for the lock", took)
	}
	time.Sleep(time.Until(locked.Add(hold)))
	release()

	r := <-write
	if r.err != nil {
		t.Fatalf("the write queued behind the lock failed: %v", r.err)
	}
	if r.done.Before(locked.Add(hold)) {
		t.Fatal("the write finished while the lock was held: the test's lock did not hold")
	}
	for {
		resp, err := open.RecvWithin(ctx, 5*time.Second)
		if err != nil || resp == nil {
			t.Fatalf("the entry written after the lock never reached the open stream: %v, %v", resp, err)
		}
		if resp.Get("spiffe://example.org/during-lock") != nil {
			break
		}
	}
	a.createEntry("spiffe://example.org/after-lock", "-selector", "unix:uid:0")
}

// TestAPISocketServesNothingElse: on the api socket, where every local user may connect,
// only SDS, the Workload API and gRPC health answer. Reflection, channelz, ADS and invented
// services get Unimplemented, and the admin API (HTTP) is not reachable there. (The admin
// socket's own refusal of other uids is TestSocketPermissions in daemon_e2e_test.go.)
func TestAPISocketServesNothingElse(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t)
	a.createEntry("spiffe://example.org/x", "-selector", "unix:uid:0")
	ctx := ctxFor(t, 30*time.Second)
	cc, err := envoy.Dial(ctx, a.api)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, method := range []string{
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
		"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
		"/grpc.channelz.v1.Channelz/GetServers",
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
		"/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
		"/svidd.admin.v1.Admin/CreateEntry",
		"/grpc.health.v1.Health/Nope",
		"/SpiffeWorkloadAPI/Nope",
	} {
		t.Run(method, func(t *testing.T) {
			st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
			if err == nil {
				if err = st.SendMsg(&emptypb.Empty{}); err == nil || errors.Is(err, io.EOF) {
					err = st.RecvMsg(&emptypb.Empty{})
				}
			}
			if status.Code(err) != codes.Unimplemented {
				t.Fatalf("%s: %v; want Unimplemented", method, err)
			}
		})
	}
	// The served ones answer (so Unimplemented above is not a broken connection).
	if err := cc.Invoke(ctx, "/grpc.health.v1.Health/Check", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("health: %v", err)
	}
	if r, err := dialAgentNames(t, a, []string{"spiffe://example.org/x"}).Recv(ctx); err != nil || r.Get("spiffe://example.org/x") == nil {
		t.Fatalf("SDS: %v, %v", r, err)
	}

	// The admin API over HTTP/1.1 on the api socket: no entries come back.
	c, err := net.Dial("unix", a.api)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /v1/entries HTTP/1.1\r\nHost: svidd\r\n\r\n")
	reply, _ := io.ReadAll(c)
	if bytes.Contains(reply, []byte("200 OK")) || bytes.Contains(reply, []byte("spiffe://")) {
		t.Fatalf("the admin API answered on the api socket: %q", reply)
	}
}
