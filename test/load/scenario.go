package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

const trustDomain = "spiffe://example.org"

// scenario is one run's shape.
type scenario struct {
	Name    string
	Streams int
	Conns   int
	UIDs    int
	Entries int
	// Extra entries belong to uids that never connect: they fill the store (and the index
	// every caller is matched against) without adding SVIDs anyone needs.
	Extra int
	// Change is what is changed once the streams are open: none, entry, bundle or rotate.
	Change string
	// TTL is the SVID TTL (0: the agent's default); rotate needs a short one.
	TTL time.Duration
	// ChurnRate streams/s are opened and closed for ChurnFor after the change.
	ChurnRate float64
	ChurnFor  time.Duration
	// Cold restarts the agent at the end and times its first SVID.
	Cold bool
}

func (s scenario) validate(root bool) error {
	switch {
	case s.Streams < 1 || s.Conns < 1 || s.UIDs < 1 || s.Entries < 1 || s.Extra < 0:
		return errors.New("streams, conns, uids and entries must be at least 1, extra entries at least 0")
	case s.Conns < s.UIDs:
		return fmt.Errorf("conns (%d) must be at least uids (%d): each uid is its own process with its own connections", s.Conns, s.UIDs)
	case s.Streams < s.Conns:
		return fmt.Errorf("streams (%d) must be at least conns (%d)", s.Streams, s.Conns)
	case s.Entries < s.UIDs:
		return fmt.Errorf("entries (%d) must be at least uids (%d): a uid without an entry gets nothing", s.Entries, s.UIDs)
	case !root && s.UIDs > 1:
		return errors.New("more than one uid needs root (workers run under other uids)")
	case s.Change == "rotate" && s.TTL <= 0:
		return errors.New("-change rotate needs a short -ttl (e.g. 4s)")
	}
	switch s.Change {
	case "none", "entry", "bundle", "rotate":
	default:
		return fmt.Errorf("unknown -change %q (none, entry, bundle, rotate)", s.Change)
	}
	return nil
}

// env is what every scenario of one invocation shares.
type env struct {
	svidd     string // svidd binary (built or given)
	floor     string // the floor server's binary (test/load/floorsds), "" not to run it
	profsvidd bool   // svidd is the profiling wrapper (test/load/profsvidd)
	uidBase   int
	root      bool
	logLevel  string
	metrics   string // "auto", "" (off) or a 127.0.0.1 address
	timeout   time.Duration
	settle    time.Duration
	keep      bool
	cpuProf   string // profiling wrapper only: CPU profile of burst+change
	memProf   string
	log       io.Writer
	// procPerUID runs a full client process per uid instead of one client over connections
	// made by per-uid connectors.
	procPerUID bool
	// quiet is how long to wait for a quiet host before each scenario.
	quiet time.Duration
}

// result is everything one scenario measured.
type result struct {
	scenario

	Served, Failed int
	FirstErr       string
	First          []time.Duration
	AllServed      time.Duration

	PushMode    string
	Push        []time.Duration
	PushMissing int
	PushTotal   time.Duration
	PushNote    string

	Idle, Open, After       usage
	BeforeChurn, AfterChurn *usage

	Fresh    time.Duration
	FreshErr string

	Churn       []time.Duration
	ChurnFailed int
	// Floor is the floor server's run of the same scenario (nil: not run, see floorable).
	Floor *result

	// ChurnFloor: a no-op gRPC call's latency at the churn's pace (see worker.noopFloor).
	ChurnFloor []time.Duration

	Cold    time.Duration
	ColdErr string

	ClientCPU time.Duration
	Elapsed   time.Duration
	// LoadAvg is the host's 1-minute load average when the scenario started: the machine
	// is shared, and figures taken on a busy one are not comparable.
	LoadAvg string
	// Runnable is how many threads were runnable host-wide just before the scenario
	// (procs_running in /proc/stat, averaged over a short sample, minus this tool's own):
	// unlike the load average it does not trail the previous scenario.
	Runnable string
}

// uidOf, connOf and entryOf place stream j: on global connection j%C, which belongs to uid
// index c%M; it asks for one of that uid's entries (entry i belongs to uid index i%M).
func (s scenario) connOf(j int) int { return j % s.Conns }
func (s scenario) uidOf(j int) int  { return s.connOf(j) % s.UIDs }
func (s scenario) entryOf(j int) int {
	u := s.uidOf(j)
	n := (s.Entries - u + s.UIDs - 1) / s.UIDs // entries of uid index u
	return u + s.UIDs*((j/s.UIDs)%n)
}

func spiffeIDOf(i int) string { return fmt.Sprintf("%s/load/%d", trustDomain, i) }

// run runs one scenario end to end: agent up, entries, workers, burst, change, probes,
// churn, cold start. Every wait is bounded by e.timeout.
func (e *env) run(sc scenario) (res *result, err error) {
	begin := time.Now()
	e.waitQuiet(sc.Name)
	res = &result{scenario: sc, Fresh: -1, Cold: -1, AllServed: -1, PushTotal: -1, LoadAvg: loadAvg(), Runnable: runnable()}
	dir, err := os.MkdirTemp("/tmp", "svl-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if e.keep || err != nil {
			fmt.Fprintf(e.log, "kept %s (svidd log: %s)\n", dir, filepath.Join(dir, "svidd.log"))
			return
		}
		os.RemoveAll(dir)
	}()
	exe := filepath.Join(dir, "load")
	if err := copyExecutable(exe); err != nil {
		return nil, fmt.Errorf("copying the tool for workers: %w", err)
	}

	metrics := e.metrics
	if metrics == "auto" {
		if metrics, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	var agentEnv []string
	configMetrics := metrics
	if e.profsvidd {
		// The wrapper serves the Go runtime metrics itself; the agent's own listener stays off
		// so the two do not fight over the port.
		agentEnv = append(agentEnv, "LOAD_METRICS_ADDR="+metrics, "LOAD_CPUPROFILE="+e.cpuProf, "LOAD_MEMPROFILE="+e.memProf)
		configMetrics = ""
	}
	ag, err := newAgentProc(e.svidd, dir, configMetrics, e.logLevel, sc.TTL, agentEnv)
	if err != nil {
		return nil, err
	}
	ag.metrics = metrics
	if err := ag.start(); err != nil {
		return nil, err
	}
	defer func() {
		if serr := ag.stop(10 * time.Second); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := ag.waitReady(e.timeout); err != nil {
		return nil, err
	}
	e.logf("%s: svidd pid %d ready in %s", sc.Name, ag.pid(), time.Since(ag.startedAt).Round(time.Millisecond))

	entries, err := e.register(ag.client, sc)
	if err != nil {
		return nil, err
	}
	time.Sleep(e.settle)
	if res.Idle, err = ag.sample(); err != nil {
		return nil, err
	}

	workers, all, err := e.startWorkers(exe, ag.api, sc)
	if err != nil {
		return nil, err
	}
	defer closeWorkers(all)

	if e.cpuProf != "" || e.memProf != "" {
		ag.signal(syscall.SIGUSR1)
	}
	if err := e.burst(workers, sc, res); err != nil {
		return res, err
	}
	time.Sleep(e.settle)
	if res.Open, err = ag.sample(); err != nil {
		return res, err
	}

	if err := e.change(ag, workers, sc, entries, res); err != nil {
		return res, err
	}
	if res.After, err = ag.sample(); err != nil {
		return res, err
	}
	if e.cpuProf != "" || e.memProf != "" {
		ag.signal(syscall.SIGUSR2)
	}

	// A fresh caller after the burst: a new process of the first uid, timed from its dial to
	// its first SVID.
	if res.Fresh, res.FreshErr, err = e.freshCaller(exe, ag.api); err != nil {
		return res, err
	}

	if err := e.churn(workers[0], sc, ag.sample, res); err != nil {
		return res, err
	}

	if sc.Cold {
		if err := e.coldStart(ag, exe, sc, res); err != nil {
			return res, err
		}
	}
	res.Elapsed = time.Since(begin)
	return res, nil
}

// churn, if the scenario asks for it, has w open and close streams at the scenario's pace,
// and samples the server (before and after) with sample.
func (e *env) churn(w *workerProc, sc scenario, sample func() (usage, error), res *result) error {
	if sc.ChurnRate <= 0 || sc.ChurnFor <= 0 {
		return nil
	}
	u, err := sample()
	if err != nil {
		return err
	}
	res.BeforeChurn = &u
	if err := w.send(command{Cmd: "churn", Rate: sc.ChurnRate, DurationMS: sc.ChurnFor.Milliseconds(), TimeoutMS: e.timeout.Milliseconds()}); err != nil {
		return err
	}
	ce, err := w.until(evChurn, 2*sc.ChurnFor+e.timeout+5*time.Second, nil)
	if err != nil {
		return err
	}
	for _, l := range ce.Lats {
		res.Churn = append(res.Churn, time.Duration(l))
	}
	res.ChurnFailed = ce.Failed
	for _, l := range ce.Floor {
		res.ChurnFloor = append(res.ChurnFloor, time.Duration(l))
	}
	time.Sleep(e.settle)
	after, err := sample()
	if err != nil {
		return err
	}
	res.AfterChurn = &after
	return nil
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.log, format+"\n", args...)
}

// register creates the scenario's entries through the admin API, a few at a time.
func (e *env) register(c *admin.Client, sc scenario) ([]admin.Entry, error) {
	start := time.Now()
	total := sc.Entries + sc.Extra
	out := make([]admin.Entry, total)
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout+time.Duration(total)*20*time.Millisecond)
	defer cancel()
	const parallel = 4
	errs := make(chan error, parallel)
	for p := range parallel {
		go func() {
			for i := p; i < total; i += parallel {
				uid := e.uidBase + i%sc.UIDs
				if i >= sc.Entries {
					uid = e.uidBase + sc.UIDs + (i - sc.Entries) // a caller that never connects
				}
				w := admin.Entry{
					SPIFFEID:    spiffeIDOf(i),
					Selectors:   []string{fmt.Sprintf("unix:uid:%d", uid)},
					X509SVIDTTL: int64(sc.TTL / time.Second),
				}
				got, err := c.CreateEntry(ctx, w)
				if err != nil {
					errs <- fmt.Errorf("registering entry %d: %w", i, err)
					return
				}
				out[i] = got
			}
			errs <- nil
		}()
	}
	var first error
	for range parallel {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	if first != nil {
		return nil, first
	}
	e.logf("%s: registered %d entries in %s", sc.Name, total, time.Since(start).Round(time.Millisecond))
	return out, nil
}

// startWorkers starts the processes that hold the streams (clients) and returns them with
// every process it started (all, to close at the end).
//
// By default one client holds every connection and stream, and the connections are made by a
// thin connector per uid (the tool in worker mode, as that uid) that hands the connected
// descriptors over: the agent sees M callers, and the load generator costs one process, not
// M Go runtimes competing with the agent for the CPUs. With -procPerUID each uid's worker
// dials and holds its own share, as M separate Envoys would.
func (e *env) startWorkers(exe, socket string, sc scenario) (clients, all []*workerProc, err error) {
	start := time.Now()
	defer func() {
		if err != nil {
			for _, w := range all {
				w.close(time.Second)
			}
			clients, all = nil, nil
		}
	}()
	connsOf := func(u int) int { return (sc.Conns - u + sc.UIDs - 1) / sc.UIDs }
	if e.procPerUID {
		specs := make([]workerSpec, sc.UIDs)
		for u := range specs {
			specs[u] = workerSpec{Socket: socket, TrustDomain: trustDomain, Conns: connsOf(u)}
		}
		for j := range sc.Streams {
			u, c, i := sc.uidOf(j), sc.connOf(j), sc.entryOf(j)
			specs[u].Streams = append(specs[u].Streams, streamSpec{ID: j, Conn: c / sc.UIDs, SPIFFEID: spiffeIDOf(i), Entry: i})
		}
		for u := range specs {
			w, err := startWorker(exe, e.uidBase+u, e.root)
			if err != nil {
				return nil, all, err
			}
			all = append(all, w)
			if err := w.send(command{Cmd: "spec", Spec: &specs[u], TimeoutMS: e.timeout.Milliseconds()}); err != nil {
				return nil, all, err
			}
		}
		clients = all
	} else {
		// Connectors: one per uid, each making that uid's connections.
		connectors := make([]*workerProc, sc.UIDs)
		ends := make([]*os.File, sc.UIDs)
		defer func() {
			for _, f := range ends {
				if f != nil {
					f.Close()
				}
			}
		}()
		for u := range connectors {
			mine, theirs, err := seqpacketPair()
			if err != nil {
				return nil, all, err
			}
			ends[u] = mine
			w, err := startWorker(exe, e.uidBase+u, e.root, theirs)
			theirs.Close()
			if err != nil {
				return nil, all, err
			}
			connectors[u] = w
			all = append(all, w)
			if err := w.send(command{Cmd: "connect", Socket: socket, Conns: connsOf(u)}); err != nil {
				return nil, all, err
			}
		}
		fds := make([][]*os.File, sc.UIDs)
		if err := eachIndex(sc.UIDs, func(u int) error {
			got, err := receiveConns(ends[u], connsOf(u), e.timeout)
			if err != nil {
				return fmt.Errorf("connector uid %d: %w (%s)", e.uidBase+u, err, connectors[u].stderr.String())
			}
			fds[u] = got
			_, err = connectors[u].until(evConnected, e.timeout, nil)
			return err
		}); err != nil {
			return nil, all, err
		}
		// Global connection c belongs to uid index c%M, which made it as its (c/M)-th.
		files := make([]*os.File, sc.Conns)
		for c := range files {
			files[c] = fds[c%sc.UIDs][c/sc.UIDs]
		}
		spec := workerSpec{Socket: socket, TrustDomain: trustDomain, Conns: sc.Conns, InheritedConns: true}
		for j := range sc.Streams {
			i := sc.entryOf(j)
			spec.Streams = append(spec.Streams, streamSpec{ID: j, Conn: sc.connOf(j), SPIFFEID: spiffeIDOf(i), Entry: i})
		}
		client, err := startWorker(exe, e.uidBase, e.root, files...)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			return nil, all, err
		}
		all = append(all, client)
		clients = []*workerProc{client}
		if err := client.send(command{Cmd: "spec", Spec: &spec, TimeoutMS: e.timeout.Milliseconds()}); err != nil {
			return nil, all, err
		}
	}
	if err := eachWorker(clients, func(w *workerProc) error {
		_, err := w.until(evReady, e.timeout+5*time.Second, nil)
		return err
	}); err != nil {
		return nil, all, err
	}
	e.logf("%s: %d process(es) with %d connection(s) from %d uid(s) ready in %s", sc.Name, len(all), sc.Conns, sc.UIDs, time.Since(start).Round(time.Millisecond))
	return clients, all, nil
}

// closeWorkers closes every worker process at once, each within 5 s.
func closeWorkers(all []*workerProc) {
	var wg sync.WaitGroup
	for _, w := range all {
		wg.Add(1)
		go func() { defer wg.Done(); w.close(5 * time.Second) }()
	}
	wg.Wait()
}

// eachIndex runs f(0…n-1) concurrently, at most 64 at a time, and returns the first error.
func eachIndex(n int, f func(int) error) error {
	sem := make(chan struct{}, 64)
	errs := make(chan error, n)
	for i := range n {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- f(i)
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// eachWorker runs f for every worker concurrently and returns the first error.
func eachWorker(ws []*workerProc, f func(*workerProc) error) error {
	errs := make(chan error, len(ws))
	for _, w := range ws {
		go func() { errs <- f(w) }()
	}
	var first error
	for range ws {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// burst tells every worker to open all its streams at once and collects first-secret times.
func (e *env) burst(workers []*workerProc, sc scenario, res *result) error {
	var mu sync.Mutex
	var lastAt int64
	start := time.Now()
	for _, w := range workers {
		if err := w.send(command{Cmd: "open", TimeoutMS: e.timeout.Milliseconds()}); err != nil {
			return err
		}
	}
	err := eachWorker(workers, func(w *workerProc) error {
		oe, err := w.until(evOpened, e.timeout+10*time.Second, func(ev event) {
			if ev.T != evFirst {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ev.Err != "" {
				res.Failed++
				if res.FirstErr == "" {
					res.FirstErr = ev.Err
				}
				return
			}
			res.Served++
			res.First = append(res.First, time.Duration(ev.LatNS))
			lastAt = max(lastAt, ev.At)
		})
		mu.Lock()
		res.ClientCPU += time.Duration(oe.CPUNS)
		mu.Unlock()
		return err
	})
	if err != nil {
		return err
	}
	if res.Served == sc.Streams {
		res.AllServed = time.Unix(0, lastAt).Sub(start)
	}
	e.logf("%s: %d/%d streams served in %s (%d failed%s)", sc.Name, res.Served, sc.Streams, time.Since(start).Round(time.Millisecond), res.Failed, errSuffix(res.FirstErr))
	return nil
}

func errSuffix(s string) string {
	if s == "" {
		return ""
	}
	return ", first error: " + truncate(s, 300)
}

// change makes the scenario's change and measures how long each affected stream took to
// receive it.
func (e *env) change(ag *agentProc, workers []*workerProc, sc scenario, entries []admin.Entry, res *result) error {
	res.PushMode = sc.Change
	if sc.Change == "none" {
		return nil
	}
	kind := "cert"
	since := time.Now().UnixNano()
	t0 := map[int]int64{} // entry → when its change was made (entry mode)
	var bundleAt int64
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	switch sc.Change {
	case "entry":
		held := map[int]bool{}
		for j := range sc.Streams {
			held[sc.entryOf(j)] = true
		}
		ids := make([]int, 0, len(held))
		for i := range held {
			ids = append(ids, i)
		}
		sort.Ints(ids)
		for _, i := range ids {
			w := entries[i]
			w.DNSNames = []string{fmt.Sprintf("changed-%d.load.test", time.Now().UnixNano())}
			t0[i] = time.Now().UnixNano()
			if _, err := ag.client.UpdateEntry(ctx, w); err != nil {
				return fmt.Errorf("updating entry %d: %w", i, err)
			}
		}
	case "bundle":
		kind = "bundle"
		bundleAt = time.Now().UnixNano()
		if _, err := ag.client.CAStep(ctx, "prepare"); err != nil {
			res.PushNote = "bundle change unavailable: " + err.Error()
			return nil
		}
	case "rotate":
		// Nothing to do: short-lived SVIDs rotate on their own. Wait for one rotation.
	}

	timeout := e.timeout
	if sc.Change == "rotate" {
		timeout = sc.TTL + e.timeout
	}
	var mu sync.Mutex
	at := map[int]int64{} // stream → when it saw the change
	entryOf := map[int]int{}
	for _, w := range workers {
		if err := w.send(command{Cmd: "await", Kind: kind, Since: since, TimeoutMS: timeout.Milliseconds()}); err != nil {
			return err
		}
	}
	err := eachWorker(workers, func(w *workerProc) error {
		_, err := w.until(evAwaited, timeout+10*time.Second, func(ev event) {
			if ev.T != evPush || ev.Err != "" {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ev.At == 0 {
				res.PushMissing++
				return
			}
			at[ev.Stream] = ev.At
			entryOf[ev.Stream] = sc.entryOf(ev.Stream)
		})
		return err
	})
	if err != nil {
		return err
	}
	// The change's start: when it was made, or (rotate) when its first stream saw it, since
	// only the agent knows the jittered rotation instant.
	origin := map[int]int64{}
	for j, t := range at {
		i := entryOf[j]
		switch sc.Change {
		case "entry":
			origin[i] = t0[i]
		case "bundle":
			origin[i] = bundleAt
		case "rotate":
			if o, ok := origin[i]; !ok || t < o {
				origin[i] = t
			}
		}
	}
	var first, last int64
	for j, t := range at {
		o := origin[entryOf[j]]
		res.Push = append(res.Push, time.Duration(t-o))
		if first == 0 || o < first {
			first = o
		}
		last = max(last, t)
	}
	if len(at) > 0 && res.PushMissing == 0 {
		res.PushTotal = time.Duration(last - first)
	}
	if sc.Change == "rotate" {
		res.PushNote = "rotate: measured from the first stream that received each new SVID"
	}
	e.logf("%s: change %s reached %d stream(s), %d missing", sc.Name, sc.Change, len(at), res.PushMissing)
	return nil
}

// freshCaller starts a new worker as the first uid and has it dial, open one stream and
// wait for its SVID.
func (e *env) freshCaller(exe, socket string) (time.Duration, string, error) {
	w, err := startWorker(exe, e.uidBase, e.root)
	if err != nil {
		return 0, "", err
	}
	defer w.close(5 * time.Second)
	spec := workerSpec{Socket: socket, TrustDomain: trustDomain, Streams: []streamSpec{{ID: 0, SPIFFEID: spiffeIDOf(0)}}}
	if err := w.send(command{Cmd: "spec", Spec: &spec, TimeoutMS: e.timeout.Milliseconds()}); err != nil {
		return 0, "", err
	}
	if _, err := w.until(evReady, e.timeout, nil); err != nil {
		return 0, "", err
	}
	if err := w.send(command{Cmd: "probe", TimeoutMS: e.timeout.Milliseconds()}); err != nil {
		return 0, "", err
	}
	pe, err := w.until(evProbe, e.timeout+5*time.Second, nil)
	if err != nil {
		return 0, "", err
	}
	return time.Duration(pe.LatNS), pe.Err, nil
}

// coldStart stops the agent, then times a restart on the same data dir (entries in the
// store) until one stream of the first uid gets its SVID.
func (e *env) coldStart(ag *agentProc, exe string, sc scenario, res *result) error {
	if err := ag.stop(10 * time.Second); err != nil {
		return err
	}
	ag.env = nil // the profiles were of the first run; the restart must not overwrite them
	w, err := startWorker(exe, e.uidBase, e.root)
	if err != nil {
		return err
	}
	defer w.close(5 * time.Second)
	spec := workerSpec{Socket: ag.api, TrustDomain: trustDomain, Streams: []streamSpec{{ID: 0, SPIFFEID: spiffeIDOf(0)}}}
	if err := w.send(command{Cmd: "spec", Spec: &spec, TimeoutMS: e.timeout.Milliseconds()}); err != nil {
		return err
	}
	if _, err := w.until(evReady, e.timeout, nil); err != nil {
		return err
	}
	if err := w.send(command{Cmd: "coldprobe", TimeoutMS: e.timeout.Milliseconds()}); err != nil {
		return err
	}
	// The probe is polling for the socket; start the agent now.
	time.Sleep(20 * time.Millisecond)
	if err := ag.start(); err != nil {
		return err
	}
	ce, err := w.until(evCold, e.timeout+5*time.Second, nil)
	if err != nil {
		return err
	}
	if ce.Err != "" {
		res.ColdErr = ce.Err
		return nil
	}
	res.Cold = time.Unix(0, ce.At).Sub(ag.startedAt)
	return nil
}

// percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of ds, or -1 if empty.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(float64(len(s))*p/100)) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

// loadAvg is the first field of /proc/loadavg, or "?".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// waitQuiet waits up to e.quiet for the host to have at most one runnable thread besides
// this tool: on a shared machine other work skews every figure.
func (e *env) waitQuiet(name string) {
	if e.quiet <= 0 {
		return
	}
	deadline := time.Now().Add(e.quiet)
	for {
		r := runnable()
		if v, err := strconv.ParseFloat(r, 64); err != nil || v <= 1 {
			return
		}
		if time.Now().After(deadline) {
			e.logf("%s: host still busy (%s runnable) after waiting %s; measuring anyway", name, r, e.quiet)
			return
		}
		time.Sleep(time.Second)
	}
}

// runnable samples procs_running from /proc/stat ten times over 200 ms and returns the mean
// minus one (the sampling thread itself).
func runnable() string {
	var sum, n float64
	for range 10 {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return "?"
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "procs_running "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err == nil {
					sum += f - 1
					n++
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n == 0 {
		return "?"
	}
	return strconv.FormatFloat(sum/n, 'f', 1, 64)
}
