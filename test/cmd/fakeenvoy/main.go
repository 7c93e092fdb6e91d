// Command fakeenvoy is the tests' Envoy as a process: e2e tests run it under other uids (the
// agent identifies callers by the socket's peer credentials, so the test process itself cannot
// stand in for them) and read what it received from its stdout.
//
//	fakeenvoy -socket PATH -names a,b,c [-node-id ID] [-mode sotw|delta|fetch] [-count N]
//	          [-timeout D] [-follow] [-out json]
//
// It prints one JSON object per response (envoy.Summary) on stdout and stops when it has
// received every named resource, or -count responses, or at -timeout. Errors, an invalid
// response among them, go to stderr with exit code 1; a timeout before every name arrived is
// an error ("timed out"), unless -follow. SIGTERM or SIGINT ends it with exit code 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/svidd/svidd/test/envoy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type command struct {
	socket  string
	names   []string
	nodeID  string
	mode    string
	count   int
	timeout time.Duration
	follow  bool
	out     io.Writer
	enc     *json.Encoder
}

// run returns the exit code. ctx ending (a signal) is a clean stop.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fakeenvoy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := command{out: stdout, enc: json.NewEncoder(stdout)}
	var names, out string
	fs.StringVar(&c.socket, "socket", "/tmp/agent/api.sock", "agent's SDS Unix socket")
	fs.StringVar(&names, "names", "", "comma-separated secret names to request (empty: wildcard)")
	fs.StringVar(&c.nodeID, "node-id", "fakeenvoy", "node.id of the first request")
	fs.StringVar(&c.mode, "mode", "sotw", "sotw (StreamSecrets), delta (DeltaSecrets) or fetch (FetchSecrets)")
	fs.IntVar(&c.count, "count", 0, "stop after this many responses (0: once every name was received)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "give up after this long (0: never)")
	fs.BoolVar(&c.follow, "follow", false, "keep receiving until -count, -timeout or a signal; the timeout is then not an error")
	fs.StringVar(&out, "out", "json", "output format (json)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "fakeenvoy: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if out != "json" {
		fmt.Fprintf(stderr, "fakeenvoy: unknown -out %q (want json)\n", out)
		return 2
	}
	for n := range strings.SplitSeq(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			c.names = append(c.names, n)
		}
	}
	if c.count < 0 {
		fmt.Fprintln(stderr, "fakeenvoy: -count must not be negative")
		return 2
	}

	runCtx := ctx
	if c.timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	// Streams live until a signal (ctx); the timeout bounds only the waiting (runCtx). A
	// deadline on the stream itself would travel to the agent as grpc-timeout and could end
	// the stream a moment before runCtx reports it, turning a timeout into a stream error.
	var err error
	switch c.mode {
	case "sotw":
		err = c.sotw(ctx, runCtx)
	case "delta":
		err = c.delta(ctx, runCtx)
	case "fetch":
		err = c.fetch(runCtx)
	default:
		fmt.Fprintf(stderr, "fakeenvoy: unknown -mode %q (want sotw, delta or fetch)\n", c.mode)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil:
		return 0 // signalled: a clean stop
	case runCtx.Err() != nil && c.follow:
		return 0
	case runCtx.Err() != nil:
		fmt.Fprintf(stderr, "fakeenvoy: timed out after %s: %v\n", c.timeout, err)
		return 1
	default:
		fmt.Fprintf(stderr, "fakeenvoy: %v\n", err)
		return 1
	}
}

// tracker decides when to stop: after count responses, or once every name was seen.
type tracker struct {
	c         *command
	responses int
	seen      map[string]bool
}

func (t *tracker) done(got []string) bool {
	t.responses++
	for _, n := range got {
		t.seen[n] = true
	}
	if t.c.count > 0 {
		return t.responses >= t.c.count
	}
	if t.c.follow {
		return false
	}
	return !slices.ContainsFunc(t.c.names, func(n string) bool { return !t.seen[n] })
}

func (t *tracker) missing() []string {
	var m []string
	for _, n := range t.c.names {
		if !t.seen[n] {
			m = append(m, n)
		}
	}
	return m
}

func (c *command) print(s envoy.Summary, err error) error {
	if err != nil {
		return fmt.Errorf("summarising response: %w", err)
	}
	if err := c.enc.Encode(s); err != nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return nil
}

func (c *command) sotw(ctx, runCtx context.Context) error {
	conn, err := envoy.Dial(ctx, c.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	s, err := envoy.NewSotW(ctx, conn, envoy.NewNode(c.nodeID), c.names)
	if err != nil {
		return err
	}
	defer s.Close()
	t := &tracker{c: c, seen: make(map[string]bool)}
	for {
		resp, err := s.Recv(runCtx)
		if err != nil {
			return waitErr(err, t)
		}
		if err := c.print(resp.Summary()); err != nil {
			return err
		}
		if t.done(resp.Names()) {
			return nil
		}
	}
}

func (c *command) delta(ctx, runCtx context.Context) error {
	conn, err := envoy.Dial(ctx, c.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	d, err := envoy.NewDelta(ctx, conn, envoy.NewNode(c.nodeID), c.names, nil)
	if err != nil {
		return err
	}
	defer d.Close()
	t := &tracker{c: c, seen: make(map[string]bool)}
	for {
		resp, err := d.Recv(runCtx)
		if err != nil {
			return waitErr(err, t)
		}
		if err := c.print(resp.Summary()); err != nil {
			return err
		}
		var got []string
		for _, r := range resp.Resources {
			got = append(got, r.Name)
		}
		if t.done(got) {
			return nil
		}
	}
}

func (c *command) fetch(ctx context.Context) error {
	conn, err := envoy.Dial(ctx, c.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := envoy.Fetch(ctx, conn, envoy.NewNode(c.nodeID), c.names)
	if err != nil {
		return err
	}
	return c.print(resp.Summary())
}

// waitErr says what was still awaited when the stream ended or time ran out.
func waitErr(err error, t *tracker) error {
	if errors.Is(err, envoy.ErrInvalid) {
		return err
	}
	if m := t.missing(); len(m) > 0 && !t.c.follow && t.c.count == 0 {
		return fmt.Errorf("after %d responses, still waiting for %s: %w", t.responses, strings.Join(m, ","), err)
	}
	return fmt.Errorf("after %d responses: %w", t.responses, err)
}
