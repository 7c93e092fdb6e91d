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

// runStatus shows the agent at a glance: trust domain, CAs and every identity held, each with
// a lifetime bar so anything close to expiry stands out.
func runStatus(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("status", env)
	f.register(fs, g, "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	st, err := newClient(f.g).Status(ctx)
	if err != nil {
		return fmt.Errorf("getting status: %w", err)
	}
	if f.output == "json" {
		return printJSON(env.Stdout, st)
	}
	return renderStatus(env.Stdout, st)
}

const barWidth = 20

// renderStatus writes the human form of st; times are relative to st.Now so the output is a
// pure function of st (golden-tested).
func renderStatus(w io.Writer, st admin.Status) error {
	now := st.Now
	if st.RegistrarOnly {
		fmt.Fprintf(w, "Trust domain: %s    up %s    entries %d    registrar only\n\n", st.TrustDomain, roundDur(now.Sub(st.StartedAt)), st.Entries)
	} else {
		fmt.Fprintf(w, "Trust domain: %s    up %s    entries %d    streams %d\n\n",
			st.TrustDomain, roundDur(now.Sub(st.StartedAt)), st.Entries, st.Streams)
	}
	if r := st.Registry; r != nil {
		if r.Reachable {
			fmt.Fprintf(w, "Registry: %s reachable since %s (%s)\n\n", r.Kind, stamp(r.Since), roundDur(now.Sub(r.Since)))
		} else {
			fmt.Fprintf(w, "Registry: %s UNREACHABLE since %s (%s); serving this host's copy, writes refused\n\n", r.Kind, stamp(r.Since), roundDur(now.Sub(r.Since)))
		}
		if r.NodeNameConflict != "" {
			fmt.Fprintf(w, "NODE NAME CONFLICT: another host runs with this host's node_name; this host publishes no node record\n  (%s)\n\n", r.NodeNameConflict)
		}
	}
	if st.RegistrarOnly {
		// No CA and no Workload API here by design: say so rather than show empty tables.
		_, err := fmt.Fprintln(w, "Registrar only: this host writes the operators' changes to the registry; it has no CA and serves no workload")
		if err == nil {
			_, err = fmt.Fprintln(w, "(svidctl node list shows the hosts that serve).")
		}
		return err
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CA\tSKI\tNOT BEFORE\tNOT AFTER\tLIFETIME LEFT")
	for _, a := range st.Authorities {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.State, short(a.SKI, 12), stamp(a.NotBefore), stamp(a.NotAfter), lifetime(a.NotBefore, a.NotAfter, now))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	renderUpstream(w, st)
	fmt.Fprintln(w)
	if len(st.Identities) == 0 {
		_, err := fmt.Fprintln(w, "No identities held (none minted yet, or no workload has asked).")
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tSTREAMS\tISSUED\tEXPIRES\tNEXT ROTATION\tLIFETIME LEFT")
	for _, id := range st.Identities {
		next := "in " + roundDur(id.RotateAt.Sub(now))
		if !id.RotateAt.After(now) {
			next = "OVERDUE " + roundDur(now.Sub(id.RotateAt))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", id.SPIFFEID, id.Streams, stamp(id.NotBefore), stamp(id.NotAfter), next, lifetime(id.NotBefore, id.NotAfter, now))
	}
	return tw.Flush()
}

// renderUpstream says whether the upstream signs, and when it does not, what the operator
// has left: the active CA signs until it expires, then nothing does.
func renderUpstream(w io.Writer, st admin.Status) {
	u := st.Upstream
	if u == nil {
		return
	}
	last := "not yet since start"
	if !u.LastSuccess.IsZero() {
		last = roundDur(st.Now.Sub(u.LastSuccess)) + " ago"
	}
	if u.Failures == 0 {
		fmt.Fprintf(w, "\nUpstream: %s    OK    last signed a CA %s\n", u.Name, last)
		return
	}
	var active time.Time
	for _, a := range st.Authorities {
		if a.State == "active" {
			active = a.NotAfter
		}
	}
	fmt.Fprintf(w, "\nUpstream: %s    FAILING: %d attempts since the last success (%s), retrying with backoff\n", u.Name, u.Failures, last)
	fmt.Fprintf(w, "  last error %s ago: %s\n", roundDur(st.Now.Sub(u.LastFailure)), u.LastError)
	if left := active.Sub(st.Now); left > 0 {
		fmt.Fprintf(w, "  the active CA keeps signing until %s (in %s); after that no SVID can be minted\n", stamp(active), roundDur(left))
	} else {
		fmt.Fprintf(w, "  the active CA EXPIRED %s ago: no SVID can be minted until the upstream signs a new one\n", roundDur(-left))
	}
}

// lifetime draws how much of [nb, na] is left at now: a bar, the percentage and the time.
func lifetime(nb, na, now time.Time) string {
	total := na.Sub(nb)
	left := na.Sub(now)
	if left <= 0 {
		return "[" + strings.Repeat("░", barWidth) + "] EXPIRED"
	}
	frac := 1.0
	if total > 0 {
		frac = min(float64(left)/float64(total), 1)
	}
	filled := int(frac*barWidth + 0.5)
	return fmt.Sprintf("[%s%s] %3d%% %s", strings.Repeat("█", filled), strings.Repeat("░", barWidth-filled), int(frac*100+0.5), roundDur(left))
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") }

// roundDur prints a duration at a precision a person reads at a glance.
func roundDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + roundDur(-d)
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
