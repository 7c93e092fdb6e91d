package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/svidd/svidd/pkg/admin"
)

// runExplain answers "why does this workload get (no) identity?": the selectors svidd derives
// for the process (as for a real connection), the entries they match, and the entries that
// almost match with the selectors missing.
func runExplain(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("explain", env)
	f.register(fs, g, "output")
	pid := fs.Int("pid", 0, "the process to explain (a live pid)")
	uid := fs.Int("uid", -1, "explain what a process of this uid gets, from the uid alone")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	var x admin.Explanation
	var err error
	c := newClient(f.g)
	switch {
	case *pid > 0 && *uid >= 0:
		return usageError{"explain: give -pid or -uid, not both"}
	case *pid > 0:
		x, err = c.ExplainPID(ctx, *pid)
	case *uid >= 0:
		x, err = c.ExplainUID(ctx, uint32(*uid))
	default:
		return usageError{"explain: give -pid PID or -uid UID (svidctl callers lists recent callers)"}
	}
	if err != nil {
		return fmt.Errorf("explaining: %w", err)
	}
	if f.output == "json" {
		return printJSON(env.Stdout, x)
	}
	return renderExplanation(env.Stdout, x)
}

func renderExplanation(w io.Writer, x admin.Explanation) error {
	if x.PID > 0 {
		fmt.Fprintf(w, "Process %d (uid %d, gid %d) has the selectors:\n", x.PID, x.UID, x.GID)
	} else {
		fmt.Fprintf(w, "A process of uid %d has at least the selectors:\n", x.UID)
	}
	for _, s := range x.Selectors {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintln(w)
	if len(x.Matched) == 0 {
		fmt.Fprintln(w, "It matches no entry: it gets no identity (PermissionDenied, or an SDS stream left waiting).")
	} else {
		fmt.Fprintf(w, "It gets %d identities:\n", len(x.Matched))
		for _, e := range x.Matched {
			fmt.Fprintf(w, "  %s  (entry %s%s)\n", e.SPIFFEID, e.ID, configNote(e))
		}
	}
	if len(x.NearMiss) > 0 {
		fmt.Fprintln(w, "\nEntries it does not match, nearest first:")
		for _, n := range x.NearMiss {
			fmt.Fprintf(w, "  %s  (entry %s%s) needs %s\n", n.Entry.SPIFFEID, n.Entry.ID, configNote(n.Entry), strings.Join(n.Missing, ", "))
		}
	}
	for _, n := range x.Notes {
		fmt.Fprintf(w, "\nNote: %s\n", n)
	}
	return nil
}

func configNote(e admin.Entry) string {
	if e.Name != "" {
		return ", config " + e.Name
	}
	return ""
}
