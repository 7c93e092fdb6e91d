// Command plot draws docs/bench.png from the load tool's CSV (docs/bench.csv): first-secret
// p99 and RSS per stream against the number of streams, log-log, with issue 6's targets as
// dashed lines. Standard library only: lines on an image.RGBA, png.Encode.
//
//	go run ./test/load/plot [-csv docs/bench.csv] [-out docs/bench.png]
//
// The curve joins the one-connection, one-caller, one-entry scenarios; every other scenario
// (many connections, many callers, many entries) is a labelled square. When the CSV holds a
// scenario more than once (it is appended to), the last row counts.
package main

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
)

func main() {
	in := flag.String("csv", "docs/bench.csv", "the load tool's CSV")
	out := flag.String("out", "docs/bench.png", "PNG to write")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	rows, err := readRows(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("reading %s: %w", in, err)
	}
	img := render(rows)
	o, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := png.Encode(o, img); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}

// row is one scenario's figures; NaN where the CSV cell is empty.
type row struct {
	name                  string
	streams, conns, uids  int
	entries               int
	firstP99, rssPerStrKB float64
}

// curve reports whether r is on the main curve: issue 6's scaling points (10 streams and
// up) on one connection of one caller with one entry.
func (r row) curve() bool { return r.conns == 1 && r.uids == 1 && r.entries == 1 && r.streams >= 10 }

// plotted reports whether r appears at all: a single stream (the idle scenario) says nothing
// about cost per stream.
func (r row) plotted() bool { return r.streams >= 10 }

func readRows(r io.Reader) ([]row, error) {
	recs, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) < 2 {
		return nil, errors.New("no data rows")
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, need := range []string{"scenario", "streams", "conns", "uids", "entries", "first_p99_ms", "rss_per_stream_kib"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("no column %q", need)
		}
	}
	num := func(rec []string, name string) float64 {
		v, err := strconv.ParseFloat(rec[col[name]], 64)
		if err != nil {
			return math.NaN()
		}
		return v
	}
	byName := map[string]int{}
	var rows []row
	for _, rec := range recs[1:] {
		if len(rec) != len(recs[0]) {
			return nil, fmt.Errorf("row %v has %d cells, want %d", rec, len(rec), len(recs[0]))
		}
		rw := row{
			name:        rec[col["scenario"]],
			streams:     int(num(rec, "streams")),
			conns:       int(num(rec, "conns")),
			uids:        int(num(rec, "uids")),
			entries:     int(num(rec, "entries")),
			firstP99:    num(rec, "first_p99_ms"),
			rssPerStrKB: num(rec, "rss_per_stream_kib"),
		}
		if rw.streams <= 0 {
			return nil, fmt.Errorf("row %v: streams must be positive", rec)
		}
		if i, ok := byName[rw.name]; ok {
			rows[i] = rw
			continue
		}
		byName[rw.name] = len(rows)
		rows = append(rows, rw)
	}
	return rows, nil
}

var (
	white = color.RGBA{255, 255, 255, 255}
	black = color.RGBA{30, 30, 30, 255}
	grey  = color.RGBA{215, 215, 215, 255}
	blue  = color.RGBA{31, 90, 180, 255}
	red   = color.RGBA{200, 50, 40, 255}
	green = color.RGBA{40, 140, 70, 255}
)

const (
	width, height = 1220, 560
	panelW        = 470
	panelH        = 370
	top           = 80
)

func render(rows []row) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fill(img, img.Bounds(), white)
	drawText(img, 20, 16, "svidd load test: cost per stream as streams grow", 2, black)
	panel(img, 110, rows, "first secret p99 (ms)", func(r row) float64 { return r.firstP99 }, 50, "target 1000 streams: 50")
	panel(img, 110+panelW+120, rows, "RSS per stream (KiB)", func(r row) float64 { return r.rssPerStrKB }, 16, "target 10000 streams: 16")
	legendY := top + panelH + 62
	line(img, 110, legendY+7, 150, legendY+7, blue, 2)
	drawText(img, 158, legendY, "streams on one connection", 2, black)
	square(img, 560, legendY+7, green)
	drawText(img, 572, legendY, "other scenarios (name)", 2, black)
	dashed(img, 880, 920, legendY+7, red)
	drawText(img, 928, legendY, "issue 6 target", 2, black)
	return img
}

// panel draws one log-log chart with its left edge at x0.
func panel(img *image.RGBA, x0 int, rows []row, title string, y func(row) float64, target float64, targetLabel string) {
	var xs, ys []float64
	for _, r := range rows {
		if v := y(r); r.plotted() && v > 0 && !math.IsNaN(v) {
			xs = append(xs, float64(r.streams))
			ys = append(ys, v)
		}
	}
	ys = append(ys, target)
	xlo, xhi := decades(xs)
	ylo, yhi := decades(ys)
	px := func(v float64) int {
		return x0 + int(math.Round((math.Log10(v)-xlo)/(xhi-xlo)*panelW))
	}
	py := func(v float64) int {
		return top + panelH - int(math.Round((math.Log10(v)-ylo)/(yhi-ylo)*panelH))
	}
	drawText(img, x0, top-30, title, 2, black)
	for d := xlo; d <= xhi+1e-9; d++ {
		x := px(math.Pow(10, d))
		line(img, x, top, x, top+panelH, grey, 1)
		lbl := tick(d)
		drawText(img, x-textWidth(lbl, 2)/2, top+panelH+10, lbl, 2, black)
	}
	for d := ylo; d <= yhi+1e-9; d++ {
		yy := py(math.Pow(10, d))
		line(img, x0, yy, x0+panelW, yy, grey, 1)
		lbl := tick(d)
		drawText(img, x0-10-textWidth(lbl, 2), yy-7, lbl, 2, black)
	}
	line(img, x0, top, x0, top+panelH, black, 2)
	line(img, x0, top+panelH, x0+panelW, top+panelH, black, 2)
	drawText(img, x0+panelW/2-textWidth("streams", 2)/2, top+panelH+34, "streams", 2, black)

	ty := py(target)
	dashed(img, x0, x0+panelW, ty, red)
	drawText(img, x0+panelW-textWidth(targetLabel, 1)-4, ty-10, targetLabel, 1, red)

	var curve []row
	for _, r := range rows {
		if r.curve() {
			curve = append(curve, r)
		}
	}
	slices.SortFunc(curve, func(a, b row) int { return a.streams - b.streams })
	var prevX, prevY int
	havePrev := false
	for _, r := range curve {
		v := y(r)
		if !(v > 0) {
			havePrev = false
			continue
		}
		x, yy := px(float64(r.streams)), py(v)
		if havePrev {
			line(img, prevX, prevY, x, yy, blue, 3)
		}
		fill(img, image.Rect(x-4, yy-4, x+5, yy+5), blue)
		prevX, prevY, havePrev = x, yy, true
	}
	var labels []image.Point // where labels went, so close ones do not overprint
	for _, r := range rows {
		v := y(r)
		if r.curve() || !r.plotted() || !(v > 0) {
			continue
		}
		x, yy := px(float64(r.streams)), py(v)
		square(img, x, yy, green)
		ly := yy - 3
		for moved := true; moved; {
			moved = false
			for _, l := range labels {
				if l.X == x && abs(l.Y-ly) < 9 {
					ly, moved = l.Y+9, true
				}
			}
		}
		labels = append(labels, image.Point{x, ly})
		drawText(img, x+8, ly, r.name, 1, green)
	}
}

// decades returns the log10 of the powers of ten around vs.
func decades(vs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, v := range vs {
		lo = min(lo, math.Floor(math.Log10(v)))
		hi = max(hi, math.Ceil(math.Log10(v)))
	}
	if math.IsInf(lo, 0) {
		return 0, 1
	}
	if hi <= lo {
		hi = lo + 1
	}
	return lo, hi
}

func tick(d float64) string {
	v := math.Pow(10, d)
	if d < 0 {
		return strconv.FormatFloat(v, 'f', int(-d), 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.Set(x, y, c)
		}
	}
}

func square(img *image.RGBA, x, y int, c color.Color) {
	fill(img, image.Rect(x-5, y-5, x+6, y+6), c)
	fill(img, image.Rect(x-3, y-3, x+4, y+4), white)
}

// line draws from (x0,y0) to (x1,y1), w pixels thick (Bresenham).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color, w int) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		fill(img, image.Rect(x0-w/2, y0-w/2, x0-w/2+w, y0-w/2+w), c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

// dashed draws a horizontal dashed line.
func dashed(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x < x1; x += 12 {
		line(img, x, y, min(x+6, x1), y, c, 2)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
