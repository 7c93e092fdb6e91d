package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/svidfiles"
	svworkload "github.com/svidd/svidd/pkg/workload"
)

// fakeAPI is a tiny SPIFFE Workload API server: it streams whatever X509SVIDResponse it was
// last given, signs JWT-SVIDs with a test key, and insists on the workload.spiffe.io header
// as a real server does.
type fakeAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	ca     *testSVIDCA
	jwtKey *ecdsa.PrivateKey

	mu      sync.Mutex
	resp    *workload.X509SVIDResponse
	changed chan struct{} // closed and replaced by set
}

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if !slices.Equal(md.Get("workload.spiffe.io"), []string{"true"}) {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func (s *fakeAPI) set(resp *workload.X509SVIDResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resp = resp
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	for {
		s.mu.Lock()
		resp, changed := s.resp, s.changed
		s.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (s *fakeAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	sub := req.SpiffeId
	if sub == "" {
		sub = "spiffe://example.org/web"
	}
	tok, err := signJWT(s.jwtKey, sub, req.Audience, time.Now().Add(5*time.Minute))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: sub, Svid: tok}}}, nil
}

func (s *fakeAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	jwks, err := jwtbundle.FromJWTAuthorities(td, map[string]crypto.PublicKey{"k1": &s.jwtKey.PublicKey}).Marshal()
	if err != nil {
		return err
	}
	if err := stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{"spiffe://example.org": jwks}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// signJWT makes an ES256 JWT-SVID by hand (header.claims.signature, r||s).
func signJWT(key *ecdsa.PrivateKey, sub string, aud []string, exp time.Time) (string, error) {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": "k1", "typ": "JWT"})
	c, _ := json.Marshal(map[string]any{"sub": sub, "aud": aud, "exp": exp.Unix(), "iat": time.Now().Unix()})
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + enc.EncodeToString(sig), nil
}

// testSVIDCA mints real X509-SVIDs for the fake server.
type testSVIDCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestSVIDCA(t *testing.T) *testSVIDCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testSVIDCA{cert, key}
}

// svid mints an X509-SVID for id with the given serial, valid from an hour ago for two hours
// (so it rotates now, at half life).
func (ca *testSVIDCA) svid(t *testing.T, id string, serial int64) *workload.X509SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-30 * time.Minute), NotAfter: time.Now().Add(90 * time.Minute),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &workload.X509SVID{SpiffeId: id, X509Svid: der, X509SvidKey: pk, Bundle: ca.cert.Raw}
}

// startFakeAPI serves a fakeAPI on a Unix socket in a short temp dir (108-byte limit).
func startFakeAPI(t *testing.T) (*fakeAPI, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	api := &fakeAPI{ca: newTestSVIDCA(t), jwtKey: key, changed: make(chan struct{})}
	api.resp = &workload.X509SVIDResponse{Svids: []*workload.X509SVID{
		api.ca.svid(t, "spiffe://example.org/web", 0xabc001),
		api.ca.svid(t, "spiffe://example.org/admin", 0xabc002),
	}}
	dir := proctest.ShortDir(t)
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, api)
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return api, sock
}

// svidCLI runs svidctl in-process and returns stdout, stderr and main's exit code.
func svidCLI(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	var out, errb proctest.Buffer
	err := Run(ctx, args, Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	if err != nil {
		code = exitCode(err)
		if !errors.Is(err, errSilent) {
			errb.Write([]byte(err.Error()))
		}
	}
	return out.String(), errb.String(), code
}

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func leafOf(t *testing.T, set svidfiles.FileSet) *x509.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(set.SVID, set.Key)
	if err != nil {
		t.Fatalf("svid.pem and svid_key.pem do not match: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func TestSVIDFetchDir(t *testing.T) {
	_, sock := startFakeAPI(t)
	tests := []struct {
		name       string
		args       []string
		wantID     string
		wantSerial int64
		wantJWT    bool
	}{
		{"default SVID", nil, "spiffe://example.org/web", 0xabc001, false},
		{"chosen SVID", []string{"-spiffeID", "spiffe://example.org/admin"}, "spiffe://example.org/admin", 0xabc002, false},
		{"with JWT", []string{"-jwtAudience", "svc-a,svc-b"}, "spiffe://example.org/web", 0xabc001, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"svid", "fetch", "-socketPath", sock, "-dir", dir}, tt.args...)
			out, stderr, code := svidCLI(t.Context(), args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if !strings.Contains(out, tt.wantID) {
				t.Errorf("stdout %q does not name %s", out, tt.wantID)
			}
			cur := filepath.Join(dir, svidfiles.CurrentLink)
			for name, want := range map[string]fs.FileMode{
				svidfiles.SVIDFile: 0o644, svidfiles.KeyFile: 0o600, svidfiles.BundleFile: 0o644,
			} {
				if got := fileMode(t, filepath.Join(cur, name)); got != want {
					t.Errorf("%s has mode %o, want %o", name, got, want)
				}
			}
			set, err := svidfiles.ReadCurrent(dir)
			if err != nil {
				t.Fatal(err)
			}
			leaf := leafOf(t, set)
			if leaf.URIs[0].String() != tt.wantID || leaf.SerialNumber.Int64() != tt.wantSerial {
				t.Errorf("svid.pem is %s serial %x, want %s serial %x", leaf.URIs[0], leaf.SerialNumber, tt.wantID, tt.wantSerial)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(set.Bundle) {
				t.Fatal("bundle.pem holds no certificate")
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
				t.Errorf("SVID does not verify against bundle.pem: %v", err)
			}
			if (set.JWTSVID != nil) != tt.wantJWT || (set.JWTBundle != nil) != tt.wantJWT {
				t.Fatalf("JWT files written = %v/%v, want %v", set.JWTSVID != nil, set.JWTBundle != nil, tt.wantJWT)
			}
			if tt.wantJWT {
				td := spiffeid.RequireTrustDomainFromString("example.org")
				var bundles map[string]json.RawMessage
				if err := json.Unmarshal(set.JWTBundle, &bundles); err != nil {
					t.Fatalf("jwt_bundle.json: %v", err)
				}
				b, err := jwtbundle.Parse(td, bundles["example.org"])
				if err != nil {
					t.Fatal(err)
				}
				// The token verifies with the bundle written beside it.
				s, err := jwtsvid.ParseAndValidate(string(set.JWTSVID), jwtbundle.NewSet(b), []string{"svc-b"})
				if err != nil {
					t.Fatalf("jwt_svid.token: %v", err)
				}
				if s.ID.String() != tt.wantID || !slices.Equal(s.Audience, []string{"svc-a", "svc-b"}) {
					t.Errorf("JWT-SVID for %s %v, want %s [svc-a svc-b]", s.ID, s.Audience, tt.wantID)
				}
				if got := fileMode(t, filepath.Join(cur, svidfiles.JWTSVIDFile)); got != 0o600 {
					t.Errorf("jwt_svid.token has mode %o, want 600", got)
				}
			}
		})
	}
}

func TestSVIDFetchPrint(t *testing.T) {
	_, sock := startFakeAPI(t)

	t.Run("table", func(t *testing.T) {
		out, stderr, code := svidCLI(t.Context(), "svid", "fetch", "-socketPath", sock)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		for _, want := range []string{"SPIFFE ID", "ROTATES IN", "spiffe://example.org/web", "abc001", "spiffe://example.org/admin", "abc002"} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("global socketPath", func(t *testing.T) {
		out, stderr, code := svidCLI(t.Context(), "-socketPath", sock, "svid", "fetch", "-spiffeID", "spiffe://example.org/admin")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if !strings.Contains(out, "abc002") || strings.Contains(out, "abc001") {
			t.Errorf("-spiffeID admin printed:\n%s", out)
		}
	})
	t.Run("json", func(t *testing.T) {
		out, stderr, code := svidCLI(t.Context(), "svid", "fetch", "-socketPath", sock, "-output", "json", "-jwtAudience", "svc-a")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var got struct {
			SVIDs   []svidJSON `json:"svids"`
			JWTSVID *jwtJSON   `json:"jwt_svid"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, out)
		}
		if len(got.SVIDs) != 2 || got.SVIDs[0].SPIFFEID != "spiffe://example.org/web" || got.SVIDs[0].Serial != "abc001" {
			t.Fatalf("svids = %+v", got.SVIDs)
		}
		// Minted 30 minutes into a 2-hour life: rotation (half life) is 30 minutes away.
		if r := got.SVIDs[0].RotatesInSeconds; r < 24*60-5 || r > 36*60+5 {
			t.Errorf("rotates_in_seconds = %d, want 1800 ±360 (half of 2h ±10%%, 30 min in)", r)
		}
		if got.JWTSVID == nil || got.JWTSVID.Token == "" || got.JWTSVID.SPIFFEID != "spiffe://example.org/web" {
			t.Errorf("jwt_svid = %+v", got.JWTSVID)
		}
	})
	t.Run("unknown spiffeID", func(t *testing.T) {
		_, stderr, code := svidCLI(t.Context(), "svid", "fetch", "-socketPath", sock, "-spiffeID", "spiffe://example.org/db")
		if code != 1 || !strings.Contains(stderr, "no X509-SVID for spiffe://example.org/db") {
			t.Errorf("exit %d, stderr %q; want 1 and the missing ID named", code, stderr)
		}
	})
	t.Run("no server", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nothing.sock")
		_, stderr, code := svidCLI(t.Context(), "svid", "fetch", "-socketPath", missing, "-timeout", "1s")
		if code != 1 || !strings.Contains(stderr, missing) {
			t.Errorf("exit %d, stderr %q; want 1 naming the socket", code, stderr)
		}
	})
}

func TestRotatesIn(t *testing.T) {
	nb := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(time.Hour)
	seen := map[time.Duration]bool{}
	for serial := int64(1); serial <= 50; serial++ {
		leaf := &x509.Certificate{NotBefore: nb, NotAfter: na, SerialNumber: big.NewInt(serial)}
		in := rotatesIn(leaf, nb)
		// The agent's time: half the lifetime ±10% of it, from the serial.
		if in < 27*time.Minute || in > 33*time.Minute {
			t.Errorf("serial %d: rotates in %s, want within 30m ±3m", serial, in)
		}
		if want := svworkload.RotateAt(nb, na, svworkload.RotationJitter(leaf.SerialNumber.Text(16))).Sub(nb).Round(time.Second); in != want {
			t.Errorf("serial %d: rotates in %s, the agent rotates at %s", serial, in, want)
		}
		if later := rotatesIn(leaf, nb.Add(10*time.Minute)); later != in-10*time.Minute {
			t.Errorf("serial %d: 10 minutes later rotates in %s, want %s", serial, later, in-10*time.Minute)
		}
		seen[in] = true
	}
	if len(seen) < 40 {
		t.Errorf("50 serials give %d rotation times: the jitter does not spread them", len(seen))
	}
}

func TestSVIDUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"watch without dir", []string{"svid", "watch"}, "-dir is required"},
		{"cmd and pidFile", []string{"svid", "watch", "-dir", dir, "-cmd", "/bin/true", "-pidFile", "/run/x.pid"}, "exclude"},
		{"cmdArgs without cmd", []string{"svid", "watch", "-dir", dir, "-cmdArgs", "-x"}, "needs -cmd"},
		{"unknown signal", []string{"svid", "watch", "-dir", dir, "-cmd", "/bin/true", "-signal", "SIGBOGUS"}, "unknown signal"},
		{"pidFile cannot restart", []string{"svid", "watch", "-dir", dir, "-pidFile", "/run/x.pid", "-signal", ""}, "needs a -signal"},
		{"unterminated quote", []string{"svid", "watch", "-dir", dir, "-cmd", "/bin/true", "-cmdArgs", `-c "x`}, "unterminated"},
		{"bad spiffeID", []string{"svid", "fetch", "-spiffeID", "example.org/web"}, "-spiffeID"},
		{"bad output", []string{"svid", "fetch", "-output", "xml"}, "want pretty or json"},
		{"stray argument", []string{"svid", "fetch", "now"}, "unexpected arguments"},
		{"keep zero", []string{"svid", "fetch", "-keep", "0"}, "-keep"},
		{"no subcommand", []string{"svid"}, "which subcommand"},
		{"unknown subcommand", []string{"svid", "rotate"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := svidCLI(t.Context(), tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want 2 mentioning %q", code, stderr, tt.want)
			}
		})
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  -c   /etc/envoy.yaml ", []string{"-c", "/etc/envoy.yaml"}},
		{`--log "a b" 'c "d"' e\ f`, []string{"--log", "a b", `c "d"`, "e f"}},
		{`"say \"hi\"" x""y`, []string{`say "hi"`, "xy"}},
		{`''`, []string{""}},
	}
	for _, tt := range tests {
		got, err := splitArgs(tt.in)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{`"open`, `'open`, `trailing\`} {
		if _, err := splitArgs(bad); err == nil {
			t.Errorf("splitArgs(%q) succeeded", bad)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"SIGHUP": syscall.SIGHUP, "hup": syscall.SIGHUP, "USR1": syscall.SIGUSR1, "15": syscall.SIGTERM, "": 0} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

// hupScript is a program that records its start (with its pid) and every SIGHUP in log.
func hupScript(t *testing.T, dir string) (script, log string) {
	t.Helper()
	log = filepath.Join(dir, "events")
	script = filepath.Join(dir, "prog.sh")
	// Each start logs its pid and its start time (field 22 of /proc/PID/stat): the kernel may
	// give a restarted program the pid of the one it replaced, never the same pair.
	src := fmt.Sprintf("#!/bin/sh\ntrap 'echo hup >> %s' HUP\necho \"start $$ $(cut -d' ' -f22 /proc/$$/stat)\" >> %s\nwhile :; do sleep 0.1; done\n", log, log)
	if err := os.WriteFile(script, []byte(src), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, log
}

// eventually polls cond for up to 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countLines(path, prefix string) int {
	b, _ := os.ReadFile(path)
	n := 0
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

func startPids(path string) []int {
	var pids []int
	for _, id := range starts(path) {
		pid, _, _ := strings.Cut(id, " ")
		n, _ := strconv.Atoi(pid)
		pids = append(pids, n)
	}
	return pids
}

// starts returns each start's "PID STARTTIME": one process, however pids are reused.
func starts(path string) []string {
	b, _ := os.ReadFile(path)
	var ids []string
	for l := range strings.Lines(string(b)) {
		if id, ok := strings.CutPrefix(strings.TrimSpace(l), "start "); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func currentSerial(t *testing.T, dir string) int64 {
	set, err := svidfiles.ReadCurrent(dir)
	if err != nil {
		return -1
	}
	return leafOf(t, set).SerialNumber.Int64()
}

// TestSVIDWatch: every SVID the server pushes becomes a generation, and the program learns of
// it: by signal (a -cmd child, or the process of a -pidFile) or by restart. On cancellation
// (SIGINT/SIGTERM in main) watch exits 0 and stops its child.
func TestSVIDWatch(t *testing.T) {
	tests := []struct {
		name   string
		mode   string // "cmd", "restart" or "pidFile"
		expect func(t *testing.T, log string, rotations int)
	}{
		{"signal child", "cmd", func(t *testing.T, log string, n int) {
			eventually(t, fmt.Sprintf("%d hups", n), func() bool { return countLines(log, "hup") == n })
			if got := len(startPids(log)); got != 1 {
				t.Errorf("child started %d times, want once", got)
			}
		}},
		{"restart child", "restart", func(t *testing.T, log string, n int) {
			eventually(t, fmt.Sprintf("%d starts", n+1), func() bool { return len(startPids(log)) == n+1 })
			if ids := starts(log); len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(ids) {
				t.Errorf("a restart did not start a new process: %v (pid, start time)", ids)
			}
			if got := countLines(log, "hup"); got != 0 {
				t.Errorf("restart mode sent %d hups", got)
			}
		}},
		{"signal pidFile", "pidFile", func(t *testing.T, log string, n int) {
			// One more: the first write signals too (the process may hold files of an older run).
			eventually(t, fmt.Sprintf("%d hups", n+1), func() bool { return countLines(log, "hup") == n+1 })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api, sock := startFakeAPI(t)
			work := t.TempDir()
			dir := filepath.Join(work, "certs")
			script, log := hupScript(t, work)
			args := []string{"-socketPath", sock, "-dir", dir}
			switch tt.mode {
			case "cmd":
				args = append(args, "-cmd", script)
			case "restart":
				args = append(args, "-cmd", "/bin/sh", "-cmdArgs", script, "-signal", "")
			case "pidFile":
				ext := exec.Command(script)
				// A process svidctl did not start: under nohup the test's own SIGHUP
				// disposition would be its, so start it as its own service manager would.
				restore := unignoreForChildren()
				err := ext.Start()
				restore()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ext.Process.Kill(); ext.Wait() })
				eventually(t, "the external program", func() bool { return len(startPids(log)) == 1 })
				pidFile := filepath.Join(work, "prog.pid")
				if err := os.WriteFile(pidFile, []byte(strconv.Itoa(ext.Process.Pid)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-pidFile", pidFile)
			}

			stderr, stop := startWatch(t, args...)

			eventually(t, "the first generation", func() bool { return currentSerial(t, dir) == 0xabc001 })
			// The trap must be set before the first signal, or SIGHUP kills the shell.
			eventually(t, "the program to start", func() bool { return len(startPids(log)) >= 1 })
			if tt.mode == "pidFile" {
				// Signals do not queue: let the first write's SIGHUP land before the next.
				eventually(t, "the first hup", func() bool { return countLines(log, "hup") == 1 })
			}
			const rotations = 2
			for i := range rotations {
				serial := int64(0xdef000 + i)
				api.set(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{api.ca.svid(t, "spiffe://example.org/web", serial)}})
				eventually(t, fmt.Sprintf("generation with serial %x", serial), func() bool { return currentSerial(t, dir) == serial })
				// Let the program see this one before the next: signals do not queue.
				switch tt.mode {
				case "restart":
					eventually(t, "restart", func() bool { return len(startPids(log)) == i+2 })
				case "cmd":
					eventually(t, "hup", func() bool { return countLines(log, "hup") == i+1 })
				case "pidFile":
					eventually(t, "hup", func() bool { return countLines(log, "hup") == i+2 })
				}
			}
			tt.expect(t, log, rotations)

			if code := stop(); code != 0 {
				t.Fatalf("watch exited %d: %s", code, stderr)
			}
			if !strings.Contains(stderr.String(), "wrote SVID files") {
				t.Errorf("no log of the writes on stderr:\n%s", stderr)
			}
			if tt.mode != "pidFile" {
				pids := startPids(log)
				last := pids[len(pids)-1]
				if err := syscall.Kill(last, 0); !errors.Is(err, syscall.ESRCH) {
					t.Errorf("child %d still running after watch stopped (kill 0: %v)", last, err)
				}
			}
		})
	}
}

// startWatch runs svid watch in the background; stderr can be read while it runs, and stop
// cancels it and returns its exit code.
func startWatch(t *testing.T, args ...string) (stderr *proctest.Buffer, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	stderr = &proctest.Buffer{}
	done := make(chan int, 1)
	go func() {
		code := 0
		if err := Run(ctx, append([]string{"svid", "watch"}, args...), Env{Stdin: strings.NewReader(""), Stdout: &proctest.Buffer{}, Stderr: stderr}); err != nil {
			code = exitCode(err)
			stderr.Write([]byte(err.Error()))
		}
		done <- code
	}()
	var once sync.Once
	code := -1
	stop = func() int {
		once.Do(func() {
			cancel()
			select {
			case code = <-done:
			case <-time.After(15 * time.Second):
				t.Error("watch did not stop on cancellation")
			}
		})
		return code
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("svid watch stderr:\n%s", stderr)
		}
	})
	return stderr, stop
}

// TestSVIDWatchUnchanged: an update that changes nothing the files hold (here: a new SVID the
// caller did not pick) writes no generation and sends no signal.
func TestSVIDWatchUnchanged(t *testing.T) {
	api, sock := startFakeAPI(t)
	work := t.TempDir()
	dir := filepath.Join(work, "certs")
	script, log := hupScript(t, work)
	stderr, stop := startWatch(t, "-socketPath", sock, "-dir", dir, "-spiffeID", "spiffe://example.org/web", "-cmd", script)
	eventually(t, "the program to start", func() bool { return len(startPids(log)) == 1 && currentSerial(t, dir) == 0xabc001 })
	gen, err := os.Readlink(filepath.Join(dir, svidfiles.CurrentLink))
	if err != nil {
		t.Fatal(err)
	}
	// Same web SVID, a new admin SVID.
	api.mu.Lock()
	web := api.resp.Svids[0]
	api.mu.Unlock()
	api.set(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{web, api.ca.svid(t, "spiffe://example.org/admin", 0xabc003)}})
	eventually(t, "the update to be handled", func() bool { return strings.Contains(stderr.String(), "SVID files unchanged") })
	if got, _ := os.Readlink(filepath.Join(dir, svidfiles.CurrentLink)); got != gen {
		t.Errorf("current moved from %s to %s on an update that changed nothing", gen, got)
	}
	time.Sleep(300 * time.Millisecond) // a signal would have been handled by now
	if n := countLines(log, "hup"); n != 0 {
		t.Errorf("%d hups for no change", n)
	}
	if code := stop(); code != 0 {
		t.Errorf("watch exited %d:\n%s", code, stderr)
	}
}

// TestSVIDWatchMissingID: when the picked SPIFFE ID disappears from the caller's SVIDs, the
// files stay as they were (an expiring certificate beats none) and the error is logged.
func TestSVIDWatchMissingID(t *testing.T) {
	api, sock := startFakeAPI(t)
	dir := filepath.Join(t.TempDir(), "certs")
	stderr, stop := startWatch(t, "-socketPath", sock, "-dir", dir, "-spiffeID", "spiffe://example.org/admin")
	eventually(t, "the first generation", func() bool { return currentSerial(t, dir) == 0xabc002 })
	api.set(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{api.ca.svid(t, "spiffe://example.org/web", 0xabc009)}})
	eventually(t, "the error", func() bool { return strings.Contains(stderr.String(), "no X509-SVID for spiffe://example.org/admin") })
	if got := currentSerial(t, dir); got != 0xabc002 {
		t.Errorf("current serial %x, want the old abc002 kept", got)
	}
	if code := stop(); code != 0 {
		t.Errorf("watch exited %d", code)
	}
}

// TestSVIDFetchWaitsForSvidd: -timeout is how long fetch waits for svidd, so a fetch started
// before svidd (a unit's ExecStartPre at boot) succeeds once it is up; without a server it
// gives up after -timeout, not at once.
func TestSVIDFetchWaitsForSvidd(t *testing.T) {
	_, sock := startFakeAPI(t)
	// Move the socket away, start the fetch, then put it back.
	hidden := sock + ".hidden"
	if err := os.Rename(sock, hidden); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(700 * time.Millisecond)
		os.Rename(hidden, sock)
	}()
	start := time.Now()
	out, stderr, code := svidCLI(t.Context(), "svid", "fetch", "-socketPath", sock, "-timeout", "20s")
	if code != 0 || !strings.Contains(out, "spiffe://example.org/web") {
		t.Fatalf("exit %d after %v, stdout %q, stderr %q", code, time.Since(start), out, stderr)
	}
	if took := time.Since(start); took < 600*time.Millisecond {
		t.Errorf("fetched after %v, before the socket was back", took)
	}
	if !strings.Contains(stderr, "waiting for svidd") {
		t.Errorf("stderr %q does not say what it waits for", stderr)
	}

	missing := filepath.Join(t.TempDir(), "nothing.sock")
	start = time.Now()
	_, stderr, code = svidCLI(t.Context(), "svid", "fetch", "-socketPath", missing, "-timeout", "1s")
	took := time.Since(start)
	if code != 1 || !strings.Contains(stderr, "gave up after -timeout") || took < 900*time.Millisecond || took > 10*time.Second {
		t.Errorf("no server: exit %d after %v, stderr %q; want 1 after about 1s", code, took, stderr)
	}
}

// sigIgnored reads from /proc whether pid ignores sig (SigIgn, a hex bit mask).
func sigIgnored(t *testing.T, pid int, sig syscall.Signal) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<(uint(sig)-1)) != 0
		}
	}
	t.Fatalf("no SigIgn in /proc/%d/status", pid)
	return false
}

// TestSVIDWatchUnderNohup: svidctl started with SIGHUP ignored (nohup) still gets its SIGHUP to
// the -cmd program: the child starts with SIGHUP at its default, and its trap runs.
func TestSVIDWatchUnderNohup(t *testing.T) {
	// What nohup does to svidctl: SIGHUP ignored from the start (inherited across exec).
	if !signal.Ignored(syscall.SIGHUP) {
		signal.Ignore(syscall.SIGHUP)
		t.Cleanup(func() { signal.Reset(syscall.SIGHUP) })
	}
	// The set-up reproduces the bug: a program started plainly inherits the ignored SIGHUP.
	plain := exec.Command("sleep", "5")
	if err := plain.Start(); err != nil {
		t.Fatal(err)
	}
	ignoredInPlain := sigIgnored(t, plain.Process.Pid, syscall.SIGHUP)
	plain.Process.Kill()
	plain.Wait()
	if !ignoredInPlain {
		t.Fatal("a child of a process ignoring SIGHUP does not ignore it: the test does not reproduce nohup")
	}

	api, sock := startFakeAPI(t)
	work := t.TempDir()
	dir := filepath.Join(work, "certs")
	script, log := hupScript(t, work)
	stderr, stop := startWatch(t, "-socketPath", sock, "-dir", dir, "-cmd", script)
	eventually(t, "the program to start", func() bool { return len(startPids(log)) == 1 })
	pid := startPids(log)[0]
	if sigIgnored(t, pid, syscall.SIGHUP) {
		t.Fatalf("the -cmd program (pid %d) starts with SIGHUP ignored", pid)
	}
	api.set(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{api.ca.svid(t, "spiffe://example.org/web", 0xdef100)}})
	eventually(t, "the program's trap to see SIGHUP", func() bool { return countLines(log, "hup") == 1 })
	if code := stop(); code != 0 {
		t.Fatalf("watch exited %d: %s", code, stderr)
	}
	// svidctl itself went back to ignoring SIGHUP.
	if !signal.Ignored(syscall.SIGHUP) {
		t.Error("SIGHUP is no longer ignored after svid watch ended")
	}
}
