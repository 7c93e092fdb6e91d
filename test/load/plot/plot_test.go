package main

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const header = "scenario,streams,conns,uids,entries,first_p50_ms,first_p99_ms,first_max_ms,push_p50_ms,push_p99_ms,push_max_ms,rss_idle_kib,rss_per_stream_kib,heap_kib,goroutines,cpu_s,cold_start_ms,fresh_caller_ms\n"

func TestReadRows(t *testing.T) {
	tests := []struct {
		name    string
		csv     string
		want    []row
		wantErr string
	}{
		{
			name: "last row of a scenario wins, empty cells are NaN",
			csv: header +
				"s10,10,1,1,1,1,9,3,,,,20000,300,,,0.01,80,1.7\n" +
				"c1000,1000,1000,1,1,1,40,3,,,,20000,,,,0.01,80,1.7\n" +
				"s10,10,1,1,1,1,2.5,3,,,,20000,250,,,0.01,80,1.7\n",
			want: []row{
				{name: "s10", streams: 10, conns: 1, uids: 1, entries: 1, firstP99: 2.5, rssPerStrKB: 250},
				{name: "c1000", streams: 1000, conns: 1000, uids: 1, entries: 1, firstP99: 40, rssPerStrKB: math.NaN()},
			},
		},
		{name: "header only", csv: header, wantErr: "no data rows"},
		{name: "missing column", csv: "scenario,streams\ns10,10\n", wantErr: `no column "conns"`},
		{name: "zero streams", csv: header + "s0,0,1,1,1,1,9,3,,,,20000,300,,,0.01,80,1.7\n", wantErr: "streams must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readRows(strings.NewReader(tt.csv))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d rows, want %d: %+v", len(got), len(tt.want), got)
			}
			for i := range got {
				g, w := got[i], tt.want[i]
				same := func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }
				if g.name != w.name || g.streams != w.streams || g.conns != w.conns || !same(g.firstP99, w.firstP99) || !same(g.rssPerStrKB, w.rssPerStrKB) {
					t.Errorf("row %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestRunWritesPNG(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "bench.csv"), filepath.Join(dir, "bench.png")
	data := header +
		"s10,10,1,1,1,1,2.5,3,,,,20000,300,,,0.01,80,1.7\n" +
		"s10000,10000,1,1,1,1,900,3,,,,20000,12,,,0.01,80,1.7\n" +
		"c1000,1000,1000,1,1,1,60,3,,,,20000,50,,,0.01,80,1.7\n"
	if err := os.WriteFile(in, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(in, out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Fatalf("image is %v", b)
	}
	// The curve is drawn in blue: some pixel must be.
	found := false
	for y := 0; y < height && !found; y++ {
		for x := 0; x < width; x++ {
			if r, g, b, _ := img.At(x, y).RGBA(); r>>8 == uint32(blue.R) && g>>8 == uint32(blue.G) && b>>8 == uint32(blue.B) {
				found = true
				break
			}
		}
	}
	if !found {
		t.Fatal("no curve drawn")
	}
}
