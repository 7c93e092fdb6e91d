// Command profsvidd is svidd with profiling hooks, for the load tool only (it never ships):
// the same `run` flags and config, the same agent, plus
//
//	LOAD_CPUPROFILE=FILE   CPU profile from SIGUSR1 to SIGUSR2 (or exit), written to FILE
//	LOAD_MEMPROFILE=FILE   heap profile written to FILE at SIGUSR2 (or exit)
//	LOAD_METRICS_ADDR=ADDR the Go runtime's Prometheus metrics (go_goroutines,
//	                       go_memstats_heap_inuse_bytes …) on http://ADDR/metrics
//
// so svidd's own code stays free of profiling switches. `go run ./test/load -cpuprofile F`
// builds and runs it in place of cmd/svidd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/svidd/svidd/agent"
	"github.com/svidd/svidd/conf"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "profsvidd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "run" {
		return errors.New("usage: profsvidd run [svidd run flags]")
	}
	fs := flag.NewFlagSet("profsvidd run", flag.ContinueOnError)
	configPath := fs.String("config", "", "HCL config file")
	var o conf.Overrides
	opt := func(dst **string, name string) { fs.Func(name, name, func(v string) error { *dst = &v; return nil }) }
	opt(&o.TrustDomain, "trustDomain")
	opt(&o.SocketPath, "socketPath")
	opt(&o.AdminSocketPath, "adminSocketPath")
	opt(&o.DataDir, "dataDir")
	opt(&o.LogLevel, "logLevel")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := conf.LoadFile(*configPath, o)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))

	if addr := os.Getenv("LOAD_METRICS_ADDR"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		defer ln.Close()
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.Handler())
		go http.Serve(ln, mux)
	}
	p := &profiler{cpuPath: os.Getenv("LOAD_CPUPROFILE"), memPath: os.Getenv("LOAD_MEMPROFILE"), log: log}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			if s == syscall.SIGUSR1 {
				p.start()
			} else {
				p.stop()
			}
		}
	}()
	defer p.stop()

	a, err := agent.New(agent.Config{Config: cfg, Logger: log})
	if err != nil {
		return err
	}
	if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

type profiler struct {
	cpuPath, memPath string
	log              *slog.Logger

	mu      sync.Mutex
	cpuFile *os.File
	done    bool
}

func (p *profiler) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cpuPath == "" || p.cpuFile != nil || p.done {
		return
	}
	f, err := os.Create(p.cpuPath)
	if err != nil {
		p.log.Error("cpu profile", "error", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		p.log.Error("cpu profile", "error", err)
		return
	}
	p.cpuFile = f
}

// stop ends the CPU profile and writes the heap profile, once.
func (p *profiler) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.done = true
	if p.cpuFile != nil {
		pprof.StopCPUProfile()
		p.cpuFile.Close()
	}
	if p.memPath != "" {
		runtime.GC()
		f, err := os.Create(p.memPath)
		if err != nil {
			p.log.Error("heap profile", "error", err)
			return
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			p.log.Error("heap profile", "error", err)
		}
	}
}
