package test

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func decodeLine(t *testing.T, line string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("bad line %q: %v", line, err)
	}
	return m
}

// TestGoSpiffeX509SourceSeesRotation: a go-spiffe X509Source in a process under another uid
// gets its SVID from svidd and observes the rotation svidd pushes.
func TestGoSpiffeX509SourceSeesRotation(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(frontendID, "-selector", "unix:uid:1001", "-x509SVIDTTL", "5")
	c := startAs(t, 1001, 1001, nil, bins.spiffeclient, "-socket", a.api, "x509", "-updates", "1")
	first := decodeLine(t, c.next(t, 30*time.Second))
	second := decodeLine(t, c.next(t, 30*time.Second))
	if first["spiffe_id"] != frontendID || second["spiffe_id"] != frontendID {
		t.Fatalf("SVIDs %v, %v; want %s", first, second, frontendID)
	}
	if first["serial"] == second["serial"] {
		t.Fatal("the X509Source saw no new SVID")
	}
}

// TestGoSpiffeJWT: FetchJWTSVID and ValidateJWTSVID through go-spiffe's client.
func TestGoSpiffeJWT(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(backendID, "-selector", "unix:uid:1002")
	c := startAs(t, 1002, 1002, nil, bins.spiffeclient, "-socket", a.api, "jwt", "-audience", "payments")
	got := decodeLine(t, c.next(t, 30*time.Second))
	if got["spiffe_id"] != backendID || got["validated_id"] != backendID || got["wrong_audience_rejected"] != true {
		t.Fatalf("JWT round trip: %v", got)
	}
}

// TestSpiffeTLSBetweenTwoPrograms: two go-spiffe programs under two uids complete an mTLS
// exchange with certificates from svidd, each authorizing the other's SPIFFE ID.
func TestSpiffeTLSBetweenTwoPrograms(t *testing.T) {
	requireRoot(t)
	a := startAgent(t)
	a.createEntry(frontendID, "-selector", "unix:uid:1001")
	a.createEntry(backendID, "-selector", "unix:uid:1002")
	srv := startAs(t, 1001, 1001, nil, bins.spiffeclient, "-socket", a.api, "serve", "-authorize", backendID)
	addr, _ := decodeLine(t, srv.next(t, 30*time.Second))["addr"].(string)
	cli := startAs(t, 1002, 1002, nil, bins.spiffeclient, "-socket", a.api, "dial", "-addr", addr, "-authorize", frontendID)
	if got := decodeLine(t, cli.next(t, 30*time.Second)); got["reply"] != "pong to ping\n" {
		t.Fatalf("client got %v", got)
	}
	// A client that expects a different server refuses the handshake.
	srv2 := startAs(t, 1001, 1001, nil, bins.spiffeclient, "-socket", a.api, "serve", "-authorize", backendID)
	addr2, _ := decodeLine(t, srv2.next(t, 30*time.Second))["addr"].(string)
	bad := startAs(t, 1002, 1002, nil, bins.spiffeclient, "-socket", a.api, "dial", "-addr", addr2, "-authorize", "spiffe://example.org/not-frontend")
	if line, ok := bad.nextOrNone(15 * time.Second); ok {
		t.Fatalf("client accepted the wrong server: %s", line)
	}
	<-bad.done
	if bad.cmd.ProcessState.ExitCode() == 0 || !strings.Contains(bad.stderr.String(), "unexpected ID") {
		t.Fatalf("wrong-server dial: exit %d, stderr %q", bad.cmd.ProcessState.ExitCode(), bad.stderr.String())
	}
}

// TestWorkloadAPIEndpointRules: the workload.spiffe.io header is required (InvalidArgument
// without it; SDS does not need it), and a caller with no identity gets PermissionDenied.
func TestWorkloadAPIEndpointRules(t *testing.T) {
	a := startAgent(t)
	conn, err := grpc.NewClient("unix://"+a.api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx := ctxFor(t, 20*time.Second)

	stream, err := client.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("without the header: %v, want InvalidArgument", err)
	}
	hctx := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err = client.FetchX509SVID(hctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("caller with no entry: %v, want PermissionDenied", err)
	}
	a.createEntry("spiffe://example.org/root", "-selector", "unix:uid:0")
	stream, err = client.FetchX509SVID(hctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetSvids()) != 1 || resp.GetSvids()[0].GetSpiffeId() != "spiffe://example.org/root" || len(resp.GetSvids()[0].GetBundle()) == 0 {
		t.Fatalf("with an entry: %v, %v", resp, err)
	}
}

// TestMetricsMoveDuringRun scrapes /metrics while Envoy-like streams run: the stream gauge,
// responses, ACKs and mints move, and the expiry gauges are set.
func TestMetricsMoveDuringRun(t *testing.T) {
	a := startAgent(t)
	const id = "spiffe://example.org/metrics"
	a.createEntry(id, "-selector", "unix:uid:0")
	s := dialAgentNames(t, a, []string{id, tdID})
	if _, err := s.Recv(ctxFor(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	addr := a.metricsAddr()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := scrape(t, addr)
		ok := m[`svidd_api_streams_open{kind="stream",service="sds"}`] == 1 &&
			m[`svidd_api_responses_total{kind="stream",service="sds"}`] >= 1 &&
			m[`svidd_api_acks_total{kind="stream",service="sds"}`] >= 1 &&
			m[`svidd_svid_x509_mint_duration_seconds_count{result="ok"}`] >= 1 &&
			m[`svidd_agent_entries`] == 1 &&
			m[`svidd_svid_soonest_not_after_timestamp_seconds`] > float64(time.Now().Unix()) &&
			m[`svidd_ca_not_after_timestamp_seconds`] > float64(time.Now().Unix()) &&
			m[`go_goroutines`] > 0
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not move as expected:\n%v", m)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$`)

// scrape returns every sample of the Prometheus text exposition, keyed by name{labels}.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if m := sampleLine.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[2], 64)
			if err == nil {
				out[m[1]] = v
			}
		}
	}
	return out
}
