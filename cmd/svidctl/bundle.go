package main

import (
	"context"
	"fmt"
)

func runBundleShow(ctx context.Context, g globalFlags, args []string, env Env) error {
	var f entryFlags
	fs := newFlagSet("bundle show", env)
	f.register(fs, g, "output")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	b, err := newClient(f.g).Bundle(ctx)
	if err != nil {
		return fmt.Errorf("showing bundle: %w", err)
	}
	if f.output == "json" {
		return printJSON(env.Stdout, b)
	}
	_, err = fmt.Fprint(env.Stdout, b.PEM)
	return err
}
