package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

// runNodeList lists every host of the fleet registry: up, behind or gone, with what each
// published about itself.
func runNodeList(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("node list", env)
	f.register(fs, g, "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	nl, err := newClient(f.g).Nodes(ctx)
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	if f.output == "json" {
		return printJSON(env.Stdout, nl)
	}
	return renderNodes(env.Stdout, nl)
}

// runNodeForget deletes the record of a host that is gone for good.
func runNodeForget(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("node forget", env)
	f.register(fs, g, "output")
	// The name may come before the flags or after them.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return flagError(fs, err, env)
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 || name == "" {
		return usageError{"node forget: name one host: svidctl node forget NAME"}
	}
	n, err := newClient(f.g).ForgetNode(ctx, name)
	if err != nil {
		return fmt.Errorf("forgetting node: %w", err)
	}
	if f.output == "json" {
		return printJSON(env.Stdout, n)
	}
	_, err = fmt.Fprintf(env.Stdout, "Forgot host %s (last seen %s).\n", n.Name, stamp(n.LastSeen))
	return err
}

func renderNodes(w io.Writer, nl admin.NodeList) error {
	if len(nl.Nodes) == 0 {
		_, err := fmt.Fprintln(w, "No host has a node record yet.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGROUPS\tSTATE\tVERSION\tCA EXPIRES\tREVISION\tLAST SEEN")
	var problems []string
	for _, n := range nl.Nodes {
		groups := strings.Join(n.Groups, ",")
		if groups == "" {
			groups = "-"
		}
		ca, seen := "-", "-"
		if !n.CANotAfter.IsZero() {
			ca = stamp(n.CANotAfter)
		}
		if !n.LastSeen.IsZero() {
			seen = fmt.Sprintf("%s (%s ago)", stamp(n.LastSeen), roundDur(max(nl.Now.Sub(n.LastSeen), 0)))
		}
		state := strings.ToUpper(n.State)
		if n.State == "up" {
			state = n.State
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, groups, state, orDash(n.Version), ca, n.Revision, seen)
		if n.Problem != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", n.Name, n.Problem))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nNewest registry change: revision %d. BEHIND: up, but its copy lacked that change %s after it was made.\n",
		nl.LastChange, time.Duration(nl.BehindAfter)*time.Second)
	fmt.Fprintln(w, "GONE: no alive key (stopped, crashed, or cut off from etcd); svidctl node forget NAME removes its record.")
	for _, p := range problems {
		fmt.Fprintln(w, "problem:", p)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
