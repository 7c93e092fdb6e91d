package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// cliEnv runs svidctl in-process with the given environment variables.
func cliEnv(t *testing.T, vars map[string]string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), args, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return vars[k] }})
	code := 0
	if err != nil {
		code = exitCode(err)
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

func TestHelpExitsZeroAndListsCommands(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}, {"entry", "-h"}} {
		out, stderr, code := cliEnv(t, nil, args...)
		if code != 0 {
			t.Errorf("svidctl %v: exit %d, stderr %s", args, code, stderr)
		}
		for _, c := range []string{"entry create", "svid watch", "status"} {
			if !strings.Contains(out, c) {
				t.Errorf("svidctl %v: stdout does not list %q:\n%s", args, c, out)
			}
		}
	}
	out, _, code := cliEnv(t, nil, "entry", "create", "-h")
	if code != 0 || !strings.Contains(out, "-spiffeID") || !strings.Contains(out, "-selector") {
		t.Errorf("entry create -h: exit %d, stdout %s", code, out)
	}
	// A mistake is still exit 2.
	if _, _, code := cliEnv(t, nil, "entry", "create", "-nosuch"); code != 2 {
		t.Errorf("entry create -nosuch: exit %d, want 2", code)
	}
}

func TestSocketsFromEnvironment(t *testing.T) {
	sock, _ := startAdminForCLI(t)
	env := map[string]string{EnvAdminSocket: sock}
	out, stderr, code := cliEnv(t, env, "entry", "create", "-spiffeID", "spiffe://example.org/env", "-selector", "unix:uid:7")
	if code != 0 {
		t.Fatalf("entry create with $%s: exit %d: %s", EnvAdminSocket, code, stderr)
	}
	if out, _, _ = cliEnv(t, env, "entry", "list"); !strings.Contains(out, "spiffe://example.org/env") {
		t.Fatalf("entry list with $%s: %s", EnvAdminSocket, out)
	}
	// -socketPath still wins over the environment.
	if _, stderr, code := cliEnv(t, env, "-socketPath", "/nonexistent/admin.sock", "entry", "list"); code == 0 || !strings.Contains(stderr, "/nonexistent/admin.sock") {
		t.Errorf("-socketPath did not override $%s: exit %d %s", EnvAdminSocket, code, stderr)
	}

	// The svid commands read SPIFFE_ENDPOINT_SOCKET, never the admin socket's variable.
	for _, v := range []string{"unix:///nonexistent/api.sock", "unix:/nonexistent/api.sock", "/nonexistent/api.sock"} {
		_, stderr, code := cliEnv(t, map[string]string{EnvAdminSocket: sock, EnvAPISocket: v}, "svid", "fetch", "-timeout", "200ms")
		if code == 0 || !strings.Contains(stderr, "/nonexistent/api.sock") {
			t.Errorf("svid fetch with $%s=%s: exit %d, stderr %q does not name the socket", EnvAPISocket, v, code, stderr)
		}
	}
	for _, bad := range []string{"tcp://127.0.0.1:8081", "unix://host/path", "relative.sock"} {
		_, stderr, code := cliEnv(t, map[string]string{EnvAPISocket: bad}, "svid", "fetch")
		if code != 2 || !strings.Contains(stderr, EnvAPISocket) {
			t.Errorf("$%s=%s: exit %d, stderr %q, want a usage error naming the variable", EnvAPISocket, bad, code, stderr)
		}
	}
}
