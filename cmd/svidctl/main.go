// Command svidctl is the operator's CLI for svidd: registration entries, the trust bundle and
// health, over the admin socket. Flag names follow SPIRE's (-spiffeID, -selector, -entryID,
// -x509SVIDTTL, -dns, -output json) so SPIRE users' muscle memory works here.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := Run(ctx, os.Args[1:], Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	if err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintln(os.Stderr, "svidctl:", err)
		}
		os.Exit(exitCode(err))
	}
}

// Env is the command's I/O and environment, so tests run commands in-process.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads the environment (SVIDD_ADMIN_SOCKET, SPIFFE_ENDPOINT_SOCKET); nil reads
	// nothing, so in-process tests do not depend on the environment they run in.
	Getenv func(string) string
}

func (e Env) getenv(key string) string {
	if e.Getenv == nil {
		return ""
	}
	return e.Getenv(key)
}

// Environment variables naming the sockets, so a unit's /run/svidd/*.sock need not be
// repeated with -socketPath on every call. SPIFFE_ENDPOINT_SOCKET is the Workload API's own
// (go-spiffe and spiffe-helper read it too).
const (
	EnvAdminSocket = "SVIDD_ADMIN_SOCKET"
	EnvAPISocket   = "SPIFFE_ENDPOINT_SOCKET"
)

// DefaultAdminSocket is where svidd listens for svidctl by default.
const DefaultAdminSocket = "/tmp/agent/admin.sock"

// errSilent: the command already said everything (usage printed, health reported).
var errSilent = errors.New("silent")

// errHelp: -h was asked for and the usage printed; exit 0, as flag.ExitOnError programs do.
var errHelp = fmt.Errorf("help requested: %w", errSilent)

// usageError is a mistake in the command line: exit 2, like flag's own errors.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error) int {
	if errors.Is(err, errHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

const usage = `Usage: svidctl [-socketPath SOCKET] <command> [flags]

Commands:
  entry create    register a workload: -spiffeID ID -selector TYPE:VALUE [-selector ...] [-x509SVIDTTL SECONDS] [-dns NAME ...]
                  [-federatesWith spiffe://other.org ...]
  entry update    replace an entry: -entryID ID plus the fields to change
  entry delete    delete an entry: -entryID ID
  entry show      show one entry: -entryID ID
  entry list      list entries [-spiffeID ID] [-selector S ...] [-output json]
  bundle show     print the trust bundle (PEM), or a federated one with -id spiffe://other.org [-format pem|spiffe] [-output json]
  bundle list     the federated trust domains: bundles, endpoints, last refresh and error [-output json]
  bundle set      store a federated bundle by hand: -id spiffe://other.org [-path FILE (default stdin)] [-format pem|spiffe]
  bundle delete   delete a federated bundle: -id spiffe://other.org
  healthcheck     exit 0 when svidd is ready [-verbose]
  status          the agent at a glance: CAs and every identity held, with lifetimes [-output json]
  explain         why a workload gets (no) identity: -pid PID or -uid UID: its selectors, the entries
                  they match, and the nearest entries with the selectors missing [-output json]
  callers         the last callers svidd saw, their selectors and what they got [-n N] [-output json]
  node list       the fleet's hosts (store "etcd"): groups, state (up, behind, gone), version, CA expiry,
                  registry revision, last seen [-output json]
  node forget     delete the record of a host that is gone: node forget NAME
  ca show         the CAs in the trust bundle [-output json]
  ca prepare      publish the next CA in the bundle now (normally at half the active CA's life)
  ca activate     sign with the prepared CA now (normally when a sixth of the active CA's life is left)
  svid fetch      as the workload: show its SVIDs, or write them to files with -dir DIR [-spiffeID ID] [-jwtAudience AUD] [-output json]
  svid watch      as the workload: keep -dir DIR up to date, then signal -cmd PROGRAM or the process in -pidFile
                  (the svid commands talk to the Workload API: their -socketPath defaults to ` + DefaultAPISocket + `)

-socketPath (default ` + DefaultAdminSocket + `, or $` + EnvAdminSocket + `; for the svid commands ` + DefaultAPISocket + `,
or $` + EnvAPISocket + `) may be given before or after the command. 'svidctl COMMAND -h' lists its flags.
`

// Run runs one svidctl invocation.
func Run(ctx context.Context, args []string, env Env) error {
	g, err := defaultSockets(env)
	if err != nil {
		return err
	}
	fs := newFlagSet("svidctl", env)
	fs.StringVar(&g.socketPath, "socketPath", g.socketPath, "path of svidd's socket (admin, or Workload API for the svid commands)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(env.Stdout, usage)
			fmt.Fprintln(env.Stdout, "\nFlags:")
			fs.SetOutput(env.Stdout)
			fs.PrintDefaults()
			return errHelp
		}
		fmt.Fprint(env.Stderr, usage)
		return usageError{err.Error()}
	}
	fs.Visit(func(f *flag.Flag) { g.explicit = true })
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(env.Stderr, usage)
		return usageError{"no command given"}
	}
	cmd, rest := rest[0], rest[1:]
	switch cmd {
	case "entry", "bundle", "ca", "svid", "node":
		if len(rest) == 0 {
			fmt.Fprint(env.Stderr, usage)
			return usageError{fmt.Sprintf("%s: which subcommand?", cmd)}
		}
		if isHelp(rest[0]) {
			fmt.Fprint(env.Stdout, usage)
			return errHelp
		}
		sub := cmd + " " + rest[0]
		if c, ok := commands[sub]; ok {
			return c(ctx, g, rest[1:], env)
		}
		fmt.Fprint(env.Stderr, usage)
		return usageError{fmt.Sprintf("unknown command %q", sub)}
	case "healthcheck":
		return runHealthcheck(ctx, g, rest, env)
	case "status":
		return runStatus(ctx, g, rest, env)
	case "explain":
		return runExplain(ctx, g, rest, env)
	case "callers":
		return runCallers(ctx, g, rest, env)
	case "help":
		fmt.Fprint(env.Stdout, usage)
		return nil
	}
	fmt.Fprint(env.Stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

type globalFlags struct {
	socketPath string // the admin socket, unless explicit and the command is an svid one
	apiSocket  string // the Workload API socket for the svid commands when -socketPath is not given first
	explicit   bool   // -socketPath was given before the command
}

// defaultSockets reads the sockets' defaults from the environment.
func defaultSockets(env Env) (globalFlags, error) {
	g := globalFlags{socketPath: DefaultAdminSocket, apiSocket: DefaultAPISocket}
	if p := env.getenv(EnvAdminSocket); p != "" {
		g.socketPath = p
	}
	if a := env.getenv(EnvAPISocket); a != "" {
		p, err := endpointSocketPath(a)
		if err != nil {
			return g, usageError{fmt.Sprintf("$%s: %v", EnvAPISocket, err)}
		}
		g.apiSocket = p
	}
	return g, nil
}

// endpointSocketPath turns a SPIFFE_ENDPOINT_SOCKET value (unix:///path or unix:/path, as the
// Workload API spec writes it; a bare absolute path is accepted too) into a path.
func endpointSocketPath(v string) (string, error) {
	if strings.HasPrefix(v, "/") {
		return v, nil
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("%q is not a unix:// address: %w", v, err)
	}
	if u.Scheme != "unix" || u.Host != "" || u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return "", fmt.Errorf("%q is not a unix:///absolute/path address (svidd serves only a Unix socket)", v)
	}
	return u.Path, nil
}

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

var commands = map[string]func(context.Context, globalFlags, []string, Env) error{
	"entry create":  runEntryCreate,
	"entry update":  runEntryUpdate,
	"entry delete":  runEntryDelete,
	"entry show":    runEntryShow,
	"entry list":    runEntryList,
	"bundle show":   runBundleShow,
	"bundle list":   runBundleList,
	"bundle set":    runBundleSet,
	"bundle delete": runBundleDelete,
	"ca show":       runCAShow,
	"ca prepare":    runCAPrepare,
	"ca activate":   runCAActivate,
	"svid fetch":    runSVIDFetch,
	"svid watch":    runSVIDWatch,
	"node list":     runNodeList,
	"node forget":   runNodeForget,
}
