package test

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	floodID   = "spiffe://example.org/flood"
	uidFlood  = 1001
	uidVictim = 1002
)

// abuseLimits are the limits {} of the flood test: lowered from the defaults so that one
// process on this 2-core machine can trip every one of them.
const abuseLimits = `
limits {
  connections_per_second       = 20
  connection_burst             = 20
  max_open_connections_per_uid = 64
  streams_per_second           = 200
  stream_burst                 = 200
  max_open_streams_per_uid     = 100
}
`

var (
	floodOnce sync.Once
	floodBin  string
	floodErr  error
)

// floodBinary builds test/cmd/flood into the harness's binary dir. It is built without the
// race detector even under -race: the attacker should be as fast as it can be, and the probe
// measures latency, not itself.
func floodBinary(t *testing.T) string {
	t.Helper()
	floodOnce.Do(func() {
		floodBin = filepath.Join(bins.dir, "flood")
		out, err := exec.Command("go", "build", "-o", floodBin, "github.com/svidd/svidd/test/cmd/flood").CombinedOutput()
		if err != nil {
			floodErr = err
			t.Logf("go build: %s", out)
		}
	})
	if floodErr != nil {
		t.Fatalf("building flood: %v", floodErr)
	}
	return floodBin
}

// probeLatencies runs the probe as uid: count fresh connections, each timed from dial to its
// first secrets. Every probe must succeed.
func probeLatencies(t *testing.T, a *agent, uid uint32, count int) []time.Duration {
	t.Helper()
	c := startAs(t, uid, uid, nil, floodBinary(t), "-socket", a.api, "-mode", "probe", "-names", backendID+","+tdID,
		"-count", strconv.Itoa(count), "-interval", "100ms", "-timeout", "10s")
	var out []time.Duration
	for range count {
		var r struct {
			LatencyUS int64  `json:"latency_us"`
			Error     string `json:"error"`
		}
		if err := json.Unmarshal([]byte(c.next(t, 15*time.Second)), &r); err != nil {
			t.Fatal(err)
		}
		if r.Error != "" {
			t.Fatalf("uid %d probe failed: %s", uid, r.Error)
		}
		out = append(out, time.Duration(r.LatencyUS)*time.Microsecond)
	}
	<-c.done
	return out
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// floodSummary is what the attacker saw (test/cmd/flood attackSummary).
type floodSummary struct {
	RawAdmitted      int64    `json:"raw_admitted"`
	RawRefused       int64    `json:"raw_refused"`
	RawRefusalP50US  int64    `json:"raw_refusal_p50_us"`
	FreshServed      int64    `json:"fresh_served"`
	FreshRefused     int64    `json:"fresh_refused"`
	StreamsServed    int64    `json:"streams_served"`
	StreamsExhausted int64    `json:"streams_exhausted"`
	StreamRefusalUS  int64    `json:"stream_refusal_p50_us"`
	OtherErrors      int64    `json:"other_errors"`
	SampleErrors     []string `json:"sample_errors"`
}

// add accumulates one round; refusal times keep the worst round's median.
func (s *floodSummary) add(r floodSummary) {
	s.RawAdmitted += r.RawAdmitted
	s.RawRefused += r.RawRefused
	s.RawRefusalP50US = max(s.RawRefusalP50US, r.RawRefusalP50US)
	s.FreshServed += r.FreshServed
	s.FreshRefused += r.FreshRefused
	s.StreamsServed += r.StreamsServed
	s.StreamsExhausted += r.StreamsExhausted
	s.StreamRefusalUS = max(s.StreamRefusalUS, r.StreamRefusalUS)
	s.OtherErrors += r.OtherErrors
	s.SampleErrors = append(s.SampleErrors, r.SampleErrors...)
}

// TestFloodFromOneUIDDoesNotStarveAnother is issue 5's abuse test: a process under uid 1001
// floods the api socket with connections and streams as fast as it can; uid 1002's time to
// first secret (a fresh connection each time, so attestation included) stays within 2× of an
// unloaded run, and the flood is refused, quickly, with closed connections and
// ResourceExhausted.
//
// The machine has 2 cores and other test packages run beside this one, so the comparison is
// of medians, over rounds that alternate unloaded and flooded phases: a drift in the
// machine's other load then weighs on both sides alike. The attacker runs at nice 10. On an
// idle machine that changes nothing (it still floods as fast as it can); when the CPUs are
// oversubscribed, it keeps the test about svidd: without it, the probe's latency mostly
// measures how the kernel shares a CPU between the probe and the attacker's own busy loop,
// which no daemon can referee (on a host, that is what cgroups and systemd's CPUWeight= do).
// svidd's own work for the flood (accepting and refusing thousands of connections and
// streams a second) runs at normal priority.
func TestFloodFromOneUIDDoesNotStarveAnother(t *testing.T) {
	requireRoot(t)
	a := startAgent(t, withConfig(abuseLimits))
	a.createEntry(floodID, "-selector", "unix:uid:1001")
	a.createEntry(backendID, "-selector", "unix:uid:1002")
	floodBinary(t)

	const rounds, probes = 4, 6
	_ = probeLatencies(t, a, uidVictim, 3) // warm up: the SVID is minted, code paths paged in
	var (
		unloaded, loaded []time.Duration
		sum              floodSummary
		flooding         time.Duration
	)
	for range rounds {
		unloaded = append(unloaded, probeLatencies(t, a, uidVictim, probes)...)

		start := time.Now()
		flood := startAs(t, uidFlood, uidFlood, nil, floodBin, "-socket", a.api, "-mode", "attack", "-names", floodID+","+tdID,
			"-duration", "60s", "-raw", "4", "-fresh", "2", "-streams", "4", "-hold", "50", "-nice", "10")
		time.Sleep(500 * time.Millisecond) // the flood meets every limit within milliseconds
		loaded = append(loaded, probeLatencies(t, a, uidVictim, probes)...)
		if err := flood.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		var r floodSummary
		if err := json.Unmarshal([]byte(flood.next(t, 10*time.Second)), &r); err != nil {
			t.Fatal(err)
		}
		<-flood.done
		flooding += time.Since(start)
		sum.add(r)
	}
	mu, ml := medianOf(unloaded), medianOf(loaded)
	t.Logf("uid %d first secret: unloaded median %v, under flood median %v\nunloaded: %v\nloaded:   %v", uidVictim, mu, ml, unloaded, loaded)
	t.Logf("flood from uid %d for %v: %+v", uidFlood, flooding.Round(time.Millisecond), sum)

	if ml > 2*mu {
		t.Errorf("under the flood uid %d waited %v (median) for its first secret, more than 2× the unloaded %v", uidVictim, ml, mu)
	}
	// The flood met the limits, and was turned away quickly.
	if sum.RawRefused == 0 || sum.FreshRefused == 0 || sum.StreamsExhausted == 0 {
		t.Errorf("the flood was not refused: %+v", sum)
	}
	if refusal := time.Duration(sum.RawRefusalP50US) * time.Microsecond; refusal > 50*time.Millisecond {
		t.Errorf("a refused connection took %v (median) to be closed", refusal)
	}
	if refusal := time.Duration(sum.StreamRefusalUS) * time.Microsecond; refusal > 50*time.Millisecond {
		t.Errorf("a refused stream took %v (median) to fail", refusal)
	}
	// Admitted connections stayed within the limits: a full burst per round at most (the
	// bucket refills between rounds), plus 20/s.
	if admitted, limit := sum.RawAdmitted+sum.FreshServed, int64(rounds*20+flooding.Seconds()*20); admitted > limit {
		t.Errorf("%d connections of uid %d admitted in %v of flooding, over the limit of %d", admitted, uidFlood, flooding, limit)
	}
	// Streams held open never exceeded the cap (100): each round's flood holds what it got.
	if sum.StreamsServed > rounds*100+int64(flooding.Seconds()*200) {
		t.Errorf("%d streams served to uid %d", sum.StreamsServed, uidFlood)
	}
	if sum.OtherErrors > (sum.RawRefused+sum.StreamsExhausted)/20+5 {
		t.Errorf("the flood saw unexpected errors: %+v", sum)
	}

	// The agent said whom it refused, in a few lines (not one per refusal), and never uid 1002.
	logs := a.logs.String()
	warns := strings.Count(logs, "refusing a caller over its limits")
	if warns == 0 || !strings.Contains(logs, "uid=1001 reason=") {
		t.Errorf("no refusal of uid 1001 logged")
	}
	if strings.Contains(logs, "uid=1002 reason=") {
		t.Errorf("uid 1002 was refused:\n%s", logs)
	}
	if warns > 30 {
		t.Errorf("%d refusal lines logged for one flood; they should be rate-limited", warns)
	}
	// ...and counted every refusal by the limit that made it.
	m := scrape(t, a.metricsAddr())
	refused := func(reasons ...string) (n float64) {
		for _, r := range reasons {
			n += m[`svidd_agent_admission_refusals_total{reason="`+r+`"}`]
		}
		return n
	}
	if refused("connection_rate", "open_connections") == 0 || refused("stream_rate", "open_streams") == 0 {
		t.Errorf("svidd_agent_admission_refusals_total did not count the flood's refusals: connections %v, streams %v",
			refused("connection_rate", "open_connections"), refused("stream_rate", "open_streams"))
	}
	if _, err := a.svidctl("healthcheck"); err != nil {
		t.Fatal(err)
	}
}
