// Command flood is the abuse test's attacker and its victim, as processes: the e2e test runs
// the attacker under one uid and the probe under another (the agent tells callers apart by
// the socket's peer credentials).
//
//	flood -socket PATH -mode attack -names a,b [-duration D] [-raw N] [-fresh N] [-streams N] [-hold H] [-procs P]
//	flood -socket PATH -mode probe  -names a,b [-count N] [-interval D] [-timeout D]
//	flood -socket PATH -mode names  [-streams W] [-perStream N] [-nameLen L] [-batch B] [-hold H] [-duration D]
//	flood -socket PATH -mode nack   -names a,b [-streams N] [-duration D]
//
// names and nack are issue 11's memory and log floods (names.go).
//
// attack, until -duration or SIGTERM, as fast as it can:
//   - -raw workers connect, read the server's first bytes (admitted) or EOF (refused), close;
//   - -fresh workers make a new gRPC connection, open one SDS stream, wait for its first
//     response, close (a full attestation per connection);
//   - -streams workers open SDS streams, each on its own connection, each holding its last
//     -hold streams open.
//
// It then prints one JSON object (attackSummary). probe makes -count fresh connections, one
// after another, and prints for each the time from dialing to the first response holding
// every name, as a JSON line {"latency_us": N, "connect_us": M} (M: until the connection was
// ready), or {"error": "..."}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/test/envoy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

type config struct {
	socket   string
	mode     string
	names    []string
	duration time.Duration
	raw      int
	fresh    int
	streams  int
	hold     int
	count    int
	interval time.Duration
	timeout  time.Duration
	procs    int
	nice     int
	// names mode
	perStream int
	nameLen   int
	batch     int
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	var c config
	var names string
	fs.StringVar(&c.socket, "socket", "", "agent's api socket")
	fs.StringVar(&c.mode, "mode", "", "attack or probe")
	fs.StringVar(&names, "names", "", "comma-separated secret names to request")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "attack: how long")
	fs.IntVar(&c.raw, "raw", 4, "attack: raw connection workers")
	fs.IntVar(&c.fresh, "fresh", 2, "attack: new-connection-per-stream workers")
	fs.IntVar(&c.streams, "streams", 4, "attack: stream workers, each on its own connection")
	fs.IntVar(&c.hold, "hold", 50, "attack: streams each stream worker holds open")
	fs.IntVar(&c.count, "count", 10, "probe: probes")
	fs.DurationVar(&c.interval, "interval", 50*time.Millisecond, "probe: pause between probes")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "probe: bound on one probe")
	fs.IntVar(&c.procs, "procs", 0, "GOMAXPROCS (0: Go's default, every CPU)")
	fs.IntVar(&c.nice, "nice", 0, "raise the process's nice value to this")
	fs.IntVar(&c.perStream, "perStream", 1024, "names: names each stream subscribes to")
	fs.IntVar(&c.nameLen, "nameLen", 2000, "names: bytes per name")
	fs.IntVar(&c.batch, "batch", 100, "names: names per request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.nice > 0 {
		if err := renice(c.nice); err != nil {
			return err
		}
	}
	if c.procs > 0 {
		runtime.GOMAXPROCS(c.procs)
	}
	for n := range strings.SplitSeq(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			c.names = append(c.names, n)
		}
	}
	if c.socket == "" || (len(c.names) == 0 && c.mode != "names") {
		return errors.New("-socket and -names are required")
	}
	switch c.mode {
	case "attack":
		return attack(ctx, c, os.Stdout)
	case "probe":
		return probe(ctx, c, os.Stdout)
	case "names":
		return namesAttack(ctx, c, os.Stdout)
	case "nack":
		return nackAttack(ctx, c, os.Stdout)
	default:
		return fmt.Errorf("unknown -mode %q (want attack, probe, names or nack)", c.mode)
	}
}

// attackSummary is what the attacker saw. Refusal latencies are medians, in microseconds,
// from the attempt to the refusal.
type attackSummary struct {
	RawAdmitted      int64 `json:"raw_admitted"`
	RawRefused       int64 `json:"raw_refused"`
	RawRefusalP50US  int64 `json:"raw_refusal_p50_us"`
	FreshServed      int64 `json:"fresh_served"`
	FreshRefused     int64 `json:"fresh_refused"` // connection closed or stream refused
	StreamsServed    int64 `json:"streams_served"`
	StreamsExhausted int64 `json:"streams_exhausted"`
	StreamRefusalUS  int64 `json:"stream_refusal_p50_us"`
	// StreamsUnavailable: the stream worker's own connection was refused.
	StreamsUnavailable int64    `json:"streams_unavailable"`
	OtherErrors        int64    `json:"other_errors"`
	SampleErrors       []string `json:"sample_errors,omitempty"`
}

type attacker struct {
	c   config
	sum attackSummary
	mu  sync.Mutex // guards the slices below and sum.SampleErrors
	raw []time.Duration
	str []time.Duration
}

func (a *attacker) sample(err error) {
	atomic.AddInt64(&a.sum.OtherErrors, 1)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.sum.SampleErrors) < 5 {
		a.sum.SampleErrors = append(a.sum.SampleErrors, err.Error())
	}
}

func (a *attacker) record(dst *[]time.Duration, d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(*dst) < 100000 {
		*dst = append(*dst, d)
	}
}

func attack(ctx context.Context, c config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	a := &attacker{c: c}
	var wg sync.WaitGroup
	for range c.raw {
		wg.Go(func() { a.rawWorker(ctx) })
	}
	for range c.fresh {
		wg.Go(func() { a.freshWorker(ctx) })
	}
	for range c.streams {
		conn, err := envoy.Dial(ctx, c.socket)
		if err != nil {
			return err
		}
		defer conn.Close()
		wg.Go(func() { a.streamWorker(ctx, conn) })
	}
	wg.Wait()
	a.sum.RawRefusalP50US = median(a.raw).Microseconds()
	a.sum.StreamRefusalUS = median(a.str).Microseconds()
	return json.NewEncoder(out).Encode(a.sum)
}

// rawWorker: connect, then the server either speaks (HTTP/2 settings: admitted) or closes.
func (a *attacker) rawWorker(ctx context.Context) {
	for ctx.Err() == nil {
		start := time.Now()
		conn, err := net.Dial("unix", a.c.socket)
		if err != nil {
			if ctx.Err() == nil {
				a.sample(err)
			}
			continue
		}
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		var b [9]byte
		_, err = io.ReadFull(conn, b[:])
		switch {
		case err == nil:
			atomic.AddInt64(&a.sum.RawAdmitted, 1)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
			atomic.AddInt64(&a.sum.RawRefused, 1)
			a.record(&a.raw, time.Since(start))
		default:
			a.sample(err)
		}
		conn.Close()
	}
}

// freshWorker: a new connection per stream, so the agent attests each one.
func (a *attacker) freshWorker(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.fresh(ctx)
		switch {
		case err == nil:
			atomic.AddInt64(&a.sum.FreshServed, 1)
		case ctx.Err() != nil:
		case refused(err):
			atomic.AddInt64(&a.sum.FreshRefused, 1)
		default:
			a.sample(err)
		}
	}
}

func (a *attacker) fresh(ctx context.Context) error {
	conn, err := envoy.Dial(ctx, a.c.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	s, err := envoy.NewSotW(ctx, conn, envoy.NewNode("flood"), a.c.names)
	if err != nil {
		return err
	}
	defer s.Close()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = s.Recv(rctx)
	return err
}

// refused: the agent closed the connection (Unavailable in gRPC) or refused the stream.
func refused(err error) bool {
	c := status.Code(err)
	return c == codes.ResourceExhausted || c == codes.Unavailable
}

// streamWorker opens streams on its connection as fast as it can, holding the last hold of
// them open.
func (a *attacker) streamWorker(ctx context.Context, conn *grpc.ClientConn) {
	var held []*envoy.SotW
	defer func() {
		for _, s := range held {
			s.Close()
		}
	}()
	for ctx.Err() == nil {
		start := time.Now()
		s, err := envoy.NewSotW(ctx, conn, envoy.NewNode("flood"), a.c.names)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = s.Recv(rctx)
			cancel()
		}
		switch {
		case err == nil:
			atomic.AddInt64(&a.sum.StreamsServed, 1)
			held = append(held, s)
			if len(held) > a.c.hold {
				held[0].Close()
				held = slices.Delete(held, 0, 1)
			}
			continue
		case ctx.Err() != nil:
		case status.Code(err) == codes.ResourceExhausted:
			atomic.AddInt64(&a.sum.StreamsExhausted, 1)
			a.record(&a.str, time.Since(start))
		case status.Code(err) == codes.Unavailable:
			atomic.AddInt64(&a.sum.StreamsUnavailable, 1)
		default:
			a.sample(err)
		}
		if s != nil {
			s.Close()
		}
	}
}

// renice sets the nice value of every thread of the process (on Linux it is per thread;
// threads made later inherit it from the thread that makes them).
func renice(n int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, n); err != nil {
			return fmt.Errorf("renice thread %d: %w", tid, err)
		}
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// probe measures, count times, a fresh Envoy's time to its first secrets.
func probe(ctx context.Context, c config, out io.Writer) error {
	enc := json.NewEncoder(out)
	for i := range c.count {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(c.interval):
			}
		}
		d, connect, err := probeOnce(ctx, c)
		line := map[string]any{"latency_us": d.Microseconds(), "connect_us": connect.Microseconds()}
		if err != nil {
			line = map[string]any{"error": err.Error()}
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	return nil
}

func probeOnce(ctx context.Context, c config) (total, connect time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	conn, err := envoy.Dial(ctx, c.socket)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			return 0, 0, fmt.Errorf("connection still %s: %w", st, ctx.Err())
		}
	}
	connect = time.Since(start)
	// The stream's own context has no deadline (see envoy.NewSotW); Recv's has.
	s, err := envoy.NewSotW(context.WithoutCancel(ctx), conn, envoy.NewNode("probe"), c.names)
	if err != nil {
		return 0, 0, err
	}
	defer s.Close()
	seen := map[string]bool{}
	for {
		resp, err := s.Recv(ctx)
		if err != nil {
			return 0, 0, err
		}
		for _, n := range resp.Names() {
			seen[n] = true
		}
		if !slices.ContainsFunc(c.names, func(n string) bool { return !seen[n] }) {
			return time.Since(start), connect, nil
		}
	}
}
