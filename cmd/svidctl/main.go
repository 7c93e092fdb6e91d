// Command svidctl is the operator's CLI for svidd: registration entries, the trust bundle and
// health, over the admin socket. Flag names follow SPIRE's (-spiffeID, -selector, -entryID,
// -x509SVIDTTL, -dns, -output json) so SPIRE users' muscle memory works here.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := Run(ctx, os.Args[1:], Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	if err != nil {
		if !errors.Is(err, errSilent) {
			fmt.Fprintln(os.Stderr, "svidctl:", err)
		}
		os.Exit(exitCode(err))
	}
}

// Env is the command's I/O, so tests run commands in-process.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// DefaultAdminSocket is where svidd listens for svidctl by default.
const DefaultAdminSocket = "/tmp/agent/admin.sock"

// errSilent: the command already said everything (usage printed, health reported).
var errSilent = errors.New("silent")

// usageError is a mistake in the command line: exit 2, like flag's own errors.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

const usage = `Usage: svidctl [-socketPath ADMIN_SOCKET] <command> [flags]

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
  ca show         the CAs in the trust bundle [-output json]
  ca prepare      publish the next CA in the bundle now (normally at half the active CA's life)
  ca activate     sign with the prepared CA now (normally when a sixth of the active CA's life is left)
  svid fetch      as the workload: show its SVIDs, or write them to files with -dir DIR [-spiffeID ID] [-jwtAudience AUD] [-output json]
  svid watch      as the workload: keep -dir DIR up to date, then signal -cmd PROGRAM or the process in -pidFile
                  (the svid commands talk to the Workload API: their -socketPath defaults to ` + DefaultAPISocket + `)

-socketPath (default ` + DefaultAdminSocket + `) may be given before or after the command.
`

// Run runs one svidctl invocation.
func Run(ctx context.Context, args []string, env Env) error {
	g := globalFlags{socketPath: DefaultAdminSocket}
	fs := newFlagSet("svidctl", env)
	fs.StringVar(&g.socketPath, "socketPath", g.socketPath, "path of svidd's admin socket")
	if err := fs.Parse(args); err != nil {
		return flagError(err, env)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(env.Stderr, usage)
		return usageError{"no command given"}
	}
	cmd, rest := rest[0], rest[1:]
	switch cmd {
	case "entry", "bundle", "ca", "svid":
		if len(rest) == 0 {
			fmt.Fprint(env.Stderr, usage)
			return usageError{fmt.Sprintf("%s: which subcommand?", cmd)}
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
	case "help", "-h", "-help", "--help":
		fmt.Fprint(env.Stdout, usage)
		return nil
	}
	fmt.Fprint(env.Stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

type globalFlags struct {
	socketPath string
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
}
