package sds

import (
	"maps"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// TestPartialView: while the agent is still minting a caller's other SVIDs (a Partial View),
// a stream gets the SVIDs it named and the bundles, but not the default SVID (unknown until
// every SVID exists) nor the wildcard's SVIDs; delta sends no removal for SVIDs the View lacks
// only because they are not minted yet. The complete View brings the rest.
func TestPartialView(t *testing.T) {
	f := newFixture(t)
	partial := &workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}, Partial: true}
	complete := f.View() // db (the default: first) and web

	t.Run("sotw", func(t *testing.T) {
		w := workloadtest.NewWatcher(partial)
		c := openSotw(t, startServer(t, w, nil))
		c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{idWeb, "default", "ROOTCA"}})
		r, got := c.recv()
		wantNames(t, got, idWeb, "ROOTCA")
		wantTLS(t, got[idWeb], f.Web, f.CA)
		c.ack(r, idWeb, "default", "ROOTCA")
		c.none()

		w.Publish(complete)
		_, got = c.recv()
		wantNames(t, got, idWeb, "default", "ROOTCA")
		wantTLS(t, got["default"], complete.SVIDs[0], f.CA)
	})

	t.Run("sotw wildcard", func(t *testing.T) {
		w := workloadtest.NewWatcher(partial)
		c := openSotw(t, startServer(t, w, nil))
		c.send(&discoveryv3.DiscoveryRequest{Node: testNode, ResourceNames: []string{"*"}})
		_, got := c.recv()
		for name := range got {
			if got[name].GetTlsCertificate() != nil {
				t.Fatalf("wildcard on a Partial View sent SVID %q", name)
			}
		}
		w.Publish(complete)
		_, got = c.recv()
		if got[idWeb] == nil || got[idDB] == nil {
			t.Fatalf("complete View: got %v, want every SVID", slices.Collect(maps.Keys(got)))
		}
	})

	t.Run("delta keeps what is not minted yet", func(t *testing.T) {
		w := workloadtest.NewWatcher(partial)
		c := openDelta(t, startServer(t, w, nil))
		// Reconnecting after an agent restart: the client holds both SVIDs.
		c.send(&discoveryv3.DeltaDiscoveryRequest{Node: testNode, ResourceNamesSubscribe: []string{idWeb, idDB},
			InitialResourceVersions: map[string]string{idWeb: "old", idDB: "old"}})
		r, got, _ := c.recv()
		wantNames(t, got, idWeb)
		if len(r.RemovedResources) != 0 {
			t.Fatalf("Partial View: removed %v, want nothing removed", r.RemovedResources)
		}
		c.ack(r)
		w.Publish(&workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}})
		r, _, _ = c.recv()
		if !slices.Equal(r.RemovedResources, []string{idDB}) {
			t.Fatalf("complete View without db: removed %v, want [%s]", r.RemovedResources, idDB)
		}
	})
}
