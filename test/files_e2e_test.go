package test

import (
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/svidfiles"
)

// TestSvidWatchFilesNeverMismatch: `svidctl svid watch` running as the workload's uid keeps a
// directory of certificate files current across rotations, with the key 0600; a reader that
// resolves `current` in a tight loop never sees a key from one rotation beside a certificate
// from another, and a signalled program is told after each rotation.
func TestSvidWatchFilesNeverMismatch(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(frontendID, "-selector", "unix:uid:1001", "-x509SVIDTTL", "5")
	dir := filepath.Join(proctest.ShortDir(t), "certs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 1001, 1001); err != nil {
		t.Fatal(err)
	}
	hups := filepath.Join(dir, "..", "hups")
	if err := os.WriteFile(hups, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(hups, 0o666); err != nil { // the umask cut WriteFile's mode; uid 1001 appends
		t.Fatal(err)
	}
	script := "trap 'echo hup >> " + hups + "' HUP; while :; do sleep 0.05; done"
	w := startAs(t, 1001, 1001, nil, bins.svidctl, "svid", "watch", "-socketPath", a.api, "-dir", dir, "-cmd", "/bin/sh", "-cmdArgs", "-c \""+script+"\"")

	// Wait for the first generation.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := svidfiles.ReadCurrent(dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no files written; svidctl stderr:\n%s", w.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	serials := map[string]bool{}
	reads := 0
	for end := time.Now().Add(12 * time.Second); time.Now().Before(end); reads++ {
		fs, err := svidfiles.ReadCurrent(dir)
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		pair, err := tls.X509KeyPair(fs.SVID, fs.Key)
		if err != nil {
			t.Fatalf("read %d: key and certificate do not match: %v", reads, err)
		}
		serials[pair.Leaf.SerialNumber.Text(16)] = true
		if !time.Now().Before(pair.Leaf.NotAfter) {
			t.Fatalf("read %d: the current certificate is expired", reads)
		}
	}
	if len(serials) < 3 {
		t.Fatalf("saw %d distinct SVIDs over 12s with a 5s TTL, want rotations", len(serials))
	}
	t.Logf("%d reads, %d rotations, never mismatched", reads, len(serials))

	cur, err := os.Readlink(filepath.Join(dir, "current"))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"svid.pem": 0o644, "svid_key.pem": 0o600, "bundle.pem": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, cur, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	gens, _ := filepath.Glob(filepath.Join(dir, ".gen-*"))
	if len(gens) > 4 {
		t.Errorf("%d generations left on disk, old ones are not cleaned up", len(gens))
	}
	if b, _ := os.ReadFile(hups); strings.Count(string(b), "hup") < 2 {
		t.Errorf("the program was signalled %d times, want after each rotation", strings.Count(string(b), "hup"))
	}
	for _, f := range []string{"tls_certificate_sds_secret.yaml", "validation_context_sds_secret.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("Envoy SDS resource file: %v", err)
		}
	}
}

// TestSvidFetchTable: `svidctl svid fetch` without -dir shows the caller's SVIDs.
func TestSvidFetchTable(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(backendID, "-selector", "unix:uid:1002")
	out := svidFetchAs(t, a, 1002)
	var got any
	if err := json.Unmarshal([]byte(out), &got); err != nil || !strings.Contains(out, backendID) {
		t.Fatalf("svid fetch -output json: %v\n%s", err, out)
	}
}

// svidFetchAs runs `svidctl svid fetch -output json` as uid (and gid) and returns its output.
func svidFetchAs(t *testing.T, a *agent, uid uint32) string {
	t.Helper()
	c := startAs(t, uid, uid, nil, bins.svidctl, "svid", "fetch", "-socketPath", a.api, "-output", "json")
	var lines []string
	for l := range c.lines {
		lines = append(lines, l)
	}
	<-c.done
	if c.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("svid fetch: exit %d: %s", c.cmd.ProcessState.ExitCode(), c.stderr.String())
	}
	return strings.Join(lines, "\n")
}
