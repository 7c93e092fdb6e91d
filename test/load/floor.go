package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// The floor is what svidd is measured against in the same run: test/load/floorsds, a bare
// grpc-go SDS server that answers every stream with one pre-encoded SVID and bundle (no
// attestation, no entries, no minting). It is driven by the same client, with the same
// connections (made by the same uids), burst and churn; the table and the CSV give each
// figure of svidd as a ratio to the floor's.

// floorable says whether the floor can stand in for svidd in sc: it holds one SVID
// (spiffe://example.org/load/0), so every stream must ask for that one.
func (sc scenario) floorable() bool { return sc.Entries == 1 && sc.Extra == 0 }

// runFloor runs sc's burst (and churn) against a fresh floor server and returns its figures;
// there is no change to push, no fresh caller and no cold start.
func (e *env) runFloor(sc scenario) (res *result, err error) {
	fsc := sc
	fsc.Name = sc.Name + " floor"
	fsc.Change, fsc.Cold = "none", false
	res = &result{scenario: fsc, Fresh: -1, Cold: -1, AllServed: -1, PushTotal: -1}
	dir, err := os.MkdirTemp("/tmp", "svf-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "floorsds.log")
	defer func() {
		if e.keep || err != nil {
			fmt.Fprintf(e.log, "kept %s (floor log: %s)\n", dir, logPath)
			return
		}
		os.RemoveAll(dir)
	}()
	exe := filepath.Join(dir, "load")
	if err := copyExecutable(exe); err != nil {
		return nil, fmt.Errorf("copying the tool for workers: %w", err)
	}
	socket := filepath.Join(dir, "api.sock")
	var env []string
	if e.cpuProf != "" {
		env = append(env, "LOAD_CPUPROFILE="+e.cpuProf+".floor")
	}
	var fp proc
	if err := fp.startCmd(e.floor, []string{"-socket", socket}, env, logPath); err != nil {
		return nil, err
	}
	defer func() {
		if serr := fp.stop(10 * time.Second); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := waitDial(socket, fp.exited, e.timeout); err != nil {
		return nil, fmt.Errorf("floor server: %w; log: %s", err, logPath)
	}
	sample := func() (usage, error) { return procUsage(fp.pid()) }
	time.Sleep(e.settle)
	if res.Idle, err = sample(); err != nil {
		return nil, err
	}

	workers, all, err := e.startWorkers(exe, socket, fsc)
	if err != nil {
		return nil, err
	}
	defer closeWorkers(all)
	if e.cpuProf != "" {
		fp.signal(syscall.SIGUSR1)
	}
	if err := e.burst(workers, fsc, res); err != nil {
		return res, err
	}
	time.Sleep(e.settle)
	if res.Open, err = sample(); err != nil {
		return res, err
	}
	res.After = res.Open
	if e.cpuProf != "" {
		fp.signal(syscall.SIGUSR2)
	}
	if err := e.churn(workers[0], fsc, sample, res); err != nil {
		return res, err
	}
	return res, nil
}

// waitDial waits until socket accepts a connection, or the process exits, or timeout.
func waitDial(socket string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited during start: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not accepting on %s after %s: %w", socket, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ratio is a/b to two decimals, or "-" when either is missing (negative) or b is zero.
func ratio(a, b float64) string {
	if a < 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// floorFigures are the figures compared with the floor, each as a function of one result:
// the table prints svidd's, the floor's and their ratio; the CSV the floor's and the ratio.
var floorFigures = []struct {
	name, unit, csv string
	value           func(r *result) float64 // -1: not measured
}{
	{"first secret p50", "ms", "first_p50", func(r *result) float64 { return msOf(percentile(r.First, 50)) }},
	{"first secret p99", "ms", "first_p99", func(r *result) float64 { return msOf(percentile(r.First, 99)) }},
	{"all served", "ms", "all_served", func(r *result) float64 { return msOf(r.AllServed) }},
	{"churn first p50", "ms", "churn_first_p50", func(r *result) float64 {
		if r.ChurnRate == 0 {
			return -1
		}
		return msOf(percentile(r.Churn, 50))
	}},
	{"RSS idle", "MiB", "rss_idle", func(r *result) float64 { return kibOf(r.Idle.RSSKiB) / 1024 }},
	{"RSS per stream", "KiB", "rss_per_stream", func(r *result) float64 { return r.perStreamKiB() }},
	{"CPU burst", "s", "cpu_burst", func(r *result) float64 { return (r.Open.CPU - r.Idle.CPU).Seconds() }},
}

func msOf(d time.Duration) float64 {
	if d < 0 {
		return -1
	}
	return float64(d) / float64(time.Millisecond)
}

func kibOf(v int64) float64 {
	if v <= 0 {
		return -1
	}
	return float64(v)
}

// fmtFigure formats a floor figure: three decimals below 10, one above; "-" when missing.
func fmtFigure(v float64) string {
	switch {
	case v < 0:
		return "-"
	case v < 10:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// floorRows are the table's rows for the floor: its figures and svidd's ratio to each, "-"
// in a scenario the floor did not run.
func floorRows() []tableRow {
	rows := []tableRow{{"floor: served", func(r *result) string {
		if r.Floor == nil {
			return "-"
		}
		return fmt.Sprintf("%d/%d", r.Floor.Served, r.Floor.Streams)
	}}}
	for _, f := range floorFigures {
		rows = append(rows,
			tableRow{"floor: " + f.name + " " + f.unit, func(r *result) string {
				if r.Floor == nil {
					return "-"
				}
				return fmtFigure(f.value(r.Floor))
			}},
			tableRow{"svidd/floor " + f.name, func(r *result) string {
				if r.Floor == nil {
					return "-"
				}
				return ratio(f.value(r), f.value(r.Floor))
			}})
	}
	return rows
}

// floorCSVHeader and floorCSV are the CSV's floor columns: floor_X (the floor's figure) and
// ratio_X (svidd's over it), empty where the floor did not run.
func floorCSVHeader() []string {
	var h []string
	for _, f := range floorFigures {
		h = append(h, "floor_"+f.csv, "ratio_"+f.csv)
	}
	return h
}

func floorCSV(r *result) []string {
	var out []string
	for _, f := range floorFigures {
		if r.Floor == nil {
			out = append(out, "", "")
			continue
		}
		fl := ""
		if v := f.value(r.Floor); v >= 0 {
			fl = strconv.FormatFloat(v, 'f', 3, 64)
		}
		rt := ratio(f.value(r), f.value(r.Floor))
		if rt == "-" {
			rt = ""
		}
		out = append(out, fl, rt)
	}
	return out
}
