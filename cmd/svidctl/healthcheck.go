package main

import (
	"context"
	"fmt"
)

// runHealthcheck exits 0 only when svidd answers and says it is ready (CA loaded, store open,
// api socket serving); for use in systemd ExecStartPost, container probes and scripts.
func runHealthcheck(ctx context.Context, g globalFlags, args []string, env Env) error {
	fs := newFlagSet("healthcheck", env)
	commonFlags(fs, &g)
	verbose := fs.Bool("verbose", false, "say why when unhealthy")
	if err := parseSub(fs, args, env); err != nil {
		return err
	}
	h, err := newClient(g).Health(ctx)
	if err != nil {
		return fmt.Errorf("agent is unhealthy: %w", err)
	}
	if !h.Ready {
		if *verbose {
			fmt.Fprintln(env.Stderr, "agent is not ready:", h.Reason)
		}
		return fmt.Errorf("agent is not ready: %s", h.Reason)
	}
	fmt.Fprintln(env.Stdout, "Agent is healthy.")
	return nil
}
