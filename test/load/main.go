// Command load drives a real svidd as many Envoys would and measures it: time to first
// secret, push latency, memory and CPU per stream, a fresh caller after a burst, cold start.
//
//	go run ./test/load [-streams N] [-conns C] [-uids M] [-entries E] [-change entry|bundle|rotate|none] ...
//	go run ./test/load -suite -csv docs/bench.csv
//
// It builds svidd (or takes -svidd PATH), starts it in a temp dir under /tmp, registers E
// entries through the admin API (entry i is spiffe://example.org/load/i for uid base+i%M),
// and re-executes itself as one worker per uid (as that uid, when run as root), each opening
// its share of the N streams over its share of the C connections and reporting timings as
// JSON lines. Everything is bounded: every wait has a timeout, and svidd and the workers die
// with the tool. See docs/BENCHMARKS.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

func main() {
	// Worker mode is internal: the coordinator starts `load -worker` under each uid.
	if len(os.Args) == 2 && os.Args[1] == "-worker" {
		// LOAD_WORKER_CPUPROFILE=PREFIX profiles each worker (PREFIX.PID): what the load
		// generator itself costs, next to the agent's profile (-cpuprofile).
		if prefix := os.Getenv("LOAD_WORKER_CPUPROFILE"); prefix != "" {
			f, err := os.Create(fmt.Sprintf("%s.%d", prefix, os.Getpid()))
			if err == nil && pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
		// The worker stands in for Envoy, whose C++ SDS client costs little per stream; a Go
		// client's garbage collector is a large share of its CPU on these two cores, which
		// the agent then shares. Trade the worker's memory (not measured) for less of it.
		debug.SetGCPercent(800)
		if err := runWorker(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "load worker:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// suite is the scaling curve `-suite` runs, sized to finish in a few minutes on 2 cores.
func suite(change string) []scenario {
	one := func(name string, streams, conns, uids, entries int) scenario {
		return scenario{Name: name, Streams: streams, Conns: conns, UIDs: uids, Entries: entries, Change: change, Cold: true}
	}
	u1000x9000 := one("u1000x9000", 1000, 1000, 1000, 1000)
	u1000x9000.Extra = 9000 // 10,000 entries in the store, one per connected caller
	idle := one("idle", 1, 1, 1, 1)
	idle.ChurnRate, idle.ChurnFor = 20, 2*time.Second // one stream at a time on an idle agent
	return []scenario{
		idle,
		one("s10", 10, 1, 1, 1),
		one("s100", 100, 1, 1, 1),
		one("s1000", 1000, 1, 1, 1),
		one("s10000", 10000, 1, 1, 1),
		one("c1000", 1000, 1000, 1, 1),
		one("e1000", 10, 1, 1, 1000),
		one("u1000", 1000, 1000, 1000, 1000),
		one("u1000e10000", 1000, 1000, 1000, 10000),
		u1000x9000,
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		sc       scenario
		e        = &env{log: stderr}
		csvPath  = fs.String("csv", "", "append one CSV row per scenario to this file")
		doSuite  = fs.Bool("suite", false, "run the scaling suite (10…10,000 streams, 1,000 connections, 1,000 callers) instead of one scenario")
		only     = fs.String("only", "", "with -suite: comma-separated scenario names to run")
		sviddBin = fs.String("svidd", "", "svidd binary to test (default: go build ./cmd/svidd)")
		noCold   = fs.Bool("nocold", false, "skip the cold-start measurement")
		noFloor  = fs.Bool("nofloor", false, "do not run the floor server (test/load/floorsds) after each one-entry scenario")
	)
	fs.IntVar(&sc.Streams, "streams", 1, "SDS streams to open at once")
	fs.IntVar(&sc.Conns, "conns", 1, "connections the streams are spread over")
	fs.IntVar(&sc.UIDs, "uids", 1, "distinct callers (uids); more than 1 needs root")
	fs.IntVar(&sc.Entries, "entries", 1, "registration entries for the callers (entry i: uid base+i%uids)")
	fs.IntVar(&sc.Extra, "extraEntries", 0, "further entries for uids that never connect (a full store, no extra SVIDs)")
	fs.StringVar(&sc.Change, "change", "bundle", "change pushed to the open streams: bundle (CA prepare), entry (DNS names of every held entry), rotate (short -ttl), none")
	fs.DurationVar(&sc.TTL, "ttl", 0, "SVID TTL for the entries (0: svidd's default; -change rotate needs a short one, e.g. 5s, the shortest accepted)")
	fs.Float64Var(&sc.ChurnRate, "churn", 0, "after the change, open and close this many streams per second (first uid)")
	fs.DurationVar(&sc.ChurnFor, "duration", 10*time.Second, "how long -churn runs")
	fs.StringVar(&sc.Name, "name", "", "scenario name in the table and CSV (default: derived)")
	fs.IntVar(&e.uidBase, "uidBase", 1001, "uid of the first caller when run as root")
	fs.StringVar(&e.logLevel, "logLevel", "warn", "svidd log level")
	fs.StringVar(&e.metrics, "metrics", "auto", `127.0.0.1 address svidd serves Prometheus metrics on, for goroutines and heap ("auto": a free port; "": none)`)
	fs.DurationVar(&e.timeout, "timeout", 60*time.Second, "bound on every wait")
	fs.DurationVar(&e.settle, "settle", time.Second, "pause before each memory sample")
	fs.BoolVar(&e.procPerUID, "procPerUID", false, "one full client process per uid (as separate Envoys) instead of one client over connections made by per-uid connectors")
	fs.DurationVar(&e.quiet, "waitQuiet", 0, "before each scenario, wait up to this long for the host to be idle (at most one other runnable thread)")
	fs.BoolVar(&e.keep, "keep", false, "keep the temp dir (svidd's log) after the run")
	fs.StringVar(&e.cpuProf, "cpuprofile", "", "write svidd's CPU profile of the burst and the change here (runs svidd's profiling wrapper, test/load/profsvidd)")
	fs.StringVar(&e.memProf, "memprofile", "", "write svidd's heap profile after the change here (profiling wrapper)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	sc.Cold = !*noCold
	e.root = os.Geteuid() == 0
	if !e.root {
		e.uidBase = os.Getuid()
	}
	for _, p := range []*string{&e.cpuProf, &e.memProf} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return err
			}
			*p = abs
		}
	}
	e.profsvidd = e.cpuProf != "" || e.memProf != ""
	if e.profsvidd && *sviddBin != "" {
		return errors.New("-cpuprofile and -memprofile run the profiling wrapper: do not give -svidd")
	}

	var scenarios []scenario
	if *doSuite {
		for _, s := range suite(sc.Change) {
			if *only == "" || contains(strings.Split(*only, ","), s.Name) {
				s.Cold = sc.Cold
				if sc.ChurnRate > 0 {
					s.ChurnRate, s.ChurnFor = sc.ChurnRate, sc.ChurnFor
				}
				scenarios = append(scenarios, s)
			}
		}
		if len(scenarios) == 0 {
			return fmt.Errorf("-only %q matches no suite scenario", *only)
		}
	} else {
		if sc.Name == "" {
			sc.Name = fmt.Sprintf("n%dc%du%de%d", sc.Streams, sc.Conns, sc.UIDs, sc.Entries+sc.Extra)
		}
		scenarios = []scenario{sc}
	}
	for _, s := range scenarios {
		if err := s.validate(e.root); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}

	if n := raiseNoFile(); n > 0 {
		e.logf("RLIMIT_NOFILE %d (svidd, a Go program, raises its own soft limit to the hard limit)", n)
	}
	binDir, err := os.MkdirTemp("/tmp", "svl-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	e.svidd = *sviddBin
	if e.svidd == "" {
		pkg := "./cmd/svidd"
		if e.profsvidd {
			pkg = "./test/load/profsvidd"
		}
		if e.svidd, err = build(binDir, pkg); err != nil {
			return err
		}
	}

	if !*noFloor {
		if e.floor, err = build(binDir, "./test/load/floorsds"); err != nil {
			return err
		}
	}

	var results []*result
	var runErr error
	for _, s := range scenarios {
		r, err := e.run(s)
		if err != nil {
			runErr = fmt.Errorf("%s: %w", s.Name, err)
			e.logf("%v", runErr)
			if r == nil {
				break
			}
		}
		if err == nil && e.floor != "" && s.floorable() {
			e.waitQuiet(s.Name + " floor")
			if r.Floor, err = e.runFloor(s); err != nil {
				runErr = fmt.Errorf("%s floor: %w", s.Name, err)
				e.logf("%v", runErr)
				r.Floor = nil
			}
		}
		results = append(results, r)
		if err != nil {
			break
		}
	}
	if len(results) > 0 {
		fmt.Fprintln(stdout)
		printTable(stdout, results)
		if *csvPath != "" {
			if err := appendCSV(*csvPath, results); err != nil {
				return fmt.Errorf("writing %s: %w", *csvPath, err)
			}
		}
	}
	if e.cpuProf != "" {
		e.logf("svidd CPU profile: %s (go tool pprof -top %s %s)", e.cpuProf, e.svidd, e.cpuProf)
	}
	return runErr
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit (workers hold one descriptor per
// connection) and returns it. Go does this at start-up since 1.19, but not for the limit
// children inherit; doing it explicitly keeps the workers' limit high too.
func raiseNoFile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}
