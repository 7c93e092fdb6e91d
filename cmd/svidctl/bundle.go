package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"
)

// bundleFlags are SPIRE's bundle command flags: -id, -path, -format.
type bundleFlags struct {
	g      globalFlags
	id     string
	path   string
	format string
	output outputFlag
}

func (f *bundleFlags) register(fs *flag.FlagSet, g globalFlags, fields ...string) {
	f.g = g
	f.output = "pretty"
	f.format = "pem"
	commonFlags(fs, &f.g)
	for _, name := range fields {
		switch name {
		case "id":
			fs.StringVar(&f.id, "id", "", "trust domain of a federated bundle, e.g. spiffe://other.org")
		case "path":
			fs.StringVar(&f.path, "path", "", "file to read the bundle from (default: standard input)")
		case "format":
			fs.StringVar(&f.format, "format", "pem", "pem or spiffe (the SPIFFE bundle document)")
		case "output":
			fs.Var(&f.output, "output", "pretty or json")
		}
	}
}

func checkFormat(cmd, format string) error {
	if format != "pem" && format != "spiffe" {
		return usageError{fmt.Sprintf("%s: -format is pem or spiffe, not %q", cmd, format)}
	}
	return nil
}

// runBundleShow prints the own trust domain's bundle, or a federated one with -id.
func runBundleShow(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f bundleFlags
	fs := newFlagSet("bundle show", env)
	f.register(fs, g, "id", "format", "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if err := checkFormat("bundle show", f.format); err != nil {
		return err
	}
	c := newClient(f.g)
	var err error
	b, err := c.Bundle(ctx)
	if f.id != "" {
		b, err = c.FederatedBundle(ctx, f.id)
	}
	if err != nil {
		return fmt.Errorf("showing bundle: %w", err)
	}
	switch {
	case f.output == "json":
		return printJSON(env.Stdout, b)
	case f.format == "spiffe":
		_, err = fmt.Fprintf(env.Stdout, "%s\n", b.SPIFFE)
		return err
	}
	_, err = fmt.Fprint(env.Stdout, b.PEM)
	return err
}

// runBundleList lists the federated trust domains: their bundles and relationships.
func runBundleList(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f bundleFlags
	fs := newFlagSet("bundle list", env)
	f.register(fs, g, "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	list, err := newClient(f.g).ListBundles(ctx)
	if err != nil {
		return fmt.Errorf("listing bundles: %w", err)
	}
	if f.output == "json" {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	fmt.Fprintf(env.Stdout, "Found %d federated trust domain(s)\n", len(list))
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 1, ' ', 0)
	for _, b := range list {
		fmt.Fprintf(tw, "Trust domain\t: spiffe://%s\n", b.TrustDomain)
		if b.HasBundle {
			fmt.Fprintf(tw, "Bundle\t: version %d, %d X.509 root(s), %d JWT key(s), from %s, updated %s\n",
				b.Version, b.X509Authorities, b.JWTAuthorities, b.Source, b.UpdatedAt.Local().Format(time.RFC3339))
		} else {
			fmt.Fprintf(tw, "Bundle\t: none yet\n")
		}
		if b.Configured {
			src := "managed by hand"
			if b.BundleEndpointURL != "" {
				src = b.BundleEndpointURL + " (" + b.Profile + ")"
			}
			fmt.Fprintf(tw, "Federation\t: %s\n", src)
			if b.ToAllWorkloads {
				fmt.Fprintf(tw, "To all workloads\t: yes\n")
			}
		} else {
			fmt.Fprintf(tw, "Federation\t: not configured (bundle set by hand)\n")
		}
		if !b.LastRefresh.IsZero() {
			fmt.Fprintf(tw, "Last refresh\t: %s\n", b.LastRefresh.Local().Format(time.RFC3339))
		}
		if !b.NextRefresh.IsZero() {
			fmt.Fprintf(tw, "Next refresh\t: %s\n", b.NextRefresh.Local().Format(time.RFC3339))
		}
		if b.LastError != "" {
			fmt.Fprintf(tw, "Last error\t: %s\n", b.LastError)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// runBundleSet stores a federated bundle by hand (a bootstrap bundle for https_spiffe, or a
// trust domain without a bundle endpoint).
func runBundleSet(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f bundleFlags
	fs := newFlagSet("bundle set", env)
	f.register(fs, g, "id", "path", "format")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if f.id == "" {
		return usageError{"bundle set: -id is required (the trust domain, e.g. spiffe://other.org)"}
	}
	if err := checkFormat("bundle set", f.format); err != nil {
		return err
	}
	var data []byte
	var err error
	if f.path == "" {
		data, err = io.ReadAll(io.LimitReader(env.Stdin, 1<<20))
	} else {
		data, err = os.ReadFile(f.path)
	}
	if err != nil {
		return fmt.Errorf("setting bundle: reading it: %w", err)
	}
	if _, err := newClient(f.g).SetBundle(ctx, f.id, f.format, data); err != nil {
		return fmt.Errorf("setting bundle: %w", err)
	}
	_, err = fmt.Fprintln(env.Stdout, "bundle set.")
	return err
}

// runBundleDelete removes a federated bundle.
func runBundleDelete(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f bundleFlags
	fs := newFlagSet("bundle delete", env)
	f.register(fs, g, "id")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	if f.id == "" {
		return usageError{"bundle delete: -id is required"}
	}
	if err := newClient(f.g).DeleteBundle(ctx, f.id); err != nil {
		return fmt.Errorf("deleting bundle: %w", err)
	}
	_, err := fmt.Fprintln(env.Stdout, "bundle deleted.")
	return err
}
