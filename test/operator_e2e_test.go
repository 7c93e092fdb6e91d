package test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svidd/svidd/pkg/admin"
)

// TestFailedStartCreatesNothing: a start that cannot listen (api socket held by a live svidd,
// metrics port taken) fails with the reason and creates no data dir, store or CA.
func TestFailedStartCreatesNothing(t *testing.T) {
	running := startAgent(t)
	dir := newAgentDir(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := filepath.Join(dir, "metrics.hcl")
	if err := os.WriteFile(cfg, []byte("telemetry {\n  prometheus {\n    address = \""+taken.Addr().String()+"\"\n  }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"api socket in use", []string{"-socketPath", running.api, "-adminSocketPath", filepath.Join(dir, "admin.sock")}, running.api},
		{"admin socket in use", []string{"-socketPath", filepath.Join(dir, "api.sock"), "-adminSocketPath", running.admin}, running.admin},
		{"metrics port in use", []string{"-socketPath", filepath.Join(dir, "api.sock"), "-adminSocketPath", filepath.Join(dir, "admin.sock"), "-config", cfg}, taken.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(dir, "data-"+strings.ReplaceAll(tc.name, " ", "-"))
			code, out := runSviddOnce(t, append(tc.args, "-dataDir", data)...)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want non-zero naming %s:\n%s", code, tc.want, out)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("the failed start created its data dir %s (%v)", data, err)
			}
			for _, p := range []string{filepath.Join(dir, "api.sock"), filepath.Join(dir, "admin.sock")} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("the failed start left %s behind", p)
				}
			}
		})
	}
	// The running svidd was not disturbed.
	if _, err := running.svidctl("healthcheck"); err != nil {
		t.Errorf("the running svidd is unhealthy after the failed starts: %v", err)
	}
}

// TestSIGINTWithOpenStreams: SIGINT stops svidd in well under a second with Envoy's streams
// open (they never end on their own: a graceful stop alone waited its whole 5 s deadline),
// and the log says what it closed.
func TestSIGINTWithOpenStreams(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry("spiffe://example.org/front", "-selector", "unix:uid:1001")
	var clients []*child
	for _, mode := range []string{"sotw", "delta"} {
		c := startAs(t, 1001, 1001, nil, bins.fakeenvoy, "-socket", a.api, "-mode", mode,
			"-names", "spiffe://example.org/front", "-follow", "-timeout", "1m")
		c.next(t, 10*time.Second) // the first response: the stream is open and served
		clients = append(clients, c)
	}
	start := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("svidd still running 10s after SIGINT:\n%s", a.logs.String())
	}
	took := time.Since(start)
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGINT, want 0", code)
	}
	// Well under a second, with headroom for a loaded machine (it took 5 s before).
	if took > 900*time.Millisecond {
		t.Errorf("svidd took %v to stop on SIGINT with 2 open streams, want well under a second:\n%s", took, a.logs.String())
	}
	if !strings.Contains(a.logs.String(), "closing open streams") || !strings.Contains(a.logs.String(), "streams=2") {
		t.Errorf("the stop did not log the streams it closed:\n%s", a.logs.String())
	}
	t.Logf("stopped %v after SIGINT", took)
}

// TestSvidFetchShowsStatusRotation: the rotation time `svid fetch` shows (as the workload) is
// the agent's own, jitter included, as `svidctl status` shows it.
func TestSvidFetchShowsStatusRotation(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(backendID, "-selector", "unix:uid:1002")
	c := startAs(t, 1002, 1002, nil, bins.svidctl, "svid", "fetch", "-socketPath", a.api, "-output", "json")
	var lines []string
	for l := range c.lines {
		lines = append(lines, l)
	}
	<-c.done
	var fetched struct {
		SVIDs []struct {
			SPIFFEID string    `json:"spiffe_id"`
			RotateAt time.Time `json:"rotate_at"`
		} `json:"svids"`
	}
	if err := json.Unmarshal([]byte(strings.Join(lines, "\n")), &fetched); err != nil || len(fetched.SVIDs) != 1 {
		t.Fatalf("svid fetch -output json: %v (%s)\n%s", err, c.stderr.String(), strings.Join(lines, "\n"))
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(a.mustSvidctl("status", "-output", "json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, id := range st.Identities {
		if id.SPIFFEID == backendID {
			if !id.RotateAt.Equal(fetched.SVIDs[0].RotateAt) {
				t.Fatalf("svid fetch says the SVID rotates at %s, svidctl status at %s", fetched.SVIDs[0].RotateAt, id.RotateAt)
			}
			half := id.NotBefore.Add(id.NotAfter.Sub(id.NotBefore) / 2)
			t.Logf("rotation at %s, %v from half the lifetime", id.RotateAt, id.RotateAt.Sub(half))
			return
		}
	}
	t.Fatalf("status holds no %s: %+v", backendID, st.Identities)
}
