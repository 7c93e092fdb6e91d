// Command svidd is the SPIFFE node agent: `svidd run [-config FILE] [flags]`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/svidd/svidd/agent"
	"github.com/svidd/svidd/conf"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "svidd:", err)
		}
		os.Exit(1)
	}
}

// errReported means the error was already written in full (config diagnostics).
var errReported = errors.New("reported")

const usage = `Usage: svidd <command> [flags]

Commands:
  run       start the agent (flags override the config file, which overrides defaults)
  config    print the default configuration

Run 'svidd run -h' for the flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "run":
		return runAgent(ctx, args[1:], stderr)
	case "config":
		fs := flag.NewFlagSet("svidd config", flag.ContinueOnError)
		fs.SetOutput(stderr)
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return errReported
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("config: unexpected arguments: %v", fs.Args())
		}
		_, err := stdout.Write(conf.DefaultFile)
		return err
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("svidd run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "HCL config file (default: built-in defaults)")
	var o conf.Overrides
	optString(fs, &o.TrustDomain, "trustDomain", "trust domain, e.g. example.org")
	optString(fs, &o.SocketPath, "socketPath", "api socket path (SDS and Workload API)")
	optString(fs, &o.AdminSocketPath, "adminSocketPath", "admin socket path (svidctl)")
	optString(fs, &o.DataDir, "dataDir", "data directory (store and CA)")
	optString(fs, &o.LogLevel, "logLevel", "debug, info, warn or error")
	fresh := fs.Bool("fresh", false, "start even though the data dir holds the CA without the store or the store without the CA, creating the missing one (a new CA changes the trust bundle)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errReported
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}

	cfg, err := conf.LoadFile(*configPath, o)
	if err != nil {
		var de *conf.DiagError
		if errors.As(err, &de) {
			// One grep-able file:line:col line per problem, then each with its source lines.
			fmt.Fprintf(stderr, "svidd: invalid configuration:\n%s\n\n", de.Error())
			_ = de.Write(stderr, false)
			return errReported
		}
		return err
	}
	level := new(slog.LevelVar)
	level.Set(cfg.LogLevel)
	log := newLogger(stderr, level, cfg.LogFormat)
	// Listen first: a socket or port in use fails the start before anything is created.
	ls, err := agent.Listen(cfg)
	if err != nil {
		return err
	}
	a, err := agent.New(agent.Config{Config: cfg, Logger: log, Level: level, Fresh: *fresh, OnReady: func() { sdNotify("READY=1") }})
	if err != nil {
		ls.Close()
		return err
	}
	stopReload := reloadOnSIGHUP(ctx, a, *configPath, o, log)
	defer stopReload()
	err = a.Serve(ctx, ls)
	sdNotify("STOPPING=1")
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// reloadOnSIGHUP re-reads the config file on every SIGHUP and hands it to the agent. A file
// with mistakes is reported and changes nothing: the running configuration stays.
func reloadOnSIGHUP(ctx context.Context, a *agent.Agent, path string, o conf.Overrides, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit: // Run ended on its own (a failure), not by a signal
				return
			case <-hup:
			}
			sdNotify("RELOADING=1")
			cfg, err := conf.LoadFile(path, o)
			if err != nil {
				log.Error("reload: configuration not applied", "config", path, "error", err.Error())
			} else if err := a.Reload(ctx, cfg); err != nil {
				log.Error("reload failed", "error", err)
			}
			sdNotify("READY=1")
		}
	}()
	return func() { signal.Stop(hup); close(quit); <-done }
}

// optString is a string flag that records whether it was set, so only flags given on the
// command line override the file.
func optString(fs *flag.FlagSet, dst **string, name, help string) {
	fs.Func(name, help, func(v string) error { *dst = &v; return nil })
}

func newLogger(w io.Writer, level slog.Leveler, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
