package sds

import (
	"testing"

	"github.com/svidd/svidd/pkg/workload"
)

// BenchmarkBuildResponse measures the work a push costs one stream: resolving its names
// against a View and marshalling the response.
func BenchmarkBuildResponse(b *testing.B) {
	f := newFixture(b)
	srv, err := New(Config{Watcher: newFakeWatcher(nil), TrustDomain: tdExample})
	if err != nil {
		b.Fatal(err)
	}
	view := f.view()
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
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rs := srv.resolveAll(view, bc.names, bc.wildcard)
				if _, err := srv.buildResponse(rs); err != nil {
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
	srv, err := New(Config{Watcher: newFakeWatcher(nil), TrustDomain: tdExample})
	if err != nil {
		b.Fatal(err)
	}
	st := &sotwStream{s: srv, started: true, names: []string{idWeb}, sent: map[string]string{idWeb: f.web.Serial}, log: srv.log}
	views := []*workload.View{f.view(), {SVIDs: []*workload.SVID{f.web}, Bundles: []*workload.Bundle{f.own}}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := st.onView(views[i%2]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
