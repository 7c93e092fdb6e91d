package sds

import (
	"testing"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// BenchmarkBuildResponse measures the work a push costs one stream: resolving its names
// against a View and building the response. "first" is the first stream of a group to send a
// View (it marshals the Secrets); "shared" is every other stream holding that View (it reuses
// the View's encodings; only version and nonce are its own).
func BenchmarkBuildResponse(b *testing.B) {
	f := newFixture(b)
	srv, err := New(Config{Watcher: workloadtest.NewWatcher(nil), TrustDomain: tdExample})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name     string
		names    []string
		wildcard bool
	}{
		{"one SVID", []string{idWeb}, false},
		{"ROOTCA", []string{"ROOTCA"}, false},
		{"ALL", []string{"ALL"}, false},
		{"wildcard", nil, true},
	} {
		b.Run(bc.name+"/first", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				view := f.View()
				rs := srv.resolveAll(view, bc.names, bc.wildcard)
				if _, _, err := srv.buildResponse(view, rs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/shared", func(b *testing.B) {
			view := f.View()
			b.ReportAllocs()
			for b.Loop() {
				rs := srv.resolveAll(view, bc.names, bc.wildcard)
				if _, _, err := srv.buildResponse(view, rs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnchangedView measures the common case of a View update: nothing this stream asked
// for changed, so nothing is built.
func BenchmarkUnchangedView(b *testing.B) {
	f := newFixture(b)
	srv, err := New(Config{Watcher: workloadtest.NewWatcher(nil), TrustDomain: tdExample})
	if err != nil {
		b.Fatal(err)
	}
	st := &sotwStream{s: srv, started: true, names: []string{idWeb}, sent: map[string]string{idWeb: f.Web.Serial}, log: newStreamLog(srv.log, "StreamSecrets", nil)}
	views := []*workload.View{f.View(), {SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := st.onView(views[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
