package main

import (
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// csvHeader is the CSV's columns, one row per scenario run; plot reads it by name.
var csvHeader = []string{
	"scenario", "streams", "conns", "uids", "entries",
	"first_p50_ms", "first_p99_ms", "first_max_ms",
	"push_p50_ms", "push_p99_ms", "push_max_ms",
	"rss_idle_kib", "rss_per_stream_kib", "heap_kib", "goroutines", "cpu_s",
	"cold_start_ms", "fresh_caller_ms",
}

// csvColumns is the CSV's header: csvHeader, then the floor's columns.
func csvColumns() []string { return append(slices.Clone(csvHeader), floorCSVHeader()...) }

// perStreamKiB is the RSS the open streams added, per stream.
func (r *result) perStreamKiB() float64 {
	if r.Open.RSSKiB == 0 || r.Idle.RSSKiB == 0 {
		return -1
	}
	return float64(r.Open.RSSKiB-r.Idle.RSSKiB) / float64(r.Streams)
}

// cpu is the agent's CPU time from before the burst to after the change.
func (r *result) cpu() time.Duration { return r.After.CPU - r.Idle.CPU }

func (r *result) csvRow() []string {
	ms := func(d time.Duration) string {
		if d < 0 {
			return ""
		}
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
	}
	num := func(v int64) string {
		if v < 0 {
			return ""
		}
		return strconv.FormatInt(v, 10)
	}
	per := ""
	if v := r.perStreamKiB(); v >= 0 {
		per = strconv.FormatFloat(v, 'f', 2, 64)
	}
	return append([]string{
		r.Name, strconv.Itoa(r.Streams), strconv.Itoa(r.Conns), strconv.Itoa(r.UIDs), strconv.Itoa(r.Entries + r.Extra),
		ms(percentile(r.First, 50)), ms(percentile(r.First, 99)), ms(percentile(r.First, 100)),
		ms(percentile(r.Push, 50)), ms(percentile(r.Push, 99)), ms(percentile(r.Push, 100)),
		num(r.Idle.RSSKiB), per, num(r.Open.HeapKiB), num(r.Open.Goroutines),
		strconv.FormatFloat(r.cpu().Seconds(), 'f', 2, 64),
		ms(r.Cold), ms(r.Fresh),
	}, floorCSV(r)...)
}

// appendCSV appends rows to path, writing the header first if the file is new or empty.
func appendCSV(path string, rs []*result) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
		w.Write(csvColumns())
	}
	for _, r := range rs {
		w.Write(r.csvRow())
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func fmtMS(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return fmt.Sprintf("%.3f", ms)
	case ms < 1000:
		return fmt.Sprintf("%.1f", ms)
	}
	return fmt.Sprintf("%.0f", ms)
}

func fmtMiB(kib int64) string {
	if kib <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", float64(kib)/1024)
}

// tableRow is one row of the table: a label and its cell for each scenario.
type tableRow struct {
	label string
	cell  func(r *result) string
}

// printTable writes one fixed-width table: a row per figure, a column per scenario.
func printTable(w io.Writer, rs []*result) {
	pct := func(ds []time.Duration, p float64) string { return fmtMS(percentile(ds, p)) }
	optMS := func(d time.Duration, errs string) string {
		if errs != "" {
			return "FAILED"
		}
		return fmtMS(d)
	}
	rows := []tableRow{
		{"streams", func(r *result) string { return strconv.Itoa(r.Streams) }},
		{"connections", func(r *result) string { return strconv.Itoa(r.Conns) }},
		{"uids (callers)", func(r *result) string { return strconv.Itoa(r.UIDs) }},
		{"entries", func(r *result) string {
			if r.Extra > 0 {
				return fmt.Sprintf("%d+%d", r.Entries, r.Extra)
			}
			return strconv.Itoa(r.Entries)
		}},
		{"served", func(r *result) string { return fmt.Sprintf("%d/%d", r.Served, r.Streams) }},
		{"first secret p50 ms", func(r *result) string { return pct(r.First, 50) }},
		{"first secret p99 ms", func(r *result) string { return pct(r.First, 99) }},
		{"first secret max ms", func(r *result) string { return pct(r.First, 100) }},
		{"all served ms", func(r *result) string { return fmtMS(r.AllServed) }},
		{"change", func(r *result) string { return r.PushMode }},
		{"push p50 ms", func(r *result) string { return pct(r.Push, 50) }},
		{"push p99 ms", func(r *result) string { return pct(r.Push, 99) }},
		{"push max ms", func(r *result) string { return pct(r.Push, 100) }},
		{"push to all ms", func(r *result) string { return fmtMS(r.PushTotal) }},
		{"push missing", func(r *result) string { return strconv.Itoa(r.PushMissing) }},
		{"RSS idle MiB", func(r *result) string { return fmtMiB(r.Idle.RSSKiB) }},
		{"RSS idle anon MiB", func(r *result) string { return fmtMiB(r.Idle.AnonKiB) }},
		{"RSS streams open MiB", func(r *result) string { return fmtMiB(r.Open.RSSKiB) }},
		{"RSS per stream KiB", func(r *result) string {
			if v := r.perStreamKiB(); v >= 0 {
				return fmt.Sprintf("%.2f", v)
			}
			return "n/a"
		}},
		{"RSS after change MiB", func(r *result) string { return fmtMiB(r.After.RSSKiB) }},
		{"heap in use idle MiB", func(r *result) string { return fmtMiB(r.Idle.HeapKiB) }},
		{"heap in use open MiB", func(r *result) string { return fmtMiB(r.Open.HeapKiB) }},
		{"goroutines idle", func(r *result) string { return optNum(r.Idle.Goroutines) }},
		{"goroutines open", func(r *result) string { return optNum(r.Open.Goroutines) }},
		{"SVIDs minted by burst", func(r *result) string {
			if r.Open.Mints < 0 || r.Idle.Mints < 0 {
				return "n/a"
			}
			return strconv.FormatInt(r.Open.Mints-r.Idle.Mints, 10)
		}},
		{"agent's first response mean ms", func(r *result) string { return optMean(meanFirst(r.Idle, r.Open)) }},
		{"CPU burst s", func(r *result) string { return fmt.Sprintf("%.2f", (r.Open.CPU - r.Idle.CPU).Seconds()) }},
		{"CPU change s", func(r *result) string { return fmt.Sprintf("%.2f", (r.After.CPU - r.Open.CPU).Seconds()) }},
		{"fresh caller ms", func(r *result) string { return optMS(r.Fresh, r.FreshErr) }},
		{"churn streams ok/failed", func(r *result) string {
			if r.ChurnRate == 0 {
				return "-"
			}
			return fmt.Sprintf("%d/%d", len(r.Churn), r.ChurnFailed)
		}},
		{"churn first p50 ms", func(r *result) string {
			if r.ChurnRate == 0 {
				return "-"
			}
			return pct(r.Churn, 50)
		}},
		{"churn first p99 ms", func(r *result) string {
			if r.ChurnRate == 0 {
				return "-"
			}
			return pct(r.Churn, 99)
		}},
		{"churn agent's first response mean ms", func(r *result) string {
			if r.BeforeChurn == nil || r.AfterChurn == nil {
				return "-"
			}
			return optMean(meanFirst(*r.BeforeChurn, *r.AfterChurn))
		}},
		{"no-op RPC same pace p50 ms", func(r *result) string {
			if r.ChurnRate == 0 || len(r.ChurnFloor) == 0 {
				return "-"
			}
			return pct(r.ChurnFloor, 50)
		}},
		{"RSS after churn MiB", func(r *result) string {
			if r.AfterChurn == nil {
				return "-"
			}
			return fmtMiB(r.AfterChurn.RSSKiB)
		}},
		{"cold start ms", func(r *result) string {
			if !r.scenario.Cold {
				return "-"
			}
			return optMS(r.Cold, r.ColdErr)
		}},
	}
	rows = append(rows, floorRows()...)
	rows = append(rows, []tableRow{
		{"load client CPU s", func(r *result) string { return fmt.Sprintf("%.2f", r.ClientCPU.Seconds()) }},
		{"run took s", func(r *result) string { return fmt.Sprintf("%.1f", r.Elapsed.Seconds()) }},
		{"host load avg at start", func(r *result) string { return r.LoadAvg }},
		{"host runnable at start", func(r *result) string { return r.Runnable }},
	}...)
	labelW := 0
	for _, rw := range rows {
		labelW = max(labelW, len(rw.label))
	}
	colW := make([]int, len(rs))
	cells := make([][]string, len(rows))
	for i, rw := range rows {
		cells[i] = make([]string, len(rs))
		for j, r := range rs {
			cells[i][j] = rw.cell(r)
			colW[j] = max(colW[j], len(cells[i][j]), len(r.Name))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s", labelW, "")
	for j, r := range rs {
		fmt.Fprintf(&b, "  %*s", colW[j], r.Name)
	}
	b.WriteByte('\n')
	for i, rw := range rows {
		fmt.Fprintf(&b, "%-*s", labelW, rw.label)
		for j := range rs {
			fmt.Fprintf(&b, "  %*s", colW[j], cells[i][j])
		}
		b.WriteByte('\n')
	}
	var notes []string
	for _, r := range rs {
		for _, n := range []string{r.PushNote, prefixed("first-secret error", r.FirstErr), prefixed("fresh caller error", r.FreshErr), prefixed("cold start error", r.ColdErr)} {
			if n != "" {
				notes = append(notes, r.Name+": "+n)
			}
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "note: %s\n", truncate(n, 400))
	}
	io.WriteString(w, b.String())
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + ": " + s
}

func optNum(v int64) string {
	if v < 0 {
		return "n/a"
	}
	return strconv.FormatInt(v, 10)
}

// optMean formats a mean duration in ms, "n/a" when it could not be measured (no metrics).
func optMean(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond))
}
