package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(float64(100 - i)) // 100 … 1, unsorted on purpose
	}
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, -1},
		{"one", []time.Duration{ms(3)}, 99, ms(3)},
		{"p50 of 100", hundred, 50, ms(50)},
		{"p99 of 100", hundred, 99, ms(99)},
		{"max", hundred, 100, ms(100)},
		{"p99 of 10 is the max", hundred[90:], 99, ms(10)},
		{"p50 of two", []time.Duration{ms(2), ms(1)}, 50, ms(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.in, tt.p); got != tt.want {
				t.Fatalf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestPlacement(t *testing.T) {
	tests := []scenario{
		{Streams: 1, Conns: 1, UIDs: 1, Entries: 1},
		{Streams: 10000, Conns: 1, UIDs: 1, Entries: 1},
		{Streams: 1000, Conns: 1000, UIDs: 1000, Entries: 10000},
		{Streams: 100, Conns: 7, UIDs: 3, Entries: 5},
		{Streams: 50, Conns: 10, UIDs: 1, Entries: 20},
	}
	for _, sc := range tests {
		sc.Change = "none"
		t.Run(fmt.Sprintf("n%d_c%d_u%d_e%d", sc.Streams, sc.Conns, sc.UIDs, sc.Entries), func(t *testing.T) {
			if err := sc.validate(true); err != nil {
				t.Fatal(err)
			}
			uidsUsed := map[int]bool{}
			connsUsed := map[int]bool{}
			entriesUsed := map[int]bool{}
			for j := range sc.Streams {
				u, c, i := sc.uidOf(j), sc.connOf(j), sc.entryOf(j)
				if i < 0 || i >= sc.Entries {
					t.Fatalf("stream %d asks for entry %d of %d", j, i, sc.Entries)
				}
				if i%sc.UIDs != u {
					t.Fatalf("stream %d of uid index %d asks for entry %d, which belongs to uid index %d", j, u, i, i%sc.UIDs)
				}
				if c%sc.UIDs != u {
					t.Fatalf("stream %d rides connection %d, which belongs to another uid", j, c)
				}
				uidsUsed[u], connsUsed[c], entriesUsed[i] = true, true, true
			}
			if len(uidsUsed) != sc.UIDs || len(connsUsed) != sc.Conns {
				t.Fatalf("used %d uids and %d conns, want %d and %d", len(uidsUsed), len(connsUsed), sc.UIDs, sc.Conns)
			}
			if want := min(sc.Streams, sc.Entries); sc.UIDs == 1 && len(entriesUsed) != want {
				t.Fatalf("used %d entries, want %d", len(entriesUsed), want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := scenario{Streams: 10, Conns: 2, UIDs: 2, Entries: 2, Change: "entry"}
	tests := []struct {
		name string
		mod  func(*scenario)
		root bool
		want string
	}{
		{"fine", func(*scenario) {}, true, ""},
		{"fewer conns than uids", func(s *scenario) { s.Conns = 1 }, true, "conns (1) must be at least uids"},
		{"fewer streams than conns", func(s *scenario) { s.Streams = 1 }, true, "streams (1) must be at least conns"},
		{"uid without entry", func(s *scenario) { s.Entries = 1 }, true, "entries (1) must be at least uids"},
		{"uids without root", func(*scenario) {}, false, "needs root"},
		{"rotate without ttl", func(s *scenario) { s.Change = "rotate" }, true, "needs a short -ttl"},
		{"unknown change", func(s *scenario) { s.Change = "ca" }, true, "unknown -change"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := ok
			tt.mod(&sc)
			err := sc.validate(tt.root)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 1234
go_memstats_heap_inuse_bytes 1.2582912e+07
svidd_sds_streams{kind="sotw"} 10
svidd_sds_streams{kind="delta"} 5
svidd_svid_x509_mint_duration_seconds_count{result="ok"} 3
`
	m, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if m["go_goroutines"] != 1234 || m["go_memstats_heap_inuse_bytes"] != 12582912 {
		t.Fatalf("parsed %v", m)
	}
	if m["svidd_sds_streams"] != 15 || m["svidd_svid_x509_mint_duration_seconds_count"] != 3 {
		t.Fatalf("labelled samples not summed by name: %v", m)
	}
}

func TestProcCPU(t *testing.T) {
	// Burn some CPU so the reading cannot be zero by luck of the clock tick.
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	d, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > time.Hour {
		t.Fatalf("procCPU(self) = %v", d)
	}
}

func TestAppendCSV(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench.csv")
	r := &result{scenario: scenario{Name: "s10", Streams: 10, Conns: 1, UIDs: 1, Entries: 1}, Fresh: ms(1.5), Cold: -1,
		First:  []time.Duration{ms(1), ms(2)},
		Idle:   usage{RSSKiB: 10000, Goroutines: -1, HeapKiB: -1},
		Open:   usage{RSSKiB: 10100, Goroutines: 40, HeapKiB: 3000, CPU: time.Second},
		After:  usage{CPU: 2 * time.Second},
		Served: 10}
	// The floor: half svidd's first-secret p99, a quarter of its CPU; no per-stream RSS.
	r.Floor = &result{scenario: r.scenario, First: []time.Duration{ms(1)}, Served: 10,
		Idle: usage{RSSKiB: 5000, CPU: time.Second}, Open: usage{CPU: 1250 * time.Millisecond}}
	for range 2 {
		if err := appendCSV(path, []*result{r}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || strings.Join(recs[0], ",") != strings.Join(csvColumns(), ",") || len(recs[2]) != len(recs[0]) {
		t.Fatalf("want header + 2 rows, got %q", recs)
	}
	got := map[string]string{}
	for i, h := range recs[0] {
		got[h] = recs[2][i]
	}
	want := map[string]string{"scenario": "s10", "first_p99_ms": "2.000", "rss_per_stream_kib": "10.00", "heap_kib": "3000",
		"goroutines": "40", "cpu_s": "2.00", "cold_start_ms": "", "fresh_caller_ms": "1.500", "push_p50_ms": "",
		"floor_first_p99": "1.000", "ratio_first_p99": "2.00", "floor_rss_idle": "4.883", "ratio_rss_idle": "2.00",
		"floor_cpu_burst": "0.250", "ratio_cpu_burst": "4.00", "floor_rss_per_stream": "", "ratio_rss_per_stream": ""}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// TestRunEndToEnd builds the tool and runs it against a real svidd: two uids (as root),
// entry change, churn and cold start, then a rotate run; it checks the table and the CSV.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds svidd and the tool; run without -short")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "load")
	build := exec.Command("go", "build", "-o", bin, "./test/load")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the tool: %v\n%s", err, out)
	}
	csvPath := filepath.Join(t.TempDir(), "bench.csv")
	uids := "1"
	if os.Geteuid() == 0 {
		uids = "2"
	}
	runs := []struct {
		name string
		args []string
		want []*regexp.Regexp
	}{
		{"entry change, churn, cold start", []string{"-streams", "20", "-conns", "2", "-uids", uids, "-entries", "4", "-change", "entry",
			"-churn", "20", "-duration", "500ms", "-csv", csvPath, "-name", "e2e"}, []*regexp.Regexp{
			regexp.MustCompile(`(?m)^served\s+20/20$`),
			regexp.MustCompile(`(?m)^push missing\s+0$`),
			regexp.MustCompile(`(?m)^churn streams ok/failed\s+\d+/0$`),
			regexp.MustCompile(`(?m)^cold start ms\s+\d`),
			regexp.MustCompile(`(?m)^fresh caller ms\s+\d`),
		}},
		{"one entry, against the floor", []string{"-streams", "10", "-entries", "1", "-change", "none", "-nocold", "-churn", "20", "-duration", "300ms"}, []*regexp.Regexp{
			regexp.MustCompile(`(?m)^served\s+10/10$`),
			regexp.MustCompile(`(?m)^floor: served\s+10/10$`),
			regexp.MustCompile(`(?m)^svidd/floor first secret p99\s+\d+\.\d\d$`),
			regexp.MustCompile(`(?m)^svidd/floor RSS idle\s+\d+\.\d\d$`),
			regexp.MustCompile(`(?m)^svidd/floor churn first p50\s+\d+\.\d\d$`),
		}},
		{"rotation, a process per uid", []string{"-streams", "5", "-conns", "2", "-uids", uids, "-entries", "2", "-change", "rotate", "-ttl", "5s", "-nocold", "-procPerUID"}, []*regexp.Regexp{
			regexp.MustCompile(`(?m)^served\s+5/5$`),
			regexp.MustCompile(`(?m)^push missing\s+0$`),
			regexp.MustCompile(`(?m)^push max ms\s+\d`),
		}},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"-settle", "100ms", "-timeout", "20s", "-metrics", ""}, r.args...)...)
			cmd.Dir = root
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("load %v: %v\nstdout:\n%s\nstderr:\n%s", r.args, err, stdout.String(), stderr.String())
			}
			for _, re := range r.want {
				if !re.Match(stdout.Bytes()) {
					t.Errorf("table lacks %s:\n%s\nstderr:\n%s", re, stdout.String(), stderr.String())
				}
			}
		})
	}
	b, err := os.ReadFile(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[1][0] != "e2e" || recs[1][1] != "20" || recs[1][6] == "" {
		t.Fatalf("CSV:\n%s", b)
	}
}
