package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/svidd/svidd/pkg/admin"
)

// runCallers lists the last callers svidd attested, newest first: who asked, with which
// selectors, and what they got.
func runCallers(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("callers", env)
	f.register(fs, g, "output")
	n := fs.Int("n", 20, "show at most this many callers")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	cs, err := newClient(f.g).Callers(ctx)
	if err != nil {
		return fmt.Errorf("listing callers: %w", err)
	}
	if *n >= 0 && len(cs) > *n {
		cs = cs[:*n]
	}
	if f.output == "json" {
		return printJSON(env.Stdout, cs)
	}
	return renderCallers(env.Stdout, cs)
}

func renderCallers(w io.Writer, cs []admin.Caller) error {
	if len(cs) == 0 {
		_, err := fmt.Fprintln(w, "No callers yet.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tPID\tUID\tRPC\tGOT\tSELECTORS")
	for _, c := range cs {
		got := strings.Join(c.SPIFFEIDs, ",")
		if got == "" {
			got = "NOTHING (svidctl explain -pid " + fmt.Sprint(c.PID) + ")"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", stamp(c.At), c.PID, c.UID, c.RPC, got, strings.Join(c.Selectors, " "))
	}
	return tw.Flush()
}
