package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/svidd/svidd/test/envoy"
)

// maxEvents bounds the change times kept per stream (a long run with short TTLs rotates
// often); awaits only ever look at recent ones.
const maxEvents = 64

// worker drives the streams of one uid: it runs as that uid (so the agent's SO_PEERCRED sees
// it), opens the connections and streams the coordinator assigns, and reports timings.
type worker struct {
	ctx  context.Context
	spec workerSpec

	outMu sync.Mutex
	out   *bufio.Writer

	conns   []*grpc.ClientConn
	streams []*wstream
}

// wstream is one SDS stream and the times its SVID or bundle changed.
type wstream struct {
	spec streamSpec

	mu       sync.Mutex
	sotw     *sdsStream
	served   bool
	certAt   []int64 // wall ns of each response whose SVID differed from the last one
	bundleAt []int64 // same for the trust bundle
	certH    uint64
	bundleH  uint64
}

// runWorker serves commands from in until "close" or EOF (the coordinator is gone). It never
// outlives its coordinator: EOF on stdin ends it.
func runWorker(in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &worker{ctx: ctx, out: bufio.NewWriterSize(out, 64<<10)}
	defer w.closeAll()
	dec := json.NewDecoder(bufio.NewReaderSize(in, 1<<20))
	for {
		var c command
		if err := dec.Decode(&c); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading command: %w", err)
		}
		var err error
		switch c.Cmd {
		case "connect":
			err = w.connect(c.Socket, c.Conns)
		case "spec":
			err = w.setup(*c.Spec, time.Duration(c.TimeoutMS)*time.Millisecond)
		case "open":
			w.open(time.Duration(c.TimeoutMS) * time.Millisecond)
		case "await":
			w.await(c.Kind, c.Since, time.Duration(c.TimeoutMS)*time.Millisecond)
		case "probe":
			w.probe(time.Duration(c.TimeoutMS) * time.Millisecond)
		case "churn":
			w.churn(c.Rate, time.Duration(c.DurationMS)*time.Millisecond, time.Duration(c.TimeoutMS)*time.Millisecond)
		case "coldprobe":
			w.coldProbe(time.Duration(c.TimeoutMS) * time.Millisecond)
		case "close":
			return nil
		default:
			err = fmt.Errorf("unknown command %q", c.Cmd)
		}
		if err != nil {
			w.emit(event{T: evError, Err: err.Error()}, true)
			return err
		}
	}
}

func (w *worker) emit(e event, flush bool) {
	b, _ := json.Marshal(e)
	w.outMu.Lock()
	defer w.outMu.Unlock()
	w.out.Write(b)
	w.out.WriteByte('\n')
	if flush {
		w.out.Flush()
	}
}

func (w *worker) closeAll() {
	for _, s := range w.streams {
		s.mu.Lock()
		sotw := s.sotw
		s.mu.Unlock()
		if sotw != nil {
			sotw.close()
		}
	}
	for _, c := range w.conns {
		c.Close()
	}
	w.outMu.Lock()
	w.out.Flush()
	w.outMu.Unlock()
}

// setup dials every connection and waits until each is ready, so the burst that follows
// measures streams, not connection set-up.
func (w *worker) setup(spec workerSpec, timeout time.Duration) error {
	w.spec = spec
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	w.conns = make([]*grpc.ClientConn, spec.Conns)
	errs := make(chan error, spec.Conns)
	for i := range w.conns {
		var c *grpc.ClientConn
		var err error
		if spec.InheritedConns {
			c, err = inheritedConn(3 + i)
		} else {
			c, err = envoy.Dial(ctx, spec.Socket)
		}
		if err != nil {
			return err
		}
		w.conns[i] = c
		go func() { errs <- waitReady(ctx, c) }()
	}
	for range w.conns {
		if err := <-errs; err != nil {
			return fmt.Errorf("connecting to %s: %w", spec.Socket, err)
		}
	}
	for _, ss := range spec.Streams {
		w.streams = append(w.streams, &wstream{spec: ss})
	}
	w.emit(event{T: evReady}, true)
	return nil
}

// inheritedConn is a gRPC client connection over an already connected Unix socket, inherited
// as descriptor fd. It cannot redial: if the connection breaks, its streams fail, and the
// run reports them.
func inheritedConn(fd int) (*grpc.ClientConn, error) {
	f := os.NewFile(uintptr(fd), fmt.Sprintf("conn-%d", fd))
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("inherited connection %d: %w", fd, err)
	}
	var once sync.Once
	dial := func(context.Context, string) (net.Conn, error) {
		var c net.Conn
		once.Do(func() { c = nc })
		if c == nil {
			return nil, errors.New("inherited connection already used")
		}
		return c, nil
	}
	c, err := grpc.NewClient("passthrough:///svidd", grpc.WithContextDialer(dial), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.Connect()
	return c, nil
}

// connect is the connector's job: as this uid, make n connections to the agent's socket and
// hand each descriptor to the coordinator over descriptor 3. The kernel records the peer
// credentials (this pid and uid) at connect, so the agent attests this process however the
// descriptor travels; the connector stays alive until the coordinator closes its stdin so
// that the attestation finds it.
func (w *worker) connect(socket string, n int) error {
	for i := range n {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: socket}); err != nil {
			syscall.Close(fd)
			return fmt.Errorf("connecting to %s (%d of %d): %w", socket, i+1, n, err)
		}
		err = syscall.Sendmsg(3, []byte{0}, syscall.UnixRights(fd), nil, 0)
		syscall.Close(fd)
		if err != nil {
			return fmt.Errorf("handing over connection: %w", err)
		}
	}
	w.emit(event{T: evConnected}, true)
	return nil
}

func waitReady(ctx context.Context, c *grpc.ClientConn) error {
	for {
		st := c.GetState()
		if st == connectivity.Ready {
			return nil
		}
		if !c.WaitForStateChange(ctx, st) {
			return fmt.Errorf("connection still %s: %w", st, ctx.Err())
		}
	}
}

func node(id int) *corev3.Node { return envoy.NewNode(fmt.Sprintf("load-%d", id)) }

// open starts every stream at once and reports each one's time to first secret. Each stream
// then goes on receiving (and ACKing) on the same goroutine until it ends.
func (w *worker) open(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	var wg sync.WaitGroup
	for _, s := range w.streams {
		wg.Add(1)
		go s.run(w.ctx, w.conns[s.spec.Conn], w.spec.TrustDomain, deadline, func(lat time.Duration, at int64, err error) {
			e := event{T: evFirst, Stream: s.spec.ID, LatNS: int64(lat), At: at}
			if err != nil {
				e.Err = err.Error()
			}
			w.emit(e, false)
			wg.Done()
		})
	}
	wg.Wait()
	w.emit(event{T: evOpened, CPUNS: selfCPU()}, true)
}

// run opens the stream and waits for its first SVID (until deadline), reporting the outcome
// to first exactly once (latency from open, wall time of the SVID), then keeps receiving until
// the stream ends, recording every change.
func (s *wstream) run(ctx context.Context, conn *grpc.ClientConn, td string, deadline time.Time, first func(time.Duration, int64, error)) {
	start := time.Now()
	sotw, err := openSDS(ctx, conn, node(s.spec.ID), []string{s.spec.SPIFFEID, td})
	if err != nil {
		first(0, 0, err)
		return
	}
	s.mu.Lock()
	s.sotw = sotw
	s.mu.Unlock()
	giveUp := time.AfterFunc(time.Until(deadline), sotw.close)
	for {
		resp, now, err := sotw.recv()
		if err != nil {
			if errors.Is(err, envoy.ErrInvalid) {
				continue // NACKed, as Envoy would; the next response may be good
			}
			giveUp.Stop()
			if !s.isServed() {
				first(0, 0, fmt.Errorf("waiting for first secret: %w", err))
			}
			return
		}
		if s.record(resp, td, now.UnixNano()) && !s.isServed() {
			giveUp.Stop()
			s.mu.Lock()
			s.served = true
			s.mu.Unlock()
			first(now.Sub(start), now.UnixNano(), nil)
		}
	}
}

func (s *wstream) isServed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// record notes the SVID and bundle changes in resp; it reports whether resp holds the SVID.
func (s *wstream) record(resp *envoy.Response, td string, at int64) bool {
	cert := resp.Get(s.spec.SPIFFEID).GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	bundle := resp.Get(td).GetValidationContext().GetTrustedCa().GetInlineBytes()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(cert) > 0 {
		if h := hash(cert); h != s.certH {
			s.certH = h
			s.certAt = appendBounded(s.certAt, at)
		}
	}
	if len(bundle) > 0 {
		if h := hash(bundle); h != s.bundleH {
			s.bundleH = h
			s.bundleAt = appendBounded(s.bundleAt, at)
		}
	}
	return len(cert) > 0
}

func hash(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

func appendBounded(s []int64, v int64) []int64 {
	if len(s) >= maxEvents {
		s = append(s[:0], s[len(s)-maxEvents+1:]...)
	}
	return append(s, v)
}

// firstAfter returns the first change of kind later than since, or 0.
func (s *wstream) firstAfter(kind string, since int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.certAt
	if kind == "bundle" {
		ts = s.bundleAt
	}
	for _, t := range ts {
		if t > since {
			return t
		}
	}
	return 0
}

// await waits until every served stream has seen a change of kind after since (or timeout),
// then reports when each one saw it. The poll only decides when to report; the times come
// from the receive loops.
func (w *worker) await(kind string, since int64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		done := true
		for _, s := range w.streams {
			s.mu.Lock()
			served := s.served
			s.mu.Unlock()
			if served && s.firstAfter(kind, since) == 0 {
				done = false
				break
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	for _, s := range w.streams {
		s.mu.Lock()
		served := s.served
		s.mu.Unlock()
		e := event{T: evPush, Stream: s.spec.ID, At: s.firstAfter(kind, since)}
		if !served {
			e.Err = "not served"
		}
		w.emit(e, false)
	}
	w.emit(event{T: evAwaited, CPUNS: selfCPU()}, true)
}

// firstSecret opens one stream on conn for ss's SPIFFE ID and waits for the SVID (until ctx
// ends); it returns when the SVID was received and validated. It closes the stream.
func (w *worker) firstSecret(ctx context.Context, conn grpc.ClientConnInterface, ss streamSpec, id int) (time.Time, error) {
	s, err := openSDS(ctx, conn, node(id), []string{ss.SPIFFEID, w.spec.TrustDomain})
	if err != nil {
		return time.Time{}, err
	}
	defer s.close()
	for {
		resp, at, err := s.recv()
		if err != nil {
			if errors.Is(err, envoy.ErrInvalid) {
				continue
			}
			if ctx.Err() != nil {
				return time.Time{}, ctx.Err()
			}
			return time.Time{}, err
		}
		if resp.Get(ss.SPIFFEID).GetTlsCertificate() != nil {
			return at, nil
		}
	}
}

// probe is a fresh caller: a new connection and one stream, timed from dial to first SVID.
func (w *worker) probe(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	start := time.Now()
	e := event{T: evProbe}
	conn, err := envoy.Dial(ctx, w.spec.Socket)
	if err == nil {
		var at time.Time
		at, err = w.firstSecret(ctx, conn, w.spec.Streams[0], -1)
		conn.Close()
		e.LatNS = int64(at.Sub(start))
	}
	if err != nil {
		e.Err = err.Error()
	}
	w.emit(e, true)
}

// churn opens rate streams per second on the existing connections for d, each waiting for
// its first SVID and then closing, as Envoy does when listeners come and go.
func (w *worker) churn(rate float64, d, timeout time.Duration) {
	if rate <= 0 || d <= 0 {
		w.emit(event{T: evChurn}, true)
		return
	}
	var (
		mu     sync.Mutex
		lats   []int64
		failed int
		wg     sync.WaitGroup
	)
	start := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= d {
			break
		}
		time.Sleep(time.Until(at))
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(w.ctx, timeout)
			defer cancel()
			t0 := time.Now()
			// Round robin over the streams' (connection, SPIFFE ID) pairs: with connections
			// of several uids, each asks for what its uid is entitled to.
			ss := w.spec.Streams[i%len(w.spec.Streams)]
			at, err := w.firstSecret(ctx, w.conns[ss.Conn], ss, 1_000_000+i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			lats = append(lats, int64(at.Sub(t0)))
		}()
	}
	wg.Wait()
	w.emit(event{T: evChurn, Lats: lats, Failed: failed, Floor: w.noopFloor(rate, d), CPUNS: selfCPU()}, true)
}

// coldProbe waits for the api socket to appear, then connects until one stream gets its
// SVID, and reports the wall time it did.
func (w *worker) coldProbe(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	e := event{T: evCold}
	for {
		if ctx.Err() != nil {
			e.Err = fmt.Sprintf("no SVID within %s after %d attempts", timeout, e.Attempts)
			break
		}
		if _, err := os.Stat(w.spec.Socket); err != nil {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		e.Attempts++
		conn, err := envoy.Dial(ctx, w.spec.Socket)
		if err != nil {
			e.Err = err.Error()
			break
		}
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		var at time.Time
		at, err = w.firstSecret(actx, conn, w.spec.Streams[0], -2)
		acancel()
		conn.Close()
		if err == nil {
			e.At = at.UnixNano()
			break
		}
		time.Sleep(time.Millisecond)
	}
	w.emit(e, true)
}

// noopFloor times a no-op gRPC call (grpc.health.v1 Check) on the first stream's connection,
// paced like churn's streams (rate per second for d): the cost of any round trip to the agent
// at that pace on this host — waking idle threads and cores, two processes' gRPC stacks —
// against which the churn's first-secret latency can be read.
func (w *worker) noopFloor(rate float64, d time.Duration) []int64 {
	conn := w.conns[w.spec.Streams[0].Conn]
	hc := healthpb.NewHealthClient(conn)
	interval := time.Duration(float64(time.Second) / rate)
	var lats []int64
	for start := time.Now(); time.Since(start) < d; {
		time.Sleep(interval)
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		t0 := time.Now()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		lat := time.Since(t0)
		cancel()
		if err == nil {
			lats = append(lats, int64(lat))
		}
	}
	return lats
}

// selfCPU is this process's user+system CPU time in nanoseconds.
func selfCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
