package test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/test/envoy"
)

// TestFleetRegistry runs issue 14's fleet on real processes: a three-member etcd cluster and
// three svidd hosts following it (test/fleet_harness_test.go). The subtests share the fleet
// and run in order; each leaves it whole for the next.
func TestFleetRegistry(t *testing.T) {
	f := startRegistryFleet(t)
	t.Run("RegisteredOnceServedEverywhere", f.servedEverywhere)
}

// servedEverywhere: an entry created with svidctl on host-1 reaches SDS streams already open
// on host-2 and host-3 under the entitled uid; the SVIDs verify against the bundle each stream
// was sent, and a workload on host-3 serving that identity does mTLS with a workload on
// host-1. A caller the entry does not name never receives it.
func (f *registryFleet) servedEverywhere(t *testing.T) {
	const webID = "spiffe://example.org/fleet/web"
	h1, h2, h3 := f.hosts[0], f.hosts[1], f.hosts[2]
	// The Envoys are up before the entry exists: the stream remembers the name.
	var envoys []*child
	for _, h := range []*fleetHost{h2, h3} {
		c := startAs(t, 1003, 1003, nil, bins.fakeenvoy, "-socket", h.a.api, "-names", webID+","+tdID, "-follow", "-timeout", "60s")
		envoys = append(envoys, c)
		waitCaller(t, h, 1003, "StreamSecrets")
		if l, ok := c.nextOrNone(0); ok {
			t.Fatalf("%s: uid 1003 received something before its entry exists: %s", h.name, l)
		}
	}
	// uid 0 asks for the same name on host-2 and must never get it.
	other := followSotW(t, h2, webID, tdID)

	start := time.Now()
	registerEntry(t, h1.a, webID, "-selector", "unix:uid:1003")
	created := time.Now()
	for i, c := range envoys {
		h := []*fleetHost{h2, h3}[i]
		for {
			var s envoy.Summary
			if err := json.Unmarshal([]byte(c.next(t, 20*time.Second)), &s); err != nil {
				t.Fatal(err)
			}
			if !containsResource(s, webID) {
				continue
			}
			cert, ca := resource(t, s, webID), resource(t, s, tdID)
			verifySVID(t, cert.CertChainPEM, cert.KeyPEM, ca.TrustedCAPEM, webID)
			t.Logf("%s: SVID for the entry created on host-1 received %s after svidctl started (%s after it returned)",
				h.name, time.Since(start).Round(time.Millisecond), time.Since(created).Round(time.Millisecond))
			break
		}
	}
	// Every response fakeenvoy took passed ValidateAll (it NACKs and exits 1 otherwise): the
	// streams are still open and wrote no error.
	for _, c := range envoys {
		select {
		case <-c.done:
			t.Fatalf("fakeenvoy ended (%v): %s", c.cmd.ProcessState, c.stderr.String())
		default:
		}
		if e := c.stderr.String(); e != "" {
			t.Fatalf("fakeenvoy: %s", e)
		}
	}

	// mTLS: the identity registered on host-1 served by a workload on host-3, dialled by the
	// fleet client on host-1.
	srv := startAs(t, 1003, 1003, nil, bins.spiffeclient, "-socket", h3.a.api, "-timeout", "30s", "serve", "-authorize", fleetClientID)
	var addr struct{ Addr string }
	if err := json.Unmarshal([]byte(srv.next(t, 20*time.Second)), &addr); err != nil {
		t.Fatal(err)
	}
	cli := startAs(t, 1002, 1002, nil, bins.spiffeclient, "-socket", h1.a.api, "-timeout", "30s", "dial", "-addr", addr.Addr, "-authorize", webID)
	if l := cli.next(t, 20*time.Second); !strings.Contains(l, "pong to ping") {
		t.Fatalf("host-1 client: %s", l)
	}
	if l := srv.next(t, 20*time.Second); !strings.Contains(l, `"served"`) {
		t.Fatalf("host-3 server: %s", l)
	}

	if err := other.failure(); err != nil {
		t.Fatal(err)
	}
	if other.holds(webID) || len(other.receipts(webID)) != 0 {
		t.Fatalf("uid 0 on host-2 received %s, registered for uid 1003 only", webID)
	}
}

func containsResource(s envoy.Summary, name string) bool {
	for _, r := range s.Resources {
		if r.Name == name {
			return true
		}
	}
	return false
}
