package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/admin"
)

type entryFlags struct {
	g           globalFlags
	entryID     string
	spiffeID    string
	selectors   listFlag
	dns         listFlag
	federates   listFlag
	x509SVIDTTL int64
	output      outputFlag
}

func (f *entryFlags) register(fs *flag.FlagSet, g globalFlags, fields ...string) {
	f.g = g
	f.output = "pretty"
	commonFlags(fs, &f.g)
	for _, name := range fields {
		switch name {
		case "entryID":
			fs.StringVar(&f.entryID, "entryID", "", "the entry's ID")
		case "spiffeID":
			fs.StringVar(&f.spiffeID, "spiffeID", "", "SPIFFE ID, e.g. spiffe://example.org/backend")
		case "selector":
			fs.Var(&f.selectors, "selector", "TYPE:VALUE the caller must have, e.g. unix:uid:1000 (repeatable; all must match)")
		case "dns":
			fs.Var(&f.dns, "dns", "DNS name to add to the SVID (repeatable)")
		case "federatesWith":
			fs.Var(&f.federates, "federatesWith", "foreign trust domain whose bundle the workload receives, e.g. spiffe://other.org (repeatable; its bundle may arrive later)")
		case "x509SVIDTTL":
			fs.Int64Var(&f.x509SVIDTTL, "x509SVIDTTL", 0, "X509-SVID lifetime in seconds (0: the agent's default)")
		case "output":
			fs.Var(&f.output, "output", "pretty or json")
		}
	}
}

func runEntryCreate(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("entry create", env)
	f.register(fs, g, "spiffeID", "selector", "dns", "federatesWith", "x509SVIDTTL", "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if f.spiffeID == "" {
		return usageError{"entry create: -spiffeID is required"}
	}
	if len(f.selectors) == 0 {
		return usageError{"entry create: at least one -selector is required"}
	}
	if f.x509SVIDTTL < 0 {
		return usageError{"entry create: -x509SVIDTTL must not be negative"}
	}
	out, err := newClient(f.g).CreateEntry(ctx, admin.Entry{
		SPIFFEID:      f.spiffeID,
		Selectors:     f.selectors,
		X509SVIDTTL:   f.x509SVIDTTL,
		DNSNames:      f.dns,
		FederatesWith: f.federates,
	})
	if err != nil {
		return fmt.Errorf("creating entry: %w", err)
	}
	printWarnings(env, out)
	return printEntries(env.Stdout, f.output, []admin.Entry{out}, false)
}

func runEntryUpdate(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("entry update", env)
	f.register(fs, g, "entryID", "spiffeID", "selector", "dns", "federatesWith", "x509SVIDTTL", "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if f.entryID == "" {
		return usageError{"entry update: -entryID is required"}
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if !set["spiffeID"] && !set["selector"] && !set["dns"] && !set["federatesWith"] && !set["x509SVIDTTL"] {
		return usageError{"entry update: nothing to change (give -spiffeID, -selector, -dns, -federatesWith or -x509SVIDTTL)"}
	}
	if f.x509SVIDTTL < 0 {
		return usageError{"entry update: -x509SVIDTTL must not be negative"}
	}
	c := newClient(f.g)
	// Fields not given keep their value; a repeatable flag given replaces the whole list.
	e, err := c.GetEntry(ctx, f.entryID)
	if err != nil {
		return fmt.Errorf("updating entry: %w", err)
	}
	if set["spiffeID"] {
		e.SPIFFEID = f.spiffeID
	}
	if set["selector"] {
		e.Selectors = f.selectors
	}
	if set["dns"] {
		e.DNSNames = f.dns
	}
	if set["x509SVIDTTL"] {
		e.X509SVIDTTL = f.x509SVIDTTL
	}
	if set["federatesWith"] {
		// -federatesWith "" alone clears the list.
		e.FederatesWith = slices.DeleteFunc(slices.Clone(f.federates), func(s string) bool { return s == "" })
	}
	// Never the name: only the config file names entries (svidd refuses an update of one).
	out, err := c.UpdateEntry(ctx, admin.Entry{ID: e.ID, SPIFFEID: e.SPIFFEID, Selectors: e.Selectors, X509SVIDTTL: e.X509SVIDTTL, DNSNames: e.DNSNames, FederatesWith: e.FederatesWith})
	if err != nil {
		return fmt.Errorf("updating entry: %w", err)
	}
	printWarnings(env, out)
	return printEntries(env.Stdout, f.output, []admin.Entry{out}, false)
}

func runEntryDelete(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("entry delete", env)
	f.register(fs, g, "entryID")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if f.entryID == "" {
		return usageError{"entry delete: -entryID is required"}
	}
	out, err := newClient(f.g).DeleteEntry(ctx, f.entryID)
	if err != nil {
		return fmt.Errorf("deleting entry: %w", err)
	}
	fmt.Fprintf(env.Stdout, "Deleted entry with ID: %s\n", out.ID)
	return nil
}

func runEntryShow(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("entry show", env)
	f.register(fs, g, "entryID", "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if f.entryID == "" {
		return usageError{"entry show: -entryID is required"}
	}
	out, err := newClient(f.g).GetEntry(ctx, f.entryID)
	if err != nil {
		return fmt.Errorf("showing entry: %w", err)
	}
	return printEntries(env.Stdout, f.output, []admin.Entry{out}, f.output == "json")
}

func runEntryList(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("entry list", env)
	f.register(fs, g, "spiffeID", "selector", "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	out, err := newClient(f.g).ListEntries(ctx, f.spiffeID, f.selectors)
	if err != nil {
		return fmt.Errorf("listing entries: %w", err)
	}
	return printEntries(env.Stdout, f.output, out, true)
}

// printWarnings shows svidd's warnings about an entry written (a selector it can never derive
// here): the entry is stored, but would silently never match.
func printWarnings(env Env, e admin.Entry) {
	for _, w := range e.Warnings {
		fmt.Fprintf(env.Stderr, "svidctl: warning: %s\n", w)
	}
}

// printEntries writes entries in SPIRE's familiar block form, or as JSON: `entry list` and
// `entry show` in the shape `spire-server entry show -output json` prints (scripts written for
// SPIRE keep working), create and update as the entry object of the admin API.
func printEntries(w io.Writer, output outputFlag, es []admin.Entry, list bool) error {
	if output == "json" {
		if list {
			return printJSON(w, spireEntries(es))
		}
		return printJSON(w, es[0])
	}
	if list {
		switch len(es) {
		case 1:
			fmt.Fprintln(w, "Found 1 entry")
		default:
			fmt.Fprintf(w, "Found %d entries\n", len(es))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, e := range es {
		fmt.Fprintf(tw, "Entry ID\t: %s\n", e.ID)
		if e.Name != "" {
			fmt.Fprintf(tw, "Name\t: %s (from the config file)\n", e.Name)
		}
		fmt.Fprintf(tw, "SPIFFE ID\t: %s\n", e.SPIFFEID)
		for _, s := range e.Selectors {
			fmt.Fprintf(tw, "Selector\t: %s\n", s)
		}
		if e.X509SVIDTTL > 0 {
			fmt.Fprintf(tw, "X509-SVID TTL\t: %d\n", e.X509SVIDTTL)
		} else {
			fmt.Fprintf(tw, "X509-SVID TTL\t: default\n")
		}
		for _, d := range e.DNSNames {
			fmt.Fprintf(tw, "DNS name\t: %s\n", d)
		}
		for _, td := range e.FederatesWith {
			fmt.Fprintf(tw, "FederatesWith\t: spiffe://%s\n", td)
		}
		fmt.Fprintf(tw, "Revision\t: %d\n", e.Revision)
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// spireListJSON is SPIRE's entry.v1.ListEntriesResponse as protojson writes it (int64 fields as
// strings, unset fields present).
type spireListJSON struct {
	Entries       []spireEntryJSON `json:"entries"`
	NextPageToken string           `json:"next_page_token"`
}

type spireIDJSON struct {
	TrustDomain string `json:"trust_domain"`
	Path        string `json:"path"`
}

type spireSelectorJSON struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// spireEntryJSON is SPIRE's types.Entry. svidd has no node hierarchy: parent_id is the trust
// domain itself (the agent registers for its own host). Name, svidd's own, is set for entries
// declared in the config file (they come back at every start and reload).
type spireEntryJSON struct {
	ID             string              `json:"id"`
	SPIFFEID       spireIDJSON         `json:"spiffe_id"`
	ParentID       spireIDJSON         `json:"parent_id"`
	Selectors      []spireSelectorJSON `json:"selectors"`
	X509SVIDTTL    int64               `json:"x509_svid_ttl"`
	FederatesWith  []string            `json:"federates_with"`
	Admin          bool                `json:"admin"`
	Downstream     bool                `json:"downstream"`
	ExpiresAt      string              `json:"expires_at"`
	DNSNames       []string            `json:"dns_names"`
	RevisionNumber string              `json:"revision_number"`
	StoreSVID      bool                `json:"store_svid"`
	JWTSVIDTTL     int64               `json:"jwt_svid_ttl"`
	Hint           string              `json:"hint"`
	CreatedAt      string              `json:"created_at"`
	Name           string              `json:"name,omitempty"`
	FromConfig     bool                `json:"from_config,omitempty"`
}

func spireEntries(es []admin.Entry) spireListJSON {
	out := spireListJSON{Entries: []spireEntryJSON{}}
	for _, e := range es {
		id := spireIDJSON{}
		if sid, err := spiffeid.FromString(e.SPIFFEID); err == nil {
			id = spireIDJSON{TrustDomain: sid.TrustDomain().Name(), Path: sid.Path()}
		}
		se := spireEntryJSON{
			ID:             e.ID,
			SPIFFEID:       id,
			ParentID:       spireIDJSON{TrustDomain: id.TrustDomain},
			Selectors:      []spireSelectorJSON{},
			X509SVIDTTL:    e.X509SVIDTTL,
			FederatesWith:  append([]string{}, e.FederatesWith...),
			ExpiresAt:      "0",
			DNSNames:       append([]string{}, e.DNSNames...),
			RevisionNumber: strconv.FormatInt(e.Revision, 10),
			CreatedAt:      "0",
			Name:           e.Name,
			FromConfig:     e.Name != "",
		}
		if !e.CreatedAt.IsZero() {
			se.CreatedAt = strconv.FormatInt(e.CreatedAt.Unix(), 10)
		}
		for _, s := range e.Selectors {
			// SPIRE's selector is type + value: "unix:uid:1000" is type unix, value uid:1000.
			typ, val, _ := strings.Cut(s, ":")
			se.Selectors = append(se.Selectors, spireSelectorJSON{Type: typ, Value: val})
		}
		out.Entries = append(out.Entries, se)
	}
	return out
}
