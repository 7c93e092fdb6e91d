package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/svidd/svidd/pkg/admin"
)

func newFlagSet(name string, env Env) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	// flagError prints the usage: to stdout when asked for (-h), to stderr after a mistake.
	fs.Usage = func() {}
	return fs
}

// flagError turns flag's parse error into ours (flag already printed the error) and prints
// the command's flags.
func flagError(fs *flag.FlagSet, err error, env Env) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(env.Stdout, "Usage: svidctl %s [flags]\n\nFlags:\n", fs.Name())
		fs.SetOutput(env.Stdout)
		fs.PrintDefaults()
		fs.SetOutput(env.Stderr)
		return errHelp
	}
	fmt.Fprintf(env.Stderr, "Usage: svidctl %s [flags]\n", fs.Name())
	fs.PrintDefaults()
	return usageError{err.Error()}
}

// listFlag collects a repeatable flag (-selector a -selector b).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// outputFlag is -output pretty|json.
type outputFlag string

func (o *outputFlag) String() string { return string(*o) }
func (o *outputFlag) Set(v string) error {
	switch v {
	case "pretty", "json":
		*o = outputFlag(v)
		return nil
	}
	return fmt.Errorf("want pretty or json, not %q", v)
}

// commonFlags registers -socketPath on a subcommand's flag set (SPIRE users type it after the
// subcommand), defaulting to the value given before it.
func commonFlags(fs *flag.FlagSet, g *globalFlags) {
	fs.StringVar(&g.socketPath, "socketPath", g.socketPath, "path of svidd's admin socket")
}

func parseSub(fs *flag.FlagSet, args []string, env Env) error {
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err, env)
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("%s: unexpected arguments %q (flags go before them? every value needs its flag)", fs.Name(), fs.Args())}
	}
	return nil
}

// printJSON writes v as indented JSON, the -output json of every command.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newClient(g globalFlags) *admin.Client { return admin.NewClient(g.socketPath) }
