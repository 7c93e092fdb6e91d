package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

// runCAShow lists the authorities in the bundle: state, validity and SKI.
func runCAShow(ctx context.Context, g globalFlags, args []string, env Env) error {
	return caCommand(ctx, g, "ca show", args, env, func(c *admin.Client) ([]admin.Authority, error) {
		return c.Authorities(ctx)
	})
}

// runCAPrepare publishes the next CA in the bundle now instead of at half the active CA's life.
func runCAPrepare(ctx context.Context, g globalFlags, args []string, env Env) error {
	return caCommand(ctx, g, "ca prepare", args, env, func(c *admin.Client) ([]admin.Authority, error) {
		return c.CAStep(ctx, "prepare")
	})
}

// runCAActivate makes the prepared CA sign new SVIDs now; the old one stays in the bundle
// until it expires, so SVIDs it signed keep verifying.
func runCAActivate(ctx context.Context, g globalFlags, args []string, env Env) error {
	return caCommand(ctx, g, "ca activate", args, env, func(c *admin.Client) ([]admin.Authority, error) {
		return c.CAStep(ctx, "activate")
	})
}

func caCommand(ctx context.Context, g globalFlags, name string, args []string, env Env, do func(*admin.Client) ([]admin.Authority, error)) error {
	var f entryFlags
	fs := newFlagSet(name, env)
	f.register(fs, g, "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	as, err := do(newClient(f.g))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if f.output == "json" {
		return printJSON(env.Stdout, as)
	}
	return renderAuthorities(env.Stdout, as, time.Now())
}

func renderAuthorities(w io.Writer, as []admin.Authority, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tSKI\tNOT BEFORE\tNOT AFTER\tKEY\tLIFETIME LEFT")
	for _, a := range as {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.State, a.SKI, stamp(a.NotBefore), stamp(a.NotAfter), a.KeyType, lifetime(a.NotBefore, a.NotAfter, now))
	}
	return tw.Flush()
}
