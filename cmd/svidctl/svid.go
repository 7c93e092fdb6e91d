package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/svidfiles"
	"github.com/svidd/svidd/pkg/workload"
)

// DefaultAPISocket is svidd's Workload API socket. The svid commands run as the workload (not
// as the operator) and talk to this socket, not to the admin socket.
const DefaultAPISocket = "/tmp/agent/api.sock"

// svidFlags are the flags of svid fetch and svid watch.
type svidFlags struct {
	socketPath  string
	dir         string
	spiffeID    string
	jwtAudience string
	output      outputFlag
	timeout     time.Duration

	// watch only
	cmd     string
	cmdArgs string
	signal  string
	pidFile string
	keep    int

	id   spiffeid.ID    // parsed spiffeID, zero if none
	sig  syscall.Signal // parsed signal, 0 for restart
	args []string       // split cmdArgs
}

func (f *svidFlags) register(fs *flag.FlagSet, g globalFlags, watch bool) {
	// A -socketPath before the command names the socket to talk to; otherwise the Workload
	// API's default ($SPIFFE_ENDPOINT_SOCKET or DefaultAPISocket), never the admin socket's.
	f.socketPath = g.apiSocket
	if g.explicit {
		f.socketPath = g.socketPath
	}
	fs.StringVar(&f.socketPath, "socketPath", f.socketPath, "path of svidd's Workload API socket (not the admin socket)")
	fs.StringVar(&f.dir, "dir", "", "directory to write svid.pem, svid_key.pem and bundle.pem into (through DIR/current)")
	fs.StringVar(&f.spiffeID, "spiffeID", "", "which of the caller's SVIDs (default: the first)")
	fs.StringVar(&f.jwtAudience, "jwtAudience", "", "also fetch a JWT-SVID for this audience (comma-separated for several)")
	fs.IntVar(&f.keep, "keep", svidfiles.DefaultKeep, "old generations to keep in -dir")
	if watch {
		fs.StringVar(&f.cmd, "cmd", "", "program to start after the first write and signal after each later one")
		fs.StringVar(&f.cmdArgs, "cmdArgs", "", "arguments of -cmd, split like a shell does (quotes, backslashes)")
		fs.StringVar(&f.signal, "signal", "SIGHUP", "signal for -cmd or -pidFile after a write; empty: restart -cmd")
		fs.StringVar(&f.pidFile, "pidFile", "", "file holding the pid of a process to signal after each write")
		return
	}
	f.output = "pretty"
	fs.Var(&f.output, "output", "pretty or json (without -dir)")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "wait this long for svidd to answer and to issue this process an identity, then give up")
}

// check validates the flags that parsing alone does not.
func (f *svidFlags) check(name string, watch bool) error {
	if f.spiffeID != "" {
		id, err := spiffeid.FromString(f.spiffeID)
		if err != nil {
			return usageError{fmt.Sprintf("%s: -spiffeID: %v", name, err)}
		}
		f.id = id
	}
	if f.keep < 1 {
		return usageError{fmt.Sprintf("%s: -keep must be at least 1", name)}
	}
	if !watch {
		if f.timeout <= 0 {
			return usageError{fmt.Sprintf("%s: -timeout must be positive", name)}
		}
		return nil
	}
	if f.dir == "" {
		return usageError{name + ": -dir is required"}
	}
	if f.cmd != "" && f.pidFile != "" {
		return usageError{name + ": -cmd and -pidFile exclude each other"}
	}
	if f.cmdArgs != "" && f.cmd == "" {
		return usageError{name + ": -cmdArgs needs -cmd"}
	}
	sig, err := parseSignal(f.signal)
	if err != nil {
		return usageError{fmt.Sprintf("%s: -signal: %v", name, err)}
	}
	if sig == 0 && f.pidFile != "" {
		return usageError{name + ": -pidFile needs a -signal (only a -cmd can be restarted)"}
	}
	f.sig = sig
	if f.args, err = splitArgs(f.cmdArgs); err != nil {
		return usageError{fmt.Sprintf("%s: -cmdArgs: %v", name, err)}
	}
	return nil
}

func (f *svidFlags) audiences() (string, []string) {
	var auds []string
	for a := range strings.SplitSeq(f.jwtAudience, ",") {
		if a = strings.TrimSpace(a); a != "" {
			auds = append(auds, a)
		}
	}
	if len(auds) == 0 {
		return "", nil
	}
	return auds[0], auds[1:]
}

func newAPIClient(ctx context.Context, socketPath string) (*workloadapi.Client, error) {
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socketPath))
	if err != nil {
		return nil, fmt.Errorf("connecting to the Workload API at %s: %w", socketPath, err)
	}
	return c, nil
}

// pickSVID returns the caller's SVID for id, or its default (first) one when id is zero.
func pickSVID(svids []*x509svid.SVID, id spiffeid.ID) (*x509svid.SVID, error) {
	if id.IsZero() {
		if len(svids) == 0 {
			return nil, errors.New("the caller has no X509-SVID")
		}
		return svids[0], nil
	}
	for _, s := range svids {
		if s.ID == id {
			return s, nil
		}
	}
	var have []string
	for _, s := range svids {
		have = append(have, s.ID.String())
	}
	return nil, fmt.Errorf("the caller has no X509-SVID for %s (it has %s)", id, strings.Join(have, ", "))
}

// fetchJWT fetches a JWT-SVID for subject and the JWT bundles, encoded as the files hold them.
func fetchJWT(ctx context.Context, c *workloadapi.Client, subject spiffeid.ID, aud string, extra []string) (*jwtsvid.SVID, []byte, error) {
	s, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, ExtraAudiences: extra, Subject: subject})
	if err != nil {
		return nil, nil, fmt.Errorf("fetching JWT-SVID for %s: %w", subject, err)
	}
	bundles, err := c.FetchJWTBundles(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching JWT bundles: %w", err)
	}
	js, err := svidfiles.JWTBundleJSON(bundles)
	if err != nil {
		return nil, nil, err
	}
	return s, js, nil
}

// rotateAt is when svidd replaces the SVID: the agent's own rotation time (half the lifetime,
// jittered by the serial), the one `svidctl status` shows.
func rotateAt(leaf *x509.Certificate) time.Time {
	return workload.RotateAt(leaf.NotBefore, leaf.NotAfter, workload.RotationJitter(leaf.SerialNumber.Text(16)))
}

// rotatesIn is how long until the SVID is replaced.
func rotatesIn(leaf *x509.Certificate, now time.Time) time.Duration {
	return rotateAt(leaf).Sub(now).Round(time.Second)
}

func serialHex(s *x509svid.SVID) string { return fmt.Sprintf("%x", s.Certificates[0].SerialNumber) }

func runSVIDFetch(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f svidFlags
	fs := newFlagSet("svid fetch", env)
	f.register(fs, g, false)
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if err := f.check("svid fetch", false); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	c, err := newAPIClient(ctx, f.socketPath)
	if err != nil {
		return err
	}
	defer c.Close()
	x, err := fetchX509Waiting(ctx, c, f.socketPath, env)
	if err != nil {
		return err
	}
	svid, err := pickSVID(x.SVIDs, f.id)
	if err != nil {
		return err
	}
	var jwt *jwtsvid.SVID
	var jwtBundle []byte
	if aud, extra := f.audiences(); aud != "" {
		if jwt, jwtBundle, err = fetchJWT(ctx, c, svid.ID, aud, extra); err != nil {
			return err
		}
	}

	if f.dir != "" {
		set, err := svidfiles.FromX509SVID(svid, x.Bundles)
		if err != nil {
			return err
		}
		if jwt != nil {
			set.JWTSVID, set.JWTBundle = []byte(jwt.Marshal()), jwtBundle
		}
		w, err := svidfiles.NewWriter(svidfiles.Config{Dir: f.dir, Keep: f.keep})
		if err != nil {
			return err
		}
		if _, err := w.Write(set); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "Wrote %s (serial %s, expires %s) to %s\n", svid.ID, serialHex(svid),
			svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339), w.Dir())
		return nil
	}

	shown := x.SVIDs
	if !f.id.IsZero() {
		shown = []*x509svid.SVID{svid}
	}
	return printSVIDs(env.Stdout, f.output, shown, jwt, time.Now())
}

// fetchX509Waiting fetches the caller's X.509 context, waiting until ctx ends while svidd is
// not there yet (Unavailable: not started, socket missing) or has no identity for the caller
// yet (PermissionDenied: the entry is not registered yet, the CA still starting): at boot, a
// unit's ExecStartPre may run before svidd or the entry is ready. It says once what it waits for.
func fetchX509Waiting(ctx context.Context, c *workloadapi.Client, socketPath string, env Env) (*workloadapi.X509Context, error) {
	backoff := 100 * time.Millisecond
	var said codes.Code
	var waitedFor error // the last answer worth reporting if the wait runs out
	for {
		x, err := c.FetchX509Context(ctx)
		if err == nil {
			return x, nil
		}
		code := status.Code(err)
		if ctx.Err() != nil || (code != codes.Unavailable && code != codes.PermissionDenied) {
			if ctx.Err() != nil && waitedFor != nil {
				return nil, fmt.Errorf("fetching X509-SVIDs from %s: gave up after -timeout: %w", socketPath, waitedFor)
			}
			return nil, fmt.Errorf("fetching X509-SVIDs from %s: %w", socketPath, err)
		}
		waitedFor = err
		if said != code {
			said = code
			what := "svidd to answer"
			if code == codes.PermissionDenied {
				what = "an identity for this process (is there an entry for it? svidctl explain -pid PID says why not)"
			}
			fmt.Fprintf(env.Stderr, "svidctl: waiting for %s at %s: %v\n", what, socketPath, status.Convert(err).Message())
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

type svidJSON struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Hint      string    `json:"hint,omitempty"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// RotateAt is when svidd replaces the SVID (as svidctl status shows it); RotatesInSeconds
	// the time until then.
	RotateAt         time.Time `json:"rotate_at"`
	RotatesInSeconds int64     `json:"rotates_in_seconds"`
}

type jwtJSON struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Audience  []string  `json:"audience"`
	ExpiresAt time.Time `json:"expires_at"`
	Token     string    `json:"token"`
}

func printSVIDs(w io.Writer, output outputFlag, svids []*x509svid.SVID, jwt *jwtsvid.SVID, now time.Time) error {
	if output == "json" {
		out := struct {
			SVIDs   []svidJSON `json:"svids"`
			JWTSVID *jwtJSON   `json:"jwt_svid,omitempty"`
		}{SVIDs: []svidJSON{}}
		for _, s := range svids {
			leaf := s.Certificates[0]
			out.SVIDs = append(out.SVIDs, svidJSON{
				SPIFFEID: s.ID.String(), Hint: s.Hint, Serial: serialHex(s),
				NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), RotateAt: rotateAt(leaf).UTC(),
				RotatesInSeconds: int64(rotatesIn(leaf, now) / time.Second),
			})
		}
		if jwt != nil {
			out.JWTSVID = &jwtJSON{SPIFFEID: jwt.ID.String(), Audience: jwt.Audience, ExpiresAt: jwt.Expiry.UTC(), Token: jwt.Marshal()}
		}
		return printJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tSERIAL\tNOT BEFORE\tNOT AFTER\tROTATES IN")
	for _, s := range svids {
		leaf := s.Certificates[0]
		in := rotatesIn(leaf, now)
		rot := in.String()
		if in <= 0 {
			rot = "overdue by " + (-in).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.ID, serialHex(s),
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), rot)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if jwt != nil {
		_, err := fmt.Fprintf(w, "\nJWT-SVID %s for audience %s, expires %s:\n%s\n", jwt.ID,
			strings.Join(jwt.Audience, ","), jwt.Expiry.UTC().Format(time.RFC3339), jwt.Marshal())
		return err
	}
	return nil
}

func runSVIDWatch(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f svidFlags
	fs := newFlagSet("svid watch", env)
	f.register(fs, g, true)
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if err := f.check("svid watch", true); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, nil))
	w, err := svidfiles.NewWriter(svidfiles.Config{Dir: f.dir, Keep: f.keep, Logger: log})
	if err != nil {
		return err
	}
	c, err := newAPIClient(ctx, f.socketPath)
	if err != nil {
		return err
	}
	defer c.Close()

	wa := &watcher{f: &f, c: c, w: w, log: log, env: env}
	if f.cmd != "" {
		defer unignoreForChildren()()
		wa.child = &child{prog: f.cmd, args: f.args, sig: f.sig, env: env, log: log, exits: make(chan error, 1)}
		defer wa.child.stop()
	}

	updates := make(chan *workloadapi.X509Context, 1)
	watchCtx, cancel := context.WithCancel(ctx)
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- c.WatchX509Context(watchCtx, x509Watcher{updates: updates, log: log})
	}()
	defer func() {
		cancel()
		<-watchErr
	}()
	log.Info("watching the Workload API", "socket", f.socketPath, "dir", w.Dir())

	var exits <-chan error
	if wa.child != nil {
		exits = wa.child.exits
	}
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping")
			return nil
		case err := <-watchErr:
			watchErr <- err // for the deferred receive
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watching the Workload API at %s: %w", f.socketPath, err)
		case x := <-updates:
			wa.x509 = x
			wa.publish(ctx)
		case <-wa.jwtRefresh:
			wa.publish(ctx)
		case err := <-exits:
			log.Warn("program exited; it is started again after the next write", "program", f.cmd, "error", err)
		}
	}
}

// x509Watcher hands the latest X.509 context to the run loop: a 1-buffered channel where the
// newest value replaces an unread one, so a slow write never blocks the stream.
type x509Watcher struct {
	updates chan *workloadapi.X509Context
	log     *slog.Logger
}

func (x x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	select {
	case <-x.updates:
	default:
	}
	x.updates <- c // only this goroutine sends, so there is room now
}

func (x x509Watcher) OnX509ContextWatchError(err error) {
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	x.log.Warn("Workload API watch failed; retrying", "error", err)
}

// watcher is svid watch's state between updates.
type watcher struct {
	f     *svidFlags
	c     *workloadapi.Client
	w     *svidfiles.Writer
	log   *slog.Logger
	env   Env
	child *child

	x509       *workloadapi.X509Context
	last       svidfiles.FileSet // last written
	jwt        []byte            // last JWT-SVID and bundle, kept when a refresh fails
	jwtBundle  []byte
	jwtRefresh <-chan time.Time
	written    bool
}

// publish writes the latest X.509 context (and a fresh JWT-SVID, if asked) as a generation
// unless the files would not change, then tells the program. Errors are logged: the previous
// files stay in place and the next update tries again.
func (wa *watcher) publish(ctx context.Context) {
	if wa.x509 == nil {
		return
	}
	svid, err := pickSVID(wa.x509.SVIDs, wa.f.id)
	if err != nil {
		wa.log.Error("not writing SVID files", "error", err)
		return
	}
	set, err := svidfiles.FromX509SVID(svid, wa.x509.Bundles)
	if err != nil {
		wa.log.Error("not writing SVID files", "spiffe_id", svid.ID.String(), "error", err)
		return
	}
	if aud, extra := wa.f.audiences(); aud != "" {
		wa.refreshJWT(ctx, svid.ID, aud, extra)
	}
	set.JWTSVID, set.JWTBundle = wa.jwt, wa.jwtBundle
	if wa.written && sameFiles(set, wa.last) {
		wa.log.Info("SVID files unchanged; not rewriting", "spiffe_id", svid.ID.String())
		return
	}
	gen, err := wa.w.Write(set)
	if err != nil {
		wa.log.Error("writing SVID files", "dir", wa.w.Dir(), "error", err)
		if gen == "" {
			return
		}
	}
	leaf := svid.Certificates[0]
	wa.log.Info("wrote SVID files", "spiffe_id", svid.ID.String(), "serial", serialHex(svid),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "dir", wa.w.Dir())
	wa.last, wa.written = set, true
	wa.notify()
}

// refreshJWT fetches a JWT-SVID and schedules the next fetch at half its remaining life: JWT-SVIDs
// live minutes, far shorter than an X509-SVID's rotation, so they cannot wait for X.509 updates.
func (wa *watcher) refreshJWT(ctx context.Context, id spiffeid.ID, aud string, extra []string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, bundle, err := fetchJWT(ctx, wa.c, id, aud, extra)
	if err != nil {
		wa.log.Error("fetching JWT-SVID; retrying in 5s", "spiffe_id", id.String(), "error", err)
		wa.jwtRefresh = time.After(5 * time.Second)
		return
	}
	wa.jwt, wa.jwtBundle = []byte(s.Marshal()), bundle
	wa.jwtRefresh = time.After(max(time.Until(s.Expiry)/2, time.Second))
}

func sameFiles(a, b svidfiles.FileSet) bool {
	return string(a.SVID) == string(b.SVID) && string(a.Key) == string(b.Key) && string(a.Bundle) == string(b.Bundle) &&
		string(a.JWTSVID) == string(b.JWTSVID) && string(a.JWTBundle) == string(b.JWTBundle)
}

// notify tells the program that new files are in place.
func (wa *watcher) notify() {
	switch {
	case wa.child != nil:
		wa.child.notify()
	case wa.f.pidFile != "":
		pid, err := readPidFile(wa.f.pidFile)
		if err != nil {
			wa.log.Warn("not signalling", "pid_file", wa.f.pidFile, "error", err)
			return
		}
		if err := unix.Kill(pid, wa.f.sig); err != nil {
			wa.log.Warn("signalling", "pid", pid, "signal", unix.SignalName(wa.f.sig), "error", err)
			return
		}
		wa.log.Info("signalled", "pid", pid, "signal", unix.SignalName(wa.f.sig))
	}
}

func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a pid: %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// child is the program svid watch runs (-cmd).
type child struct {
	prog  string
	args  []string
	sig   syscall.Signal // 0: restart instead of signalling
	env   Env
	log   *slog.Logger
	exits chan error // the exit of a process that ended on its own

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

func (c *child) running() bool {
	if c.cmd == nil {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// notify starts the program if it is not running (the first write, or it exited), else
// signals or restarts it.
func (c *child) notify() {
	switch {
	case !c.running():
		c.start()
	case c.sig != 0:
		if err := c.cmd.Process.Signal(c.sig); err != nil {
			c.log.Warn("signalling program", "pid", c.cmd.Process.Pid, "error", err)
			return
		}
		c.log.Info("signalled program", "pid", c.cmd.Process.Pid, "signal", unix.SignalName(c.sig))
	default:
		c.stop()
		c.start()
	}
}

func (c *child) start() {
	cmd := exec.Command(c.prog, c.args...)
	cmd.Stdout, cmd.Stderr = c.env.Stdout, c.env.Stderr
	// The program's own children may hold its output open; do not wait on them forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		c.log.Error("starting program", "program", c.prog, "error", err)
		return
	}
	c.log.Info("started program", "program", c.prog, "pid", cmd.Process.Pid)
	done := make(chan struct{})
	c.cmd, c.done = cmd, done
	go func() {
		err := cmd.Wait()
		// Report before closing done, so stop, which waits on done, finds its own report
		// and drops it.
		select {
		case c.exits <- err:
		default:
		}
		close(done)
	}()
}

// stop ends the program: SIGTERM, then SIGKILL if it has not exited within 10s.
func (c *child) stop() {
	if !c.running() {
		return
	}
	pid := c.cmd.Process.Pid
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	// Our own stop is not an unexpected exit: drop its report.
	select {
	case <-c.exits:
	default:
	}
	c.log.Info("stopped program", "pid", pid)
}

// childSignals are the signals whose disposition a -cmd program should find at their default.
var childSignals = []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM}

// unignoreForChildren makes the -cmd program start with default signal dispositions. A signal
// ignored when svidctl started (nohup ignores SIGHUP, a shell's background job SIGINT and
// SIGQUIT) stays ignored across exec, so the program would never see the -signal svidctl sends
// (and a shell cannot even trap a signal ignored on entry). Go resets to default in the child
// only the signals it handles, so handle those: svidctl itself keeps ignoring them (the
// handler drops them) until stop, which restores the ignored state.
func unignoreForChildren() (stop func()) {
	var sigs []os.Signal
	for _, s := range childSignals {
		if signal.Ignored(s) {
			sigs = append(sigs, s)
		}
	}
	if len(sigs) == 0 {
		return func() {}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range ch { // ignored, as they were
		}
	}()
	return func() {
		signal.Ignore(sigs...) // replaces the handler: Stop alone would leave them at default
		signal.Stop(ch)
		close(ch)
		<-done
	}
}

// parseSignal accepts SIGHUP, HUP, hup or a number; "" means none (restart).
func parseSignal(s string) (syscall.Signal, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("no signal %d", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

// splitArgs splits s into words as a POSIX shell would, without expansions: blanks separate,
// 'single quotes' are literal, "double quotes" allow \" and \\, a backslash outside quotes
// escapes the next character.
func splitArgs(s string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		case ch == '\\':
			if i+1 == len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case ch == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}
