package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	_ "modernc.org/sqlite" // the test reads svidd's store file itself

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/test/envoy"
)

// The test binary doubles as a small program run under other uids (see donateConns). It must
// not run TestMain (which builds every binary), so it is dispatched from init.
const helperModeEnv = "SVIDD_E2E_HELPER"

func init() {
	if os.Getenv(helperModeEnv) == "donate" {
		os.Exit(helperDonate())
	}
}

// helperDonate connects SVIDD_E2E_CONNS times to SVIDD_E2E_SOCKET and hands each connection
// to the parent over fd 3 (SCM_RIGHTS); then it waits for the parent's word (a byte or EOF
// on fd 3) and exits, or, given a byte and SVIDD_E2E_EXEC, execs that binary (argument "60").
// The connections keep this process's credentials: the kernel recorded them at connect.
func helperDonate() int {
	const ctl = 3
	n, err := strconv.Atoi(os.Getenv("SVIDD_E2E_CONNS"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for range n {
		c, err := net.Dial("unix", os.Getenv("SVIDD_E2E_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		f, err := c.(*net.UnixConn).File()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		if err := unix.Sendmsg(ctl, []byte{'c'}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		f.Close()
		c.Close()
	}
	var b [1]byte
	if n, _ := unix.Read(ctl, b[:]); n == 1 && os.Getenv("SVIDD_E2E_EXEC") != "" {
		path := os.Getenv("SVIDD_E2E_EXEC")
		err := syscall.Exec(path, []string{filepath.Base(path), "60"}, os.Environ())
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// donor is a process under another uid that connected to svidd's api socket and handed the
// connections to the test: the test speaks gRPC on them, svidd sees the donor's
// credentials (and its pid, which may meanwhile have exited or been reused).
type donor struct {
	cmd    *exec.Cmd
	ctl    int
	stderr *proctest.Buffer
	conns  []net.Conn
	done   bool
}

func donateConns(t *testing.T, uid uint32, socket string, n int) *donor {
	t.Helper()
	return startDonor(t, uid, socket, n, exec.Command(proctest.HelperBinary(t)))
}

// startDonor is donateConns with cmd as the donor: cmd must end up running the helper binary
// (e.g. through unshare), which it finds in the environment startDonor sets.
func startDonor(t *testing.T, uid uint32, socket string, n int, cmd *exec.Cmd) *donor {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "donor-ctl")
	d := &donor{ctl: fds[0], stderr: &proctest.Buffer{}}
	d.cmd = cmd
	d.cmd.Env = append(append(os.Environ(), d.cmd.Env...), helperModeEnv+"=donate", "SVIDD_E2E_SOCKET="+socket,
		"SVIDD_E2E_CONNS="+strconv.Itoa(n), "GORACE=atexit_sleep_ms=0")
	d.cmd.Dir = "/"
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	d.cmd.ExtraFiles = []*os.File{theirs}
	d.cmd.Stderr = d.stderr
	err = d.cmd.Start()
	theirs.Close()
	if err != nil {
		unix.Close(d.ctl)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range d.conns {
			c.Close()
		}
		if !d.done {
			unix.Close(d.ctl)
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
	})
	for range n {
		c, err := recvConn(d.ctl)
		if err != nil {
			t.Fatalf("receiving a connection from the donor: %v; stderr: %s", err, d.stderr.String())
		}
		d.conns = append(d.conns, c)
	}
	return d
}

func recvConn(sock int) (net.Conn, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("control message: %v (%d messages)", err, len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("unix rights: %v (%d fds)", err, len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "donated")
	defer f.Close()
	return net.FileConn(f)
}

// exit tells the donor to exit and reaps it: its pid is free for reuse from then on.
func (d *donor) exit(t *testing.T) int {
	t.Helper()
	pid := d.cmd.Process.Pid
	unix.Close(d.ctl)
	d.done = true
	if err := d.cmd.Wait(); err != nil {
		t.Fatalf("donor: %v: %s", err, d.stderr.String())
	}
	return pid
}

// grpcOver returns a client connection speaking over c and only c: it never redials, so
// every RPC carries the credentials of whoever made c.
func grpcOver(t *testing.T, c net.Conn) *grpc.ClientConn {
	t.Helper()
	var used atomic.Bool
	cc, err := grpc.NewClient("passthrough:///svidd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("the donated connection is gone")
			}
			return c, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestPIDReuseNotServedToNewcomer: a process under uid 1001 connects to the api socket,
// passes the connection on and exits; a newcomer under uid 1002 (running another binary)
// takes its pid. Streams on the old connection, SDS and Workload API alike, get no identity:
// not the newcomer's (entries for uid 1002 and for its binary exist), and not the exited
// caller's either.
func TestPIDReuseNotServedToNewcomer(t *testing.T) {
	requireRoot(t)
	proctest.NoRaceExitDelay(t)
	a := startAgent(t)
	const goneID, newcomerID, binaryID = "spiffe://example.org/gone", "spiffe://example.org/newcomer", "spiffe://example.org/sleeper"
	sleepPath, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	a.createEntry(goneID, "-selector", "unix:uid:1001")
	a.createEntry(newcomerID, "-selector", "unix:uid:1002")
	a.createEntry(binaryID, "-selector", "unix:path:"+sleepPath)
	ctx := ctxFor(t, time.Minute)

	for attempt := range 20 {
		d := donateConns(t, 1001, a.api, 2)
		sdsConn, wlConn := grpcOver(t, d.conns[0]), grpcOver(t, d.conns[1])
		// svidd has accepted both connections (health does not attest the caller).
		for _, cc := range []*grpc.ClientConn{sdsConn, wlConn} {
			if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		pid := d.exit(t)
		newcomer := exec.Command("/bin/sleep", "60")
		newcomer.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1002, Gid: 1002}}
		if !proctest.StartAtPID(t, newcomer, pid) {
			t.Logf("attempt %d: pid %d taken by another process; retrying", attempt, pid)
			continue
		}
		t.Cleanup(func() {
			newcomer.Process.Kill()
			newcomer.Wait()
		})
		t.Logf("pid %d: uid 1001 connected and exited; /bin/sleep under uid 1002 now holds it", pid)

		s, err := envoy.NewSotW(ctx, sdsConn, envoy.NewNode("reused"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r, err := s.Recv(ctx)
		if r != nil {
			t.Fatalf("SDS on the exited caller's connection served %v", r.Names())
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("SDS on the exited caller's connection: %v; want Unavailable", err)
		}

		wctx := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
		st, err := workload.NewSpiffeWorkloadAPIClient(wlConn).FetchX509SVID(wctx, &workload.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if resp != nil {
			var ids []string
			for _, s := range resp.GetSvids() {
				ids = append(ids, s.GetSpiffeId())
			}
			t.Fatalf("Workload API on the exited caller's connection served %v", ids)
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("Workload API on the exited caller's connection: %v; want Unavailable", err)
		}
		waitLog(t, a, "caller is gone or changed since it connected")
		return
	}
	t.Fatal("could not make a newcomer take the exited caller's pid in 20 attempts")
}

// killRounds is how many times TestKillDuringWritesLosesNothing kills svidd: the full 200 in
// the race run too, since its svidd and svidctl are never race-built (plainBinaries; the race
// detector would make a round 250 ms instead of 80, a race-built svidd needs 100 ms to start).
func killRounds() int { return 200 }

// killAfter is how long svidd lives on once a round's first write is acknowledged: random, so
// the kill lands anywhere in the writes that follow.
func killAfter() time.Duration { return time.Duration(mrand.IntN(30)) * time.Millisecond }

// TestKillDuringWritesLosesNothing kills svidd with SIGKILL at random moments while two
// writers run `svidctl entry create` in a loop. Each round: start svidd, wait for a first
// acknowledged write, kill it at a random moment in the writes that follow, let the writers
// finish. After every restart svidd lists every entry whose create the CLI acknowledged (exit
// 0); every tenth round and at the end the database file itself, read by the test, passes
// SQLite's integrity check and holds them all.
func TestKillDuringWritesLosesNothing(t *testing.T) {
	// It measures no time, and its 200 restarts use the CPU the rotation tests leave idle.
	// (Its svidd and svidctl are plain builds: no race detector exit delay to turn off.)
	waitsInParallel(t)
	a := startAgent(t, withArgs("-logLevel", "warn"), plainBinaries())

	var (
		mu       sync.Mutex
		acked    []string
		next     atomic.Int64
		failures atomic.Int64
	)
	// write runs creates until stop is closed; each ends with an acknowledgement or an error.
	// The first acknowledgement of a round is signalled on firstAck.
	firstAck := make(chan struct{}, 1)
	write := func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := next.Add(1)
			out, err := a.svidctl("entry", "create", "-spiffeID", fmt.Sprintf("spiffe://example.org/w/%d", n),
				"-selector", fmt.Sprintf("unix:uid:%d", n), "-output", "json")
			if err != nil {
				failures.Add(1)
				return // svidd is dead; the round is over
			}
			var e struct {
				ID string `json:"id"`
			}
			mu.Lock()
			if err := json.Unmarshal([]byte(out), &e); err != nil || e.ID == "" {
				// Exit 0 with output we cannot check is a failure too.
				acked = append(acked, "unparsable acknowledgement: "+out)
			} else {
				acked = append(acked, e.ID)
			}
			mu.Unlock()
			select {
			case firstAck <- struct{}{}:
			default:
			}
		}
	}

	ctx := ctxFor(t, 5*time.Minute)
	begin := time.Now()
	rounds := killRounds()
	for round := range rounds {
		// Writers run only while this svidd lives, so they do not slow its start.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { write(stop) })
		wg.Go(func() { write(stop) })
		select {
		case <-firstAck:
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: no write acknowledged within 20s", round)
		}
		time.Sleep(killAfter())
		a.kill()
		close(stop)
		wg.Wait() // every write that svidd answered before dying is acknowledged by now
		select {
		case <-firstAck: // a second writer's acknowledgement: not this round's signal
		default:
		}
		mu.Lock()
		want := slices.Clone(acked)
		mu.Unlock()
		// The database file itself, every tenth round (reading it takes a while under -race).
		if round%10 == 0 {
			onDisk := storeIDs(t, a.dataDir)
			for _, id := range want {
				if !onDisk[id] {
					t.Fatalf("round %d: acknowledged entry %s is not in the store after SIGKILL", round, id)
				}
			}
		}
		a.start()
		listed := map[string]bool{}
		es, err := admin.NewClient(a.admin).ListEntries(ctx, "", nil)
		if err != nil {
			t.Fatalf("round %d: listing entries after restart: %v", round, err)
		}
		for _, e := range es {
			listed[e.ID] = true
		}
		for _, id := range want {
			if !listed[id] {
				t.Fatalf("round %d: acknowledged entry %s not listed after restart", round, id)
			}
		}
	}
	a.stop()
	onDisk := storeIDs(t, a.dataDir)
	// Kills must have cut writes off, or the test proved little.
	if failures.Load() < int64(rounds/4) {
		t.Fatalf("only %d writes cut off by %d kills: the kills missed the writes", failures.Load(), rounds)
	}
	for _, id := range acked {
		if !onDisk[id] {
			t.Fatalf("acknowledged entry %s missing after the last clean stop", id)
		}
	}
	t.Logf("%d kills in %v: %d writes acknowledged, %d cut off by a kill, %d entries on disk (committed but unacknowledged ones included)",
		rounds, time.Since(begin).Round(time.Millisecond), len(acked), failures.Load(), len(onDisk))
}

// storeIDs copies svidd's SQLite files (svidd is not running) to a temp dir, so that
// recovering the WAL does not touch the originals, runs PRAGMA integrity_check on the copy
// and returns the entry IDs it holds.
func storeIDs(t *testing.T, dataDir string) map[string]bool {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"svidd.db", "svidd.db-wal"} {
		b, err := os.ReadFile(filepath.Join(dataDir, name))
		if errors.Is(err, os.ErrNotExist) && name != "svidd.db" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "svidd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var check string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("store fails PRAGMA integrity_check: %q, %v", check, err)
	}
	rows, err := db.Query("SELECT id FROM entries")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// onTmpfs puts the agent's data dir on a fresh tmpfs of the given size (root only), so the
// test can fill the disk; it is unmounted after the agent stops.
func onTmpfs(size string) agentOpt {
	return func(a *agent) {
		if err := os.Mkdir(a.dataDir, 0o700); err != nil {
			a.t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", a.dataDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+size+",mode=0700"); err != nil {
			a.t.Fatalf("mounting a tmpfs for the data dir: %v", err)
		}
		dir := a.dataDir
		a.t.Cleanup(func() {
			if err := unix.Unmount(dir, 0); err != nil {
				a.t.Errorf("unmounting %s: %v", dir, err)
			}
		})
	}
}

// fillDisk writes into dir until the filesystem is full and returns the file it wrote.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// Fill the last partial block too.
	for {
		if _, err := f.Write(chunk[:1]); err != nil {
			break
		}
	}
	return path
}

// TestFullDiskKeepsServing: with the data dir's filesystem full, `svidctl entry create`
// fails promptly with an error that says so, svidd stays up, an open stream keeps getting its
// rotations and a new stream still gets its SVID; once space is freed, writes work again and
// no acknowledged write is lost. (A read-only remount is not possible while svidd holds the
// database open for writing, so a full tmpfs stands in for both.)
func TestFullDiskKeepsServing(t *testing.T) {
	requireRoot(t)
	proctest.NoRaceExitDelay(t)
	a := startAgent(t, onTmpfs("2m"))
	const id = "spiffe://example.org/full"
	a.createEntry(id, "-selector", "unix:uid:0", "-x509SVIDTTL", "5")
	ctx := ctxFor(t, time.Minute)
	open := dialAgentNames(t, a, []string{id})
	r, err := open.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := leafOf(t, r, id)

	filler := fillDisk(t, a.dataDir)
	var acked []string
	var writeErr error
	for i := range 200 {
		begin := time.Now()
		out, err := a.svidctl("entry", "create", "-spiffeID", fmt.Sprintf("spiffe://example.org/full/%d", i), "-selector", "unix:uid:5000", "-output", "json")
		if took := time.Since(begin); took > 15*time.Second {
			t.Fatalf("a write on a full disk took %v", took)
		}
		if err != nil {
			writeErr = err
			break
		}
		// SQLite may still fit a write into WAL space it already has.
		var e struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, e.ID)
	}
	if writeErr == nil {
		t.Fatal("200 writes succeeded on a full disk")
	}
	t.Logf("after %d writes that still fit: %v", len(acked), writeErr)
	if msg := writeErr.Error(); !strings.Contains(msg, "full") && !strings.Contains(msg, "no space") {
		t.Errorf("the error does not say the disk is full: %v", writeErr)
	}
	a.mustSvidctl("healthcheck")

	// Serving goes on: a rotation on the open stream, an SVID on a new one.
	r, err = open.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := leafOf(t, r, id); got.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("no rotation pushed while the disk is full")
	}
	fresh := dialAgentNames(t, a, []string{id})
	if r, err := fresh.Recv(ctx); err != nil || r.Get(id) == nil {
		t.Fatalf("new stream while the disk is full: %v, %v", r, err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	acked = append(acked, a.createEntry("spiffe://example.org/full/after", "-selector", "unix:uid:5000"))
	open.Close()
	fresh.Close()
	a.stop()
	storeIDs(t, a.dataDir) // not corrupted by the failed writes
	a.start()
	listed := map[string]bool{}
	for _, e := range a.entries() {
		listed[e.ID] = true
	}
	for _, id := range acked {
		if !listed[id] {
			t.Fatalf("acknowledged entry %s lost", id)
		}
	}
}

// TestCorruptCAFileRefused: a ca.json that is damaged or tampered with stops svidd with an
// error naming the file, and the file is left byte for byte as it was (never replaced by a
// fresh CA, which would silently change the trust root).
func TestCorruptCAFileRefused(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t)
	a.stop()
	caPath := filepath.Join(a.dataDir, "ca.json")
	orig, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	otherKey := func() string {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	editJSON := func(f func(m map[string]any)) func([]byte) []byte {
		return func(b []byte) []byte {
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			f(m)
			out, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
	}
	firstAuthority := func(m map[string]any) map[string]any {
		return m["authorities"].([]any)[0].(map[string]any)
	}
	tests := []struct {
		name   string
		tamper func([]byte) []byte
		mode   os.FileMode
		owner  int
		want   string
	}{
		{name: "truncated", tamper: func(b []byte) []byte { return b[:len(b)/2] }, want: "invalid"},
		{name: "empty", tamper: func([]byte) []byte { return nil }, want: "invalid"},
		{name: "not JSON", tamper: func([]byte) []byte { return []byte("-----BEGIN NOTHING-----\n") }, want: "invalid"},
		{name: "private key swapped for another", tamper: editJSON(func(m map[string]any) {
			firstAuthority(m)["private_key"] = otherKey()
		}), want: "does not match"},
		{name: "certificate garbled", tamper: editJSON(func(m map[string]any) {
			a := firstAuthority(m)
			a["certificate"] = strings.Replace(a["certificate"].(string), "MII", "MIJ", 1)
		}), want: "invalid"},
		{name: "another trust domain", tamper: editJSON(func(m map[string]any) { m["trust_domain"] = "evil.example" }), want: "trust domain"},
		{name: "no active authority", tamper: editJSON(func(m map[string]any) { firstAuthority(m)["state"] = "old" }), want: "active"},
		{name: "readable by others", mode: 0o644, want: "0644"},
		{name: "owned by another uid", owner: 1001, want: "owned by uid 1001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := orig
			if tt.tamper != nil {
				content = tt.tamper(slices.Clone(orig))
			}
			mode := tt.mode
			if mode == 0 {
				mode = 0o600
			}
			if err := os.WriteFile(caPath, content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(caPath, mode); err != nil {
				t.Fatal(err)
			}
			if tt.owner != 0 {
				if os.Geteuid() != 0 {
					t.Skip("chown needs root (CI runs as root)")
				}
				if err := os.Chown(caPath, tt.owner, tt.owner); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.Stat(caPath)
			code, out := runSviddOnce(t, a.args()[1:]...)
			if code == 0 {
				t.Fatalf("svidd started on a %s CA file:\n%s", tt.name, out)
			}
			if !strings.Contains(out, caPath) || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d; output does not name %s and say %q:\n%s", code, caPath, tt.want, out)
			}
			after, err := os.ReadFile(caPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after, content) {
				t.Fatal("svidd changed the CA file it refused")
			}
			if fi, _ := os.Stat(caPath); fi.Mode() != before.Mode() || fi.Sys().(*syscall.Stat_t).Uid != before.Sys().(*syscall.Stat_t).Uid {
				t.Fatalf("svidd changed the CA file's mode or owner: %v → %v", before.Mode(), fi.Mode())
			}
			if err := os.Chown(caPath, os.Geteuid(), os.Getegid()); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The original file still works: nothing else was damaged by the refusals.
	if err := os.WriteFile(caPath, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(caPath, 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	a.mustSvidctl("healthcheck")
}

// TestDataDirPermissionsRefused: a data dir writable by group or others (anyone could swap
// the CA file or the database) stops svidd with an error naming the dir; 0700 starts.
func TestDataDirPermissionsRefused(t *testing.T) {
	proctest.NoRaceExitDelay(t)
	a := startAgent(t)
	a.stop()
	for _, mode := range []os.FileMode{0o770, 0o707, 0o777, 0o720} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			if err := os.Chmod(a.dataDir, mode); err != nil {
				t.Fatal(err)
			}
			code, out := runSviddOnce(t, a.args()[1:]...)
			if code == 0 || !strings.Contains(out, a.dataDir) || !strings.Contains(out, "writable by group or others") {
				t.Fatalf("data dir %04o: exit %d\n%s", mode, code, out)
			}
			if fi, err := os.Stat(a.dataDir); err != nil || fi.Mode().Perm() != mode {
				t.Fatalf("svidd changed the refused data dir's mode to %v (%v)", fi.Mode(), err)
			}
		})
	}
	if err := os.Chmod(a.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	a.start()
	a.mustSvidctl("healthcheck")
}
