package sds

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// budgetServer serves SDS with every stream charged to testPeer's uid in c, as the agent's
// admission interceptor does on the api socket.
func budgetServer(t *testing.T, w *workloadtest.Watcher, c *admission.Controller, log *slog.Logger) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	srv, err := New(Config{Watcher: w, TrustDomain: tdExample, PeerFunc: fixedPeer, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	account := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		a, done, err := c.NewAccount(testPeer.UID)
		if err != nil {
			return err
		}
		defer done()
		return h(srv, ctxStream{ss, admission.NewContext(ss.Context(), a)})
	}
	addr := workloadtest.Serve(t, w, srv.Register, grpc.StreamInterceptor(account))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

// err waits for the stream to end and returns why.
func (c *deltaClient) err() error {
	c.t.Helper()
	return streamEnd(c.t, c.done, c.resps)
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// longNames returns n distinct names of 2,000 bytes, as the attacker of issue 11 sent.
func longNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("spiffe://example.org/%s/%d/", prefix, i)
		out[i] = s + strings.Repeat("x", 2000-len(s))
	}
	return out
}

// refusals records the controller's refusals by reason.
type refusals struct {
	mu sync.Mutex
	n  map[admission.Reason]int
}

func (r *refusals) add(reason admission.Reason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[admission.Reason]int{}
	}
	r.n[reason]++
}

func (r *refusals) get(reason admission.Reason) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

func wantBytes(t *testing.T, c *admission.Controller, want int64) {
	t.Helper()
	for deadline := time.Now().Add(waitLong); ; time.Sleep(5 * time.Millisecond) {
		got := c.Bytes(testPeer.UID)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("uid %d holds %d bytes, want %d", testPeer.UID, got, want)
		}
	}
}

func wantExhausted(t *testing.T, err error) {
	t.Helper()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream ended with %v, want ResourceExhausted", err)
	}
}

// TestNamesChargedToBudget: the names a stream keeps (SotW and delta, subscribed and claimed
// in initial_resource_versions) are charged to the caller's uid; a stream that would take the
// uid past its budget ends with ResourceExhausted and holds nothing; names dropped and
// streams closed give their bytes back.
func TestNamesChargedToBudget(t *testing.T) {
	var refused refusals
	c, err := admission.New(admission.Config{MaxBytesPerUID: 64 << 10, MaxUnentitledBytesPerUID: 24 << 10, OnReject: refused.add})
	if err != nil {
		t.Fatal(err)
	}
	w := workloadtest.NewWatcher(newFixture(t).View())
	client := budgetServer(t, w, c, nil)

	names := longNames("a", 20)
	s1 := openSotw(t, client)
	s1.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: append([]string{"ROOTCA"}, names...)})
	r1, _ := s1.recv()
	held := namesBytes(append([]string{"ROOTCA"}, names...))
	wantBytes(t, c, held)

	// A second stream with as many names would take the uid past 64 KiB.
	s2 := openSotw(t, client)
	s2.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: longNames("b", 20)})
	wantExhausted(t, s2.err())
	wantBytes(t, c, held)
	if refused.get(admission.Bytes) != 1 {
		t.Fatalf("refusals by bytes = %d, want 1", refused.get(admission.Bytes))
	}

	// Fewer names: the bytes come back, and a delta stream may subscribe in several requests
	// until it too meets the budget; what it claims to hold counts.
	s1.ack(r1, "ROOTCA")
	s1.recv()
	wantBytes(t, c, namesBytes([]string{"ROOTCA"}))
	d := openDelta(t, client)
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: longNames("c", 12)})
	d.none()
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: longNames("d", 12)})
	d.none()
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: longNames("e", 12)})
	wantExhausted(t, d.err())
	wantBytes(t, c, namesBytes([]string{"ROOTCA"}))

	d2 := openDelta(t, client)
	initial := map[string]string{}
	for _, n := range longNames("f", 20) {
		initial[n] = strings.Repeat("v", 1500)
	}
	d2.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{"ROOTCA"}, InitialResourceVersions: initial})
	wantExhausted(t, d2.err())
	if refused.get(admission.Bytes) != 3 {
		t.Fatalf("refusals by bytes = %d, want 3", refused.get(admission.Bytes))
	}

	s1.cancel()
	wantBytes(t, c, 0)
}

// TestUnentitledBudget: a caller entitled to nothing (empty View) may keep its streams and
// names waiting for an entry only within the small budget, which also counts each stream;
// once entitled, its streams are charged their names alone.
func TestUnentitledBudget(t *testing.T) {
	var refused refusals
	c, err := admission.New(admission.Config{MaxBytesPerUID: 64 << 10, MaxUnentitledBytesPerUID: 24 << 10, OnReject: refused.add})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	w := workloadtest.NewWatcher(&workload.View{})
	client := budgetServer(t, w, c, nil)

	s1 := openSotw(t, client)
	s1.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	s1.none()
	wantBytes(t, c, admission.UnentitledStreamBytes+namesBytes([]string{idWeb}))

	// A second waiting stream would take the uid past 24 KiB.
	s2 := openSotw(t, client)
	s2.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	wantExhausted(t, s2.err())
	if n := refused.get(admission.UnentitledBytes); n != 1 {
		t.Fatalf("refusals of an unentitled caller = %d, want 1", n)
	}

	// The entry appears: the waiting stream gets its secret, and its ACK leaves it charged
	// only its name; more streams fit again.
	w.Publish(f.View())
	r, _ := s1.recv()
	s1.ack(r, idWeb)
	wantBytes(t, c, namesBytes([]string{idWeb}))
	s3 := openSotw(t, client)
	s3.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb}})
	s3.recv()
}

// TestNACKLogLimited: a client that NACKs in a loop gets a few warnings logged, not one per
// NACK; the rest are counted, and the next line let through is preceded by their number.
func TestNACKLogLimited(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var suppressed sync.WaitGroup
	var dropped int
	var buf proctest.Buffer
	c, err := admission.New(admission.Config{Now: clock, OnLogSuppressed: func() { mu.Lock(); dropped++; mu.Unlock(); suppressed.Done() }})
	if err != nil {
		t.Fatal(err)
	}
	w := workloadtest.NewWatcher(newFixture(t).View())
	client := budgetServer(t, w, c, slog.New(slog.NewTextHandler(&buf, nil)))

	s := openSotw(t, client)
	s.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{"ROOTCA"}})
	r, _ := s.recv()
	nack := &discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA"}, ResponseNonce: r.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}}
	const nacks = 200
	suppressed.Add(nacks - 5)
	for range nacks {
		s.send(nack)
	}
	suppressed.Wait() // the stream's burst is 5 lines
	count := func(msg string) int {
		n := 0
		for _, l := range buf.Lines() {
			if strings.Contains(l, msg) {
				n++
			}
		}
		return n
	}
	if n := count("envoy rejected secrets"); n != 5 {
		t.Fatalf("%d NACK warnings logged for %d NACKs, want 5", n, nacks)
	}

	mu.Lock()
	now = now.Add(10 * time.Second)
	mu.Unlock()
	s.send(nack)
	for deadline := time.Now().Add(waitLong); count("envoy rejected secrets") < 6; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no warning after the budget refilled")
		}
	}
	lines := buf.Lines()
	summary := lines[len(lines)-2]
	if !strings.Contains(summary, "suppressed similar log lines") || !strings.Contains(summary, fmt.Sprintf("suppressed=%d", nacks-5)) ||
		!strings.Contains(summary, "uid=1000") {
		t.Fatalf("summary line %q, want suppressed=%d for uid 1000", summary, nacks-5)
	}
	mu.Lock()
	defer mu.Unlock()
	if dropped != nacks-5 {
		t.Fatalf("OnLogSuppressed called %d times, want %d", dropped, nacks-5)
	}
}
