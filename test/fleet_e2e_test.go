package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/test/envoy"
)

// TestFleetRegistry runs issue 14's fleet on real processes: a three-member etcd cluster and
// three svidd hosts following it (test/fleet_harness_test.go). The subtests share the fleet
// and run in order; each leaves it whole for the next.
func TestFleetRegistry(t *testing.T) {
	f := startRegistryFleet(t)
	t.Run("RegisteredOnceServedEverywhere", f.servedEverywhere)
	t.Run("ScopedToHosts", f.scoped)
	t.Run("JWTFromHost1ValidOnHost3", f.jwtAcrossHosts)
	t.Run("NodeListShowsEveryHost", f.nodeList)
	t.Run("HostCutOffAcrossCompaction", f.acrossCompaction)
	t.Run("MemberKilledUnderLoad", f.memberKilled)
	t.Run("ClusterDownLongerThanSVIDs", f.clusterDown)
	t.Run("EtcdRolesHostsReadOnly", f.readOnlyHosts)
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

// scoped: entries registered once (on host-3, where none of them is served) with node
// selectors are served only on the hosts they name: node:name:host-1 on host-1, node:group:web
// on host-1 and host-2, node:group:web with node:group:eu on host-1 only; host-2's own config
// entry is served on host-2 only and never written to etcd. The other hosts do not even copy
// them (svidctl explain), while svidctl entry list on any host shows every registered entry.
func (f *registryFleet) scoped(t *testing.T) {
	id := func(s string) string { return "spiffe://example.org/fleet/scoped/" + s }
	onlyH1, web, webEU, everywhere := id("host-1"), id("web"), id("web-eu"), id("everywhere")
	names := []string{tdID, onlyH1, web, webEU, everywhere, fleetOwnID}
	var streams []*sdsFollower
	for _, h := range f.hosts {
		streams = append(streams, followSotW(t, h, names...))
	}
	h3 := f.hosts[2]
	entries := map[string]string{
		onlyH1: registerEntry(t, h3.a, onlyH1, "-selector", "unix:uid:0", "-selector", "node:name:host-1"),
		web:    registerEntry(t, h3.a, web, "-selector", "unix:uid:0", "-selector", "node:group:web"),
		webEU:  registerEntry(t, h3.a, webEU, "-selector", "unix:uid:0", "-selector", "node:group:web", "-selector", "node:group:eu"),
	}
	// Registered last: a host serving it has applied every change before it (one order).
	registerEntry(t, h3.a, everywhere, "-selector", "unix:uid:0")
	waitHolds(t, streams, []string{everywhere}, true, 20*time.Second)
	want := map[string][]string{"host-1": {onlyH1, web, webEU}, "host-2": {web, fleetOwnID}, "host-3": nil}
	for i, h := range f.hosts {
		for _, n := range []string{onlyH1, web, webEU, fleetOwnID} {
			if got, w := streams[i].holds(n), slices.Contains(want[h.name], n); got != w {
				t.Errorf("%s (groups %v) serves %s = %v, want %v", h.name, fleetGroups[h.name], n, got, w)
			}
		}
		x, err := admin.NewClient(h.a.admin).ExplainUID(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range x.Matched {
			if _, ok := entries[e.SPIFFEID]; ok && !slices.Contains(want[h.name], e.SPIFFEID) {
				t.Errorf("%s holds %s in its copy; its node selectors %v never match here", h.name, e.SPIFFEID, e.Selectors)
			}
		}
		if err := streams[i].failure(); err != nil {
			t.Fatal(err)
		}
	}
	// The registry is one: host-2, which does not serve it, lists host-1's entry.
	if es, err := admin.NewClient(f.hosts[1].a.admin).ListEntries(context.Background(), onlyH1, nil); err != nil || len(es) != 1 || es[0].ID != entries[onlyH1] {
		t.Errorf("svidctl entry list on host-2 for %s: %+v, %v", onlyH1, es, err)
	}
	resp, err := f.cli.Get(context.Background(), fleetPrefix+"entries/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Value), fleetOwnID) {
			t.Errorf("host-2's own config entry was written to etcd: %s", kv.Value)
		}
	}
}

// jwtAcrossHosts: a JWT-SVID fetched on host-1 validates on host-3, through its Workload API
// (ValidateJWTSVID) and with go-spiffe's jwtsvid.ParseAndValidate against the JWT bundle
// host-3 serves; every host serves the same JWT keys; a token for another audience is
// refused.
func (f *registryFleet) jwtAcrossHosts(t *testing.T) {
	const jwtID, aud = "spiffe://example.org/fleet/jwt", "fleet-audience"
	registerEntry(t, f.hosts[0].a, jwtID, "-selector", "unix:uid:0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clients := make([]*workloadapi.Client, len(f.hosts))
	for i, h := range f.hosts {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+h.a.api))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
	}
	var svid *jwtsvid.SVID
	eventually(t, 20*time.Second, "host-1 issues a JWT-SVID for "+jwtID, func() bool {
		var err error
		svid, err = clients[0].FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: spiffeid.RequireFromString(jwtID)})
		return err == nil
	})
	token := svid.Marshal()
	// host-3 learns host-1's keys through etcd: give it the time a watch takes.
	var validated *jwtsvid.SVID
	var lastErr error
	eventually(t, 10*time.Second, "host-3 validates host-1's JWT-SVID", func() bool {
		validated, lastErr = clients[2].ValidateJWTSVID(ctx, token, aud)
		return lastErr == nil
	})
	if validated.ID.String() != jwtID {
		t.Fatalf("host-3 validated the token as %s, want %s", validated.ID, jwtID)
	}
	bundles, err := clients[2].FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := jwtsvid.ParseAndValidate(token, bundles, []string{aud})
	if err != nil {
		t.Fatalf("jwtsvid.ParseAndValidate with host-3's JWT bundle: %v", err)
	}
	if parsed.ID.String() != jwtID {
		t.Fatalf("ParseAndValidate: %s, want %s", parsed.ID, jwtID)
	}
	if _, err := clients[2].ValidateJWTSVID(ctx, token, "another-audience"); err == nil {
		t.Fatal("host-3 validated the token for an audience it was not issued to")
	}
	// Every host holds every host's keys: one JWT bundle across the fleet.
	var want []string
	for i, c := range clients {
		var kids []string
		eventually(t, 10*time.Second, fmt.Sprintf("%s serves the fleet's JWT keys", f.hosts[i].name), func() bool {
			set, err := c.FetchJWTBundles(ctx)
			if err != nil {
				return false
			}
			b, err := set.GetJWTBundleForTrustDomain(td)
			if err != nil {
				return false
			}
			kids = slices.Sorted(maps.Keys(b.JWTAuthorities()))
			return i == 0 || slices.Equal(kids, want)
		})
		if i == 0 {
			want = kids
			if len(want) < len(f.hosts) {
				t.Fatalf("host-1's JWT bundle has %d keys, want one per host at least: %v", len(want), want)
			}
		}
	}
}

// nodeList: svidctl node list on any host shows the three hosts up, each with its groups, its
// CA's expiry and the registry revision its copy is at.
func (f *registryFleet) nodeList(t *testing.T) {
	var list admin.NodeList
	eventually(t, 20*time.Second, "svidctl node list shows host-1, host-2 and host-3 up", func() bool {
		out, err := f.hosts[1].a.svidctl("node", "list", "-output", "json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("node list -output json: %v: %s", err, out)
		}
		var up []string
		for _, n := range list.Nodes {
			if n.State == "up" {
				up = append(up, n.Name)
			}
		}
		return slices.Equal(up, []string{"host-1", "host-2", "host-3"})
	})
	for _, n := range list.Nodes {
		if !slices.Equal(n.Groups, fleetGroups[n.Name]) {
			t.Errorf("node %s: groups %v, want %v", n.Name, n.Groups, fleetGroups[n.Name])
		}
		if !n.CANotAfter.After(list.Now) || n.Revision <= 0 || n.StartedAt.IsZero() || n.LastSeen.IsZero() || n.Problem != "" {
			t.Errorf("node %s: %+v", n.Name, n)
		}
	}
	if out := f.hosts[2].a.mustSvidctl("node", "list"); !strings.Contains(out, "host-1") || !strings.Contains(out, "host-3") {
		t.Errorf("svidctl node list on host-3:\n%s", out)
	}
}

// acrossCompaction: host-3 is cut off from every etcd member while entries it serves are
// deleted and others created, and etcd compacts its history past host-3's revision. Cut off,
// host-3 keeps serving its copy; reconnected, it reloads every entry (its watch cannot
// resume): the deleted SVIDs leave its Envoy streams (DeltaSecrets removes them, SotW stops
// sending them) and the new ones arrive, without a restart.
func (f *registryFleet) acrossCompaction(t *testing.T) {
	h1, h3 := f.hosts[0], f.hosts[2]
	id := func(s string) string { return "spiffe://example.org/fleet/compact/" + s }
	gone, kept, added := []string{id("gone-1"), id("gone-2")}, id("kept"), []string{id("new-1"), id("new-2")}
	var goneEntries []string
	for _, g := range gone {
		goneEntries = append(goneEntries, registerEntry(t, h1.a, g, "-selector", "unix:uid:0"))
	}
	keptEntry := registerEntry(t, h1.a, kept, "-selector", "unix:uid:0")
	names := append(append([]string{tdID, kept}, gone...), added...)
	delta, sotw := followDelta(t, h3, names...), followSotW(t, h3, names...)
	streams := []*sdsFollower{delta, sotw}
	waitHolds(t, streams, append([]string{kept}, gone...), true, 20*time.Second)

	f.cut(h3)
	waitRegistry(t, h3, false, 10*time.Second)
	for _, e := range goneEntries {
		svidctlOK(t, f.hosts[1], "entry", "delete", "-entryID", e)
	}
	var addedEntries []string
	for _, a := range added {
		addedEntries = append(addedEntries, registerEntry(t, h1.a, a, "-selector", "unix:uid:0"))
	}
	waitEntries(t, f.hosts[:2], 0, goneEntries, false, 10*time.Second)
	waitEntries(t, f.hosts[:2], 0, addedEntries, true, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.cli.Get(ctx, fleetPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	// Cut off, host-3 still serves what it had: the change comes from the reload, below.
	waitEntries(t, f.hosts[2:], 0, append(goneEntries, keptEntry), true, time.Second)
	if !delta.holds(gone[0]) || !sotw.holds(gone[0]) {
		t.Fatal("host-3 stopped serving its copy while cut off from etcd")
	}
	reloads := logCount(h3.a, "reloading every entry")

	f.restore(h3)
	waitHolds(t, streams, gone, false, 20*time.Second)
	waitHolds(t, streams, append([]string{kept}, added...), true, 20*time.Second)
	waitEntries(t, f.hosts[2:], 0, goneEntries, false, time.Second)
	waitEntries(t, f.hosts[2:], 0, append(addedEntries, keptEntry), true, time.Second)
	waitRegistry(t, h3, true, 10*time.Second)
	if logCount(h3.a, "reloading every entry") <= reloads {
		t.Errorf("host-3 caught up without the full reload a compacted revision needs:\n%s", h3.a.logs.String())
	}
	for _, s := range streams {
		if err := s.failure(); err != nil {
			t.Fatal(err)
		}
	}
}

// memberKilled: the etcd leader is SIGKILLed while host-1 registers a stream of entries and
// Envoy streams on host-2 and host-3 wait for some of them, and mesh workloads on every host
// do mTLS with the next host. Every write is acknowledged, every entry reaches every host,
// no stream errs, no handshake fails; the member, restarted, catches up with the cluster.
func (f *registryFleet) memberKilled(t *testing.T) {
	const writes, killAt = 60, 20
	id := func(i int) string { return fmt.Sprintf("spiffe://example.org/fleet/load/%d", i) }
	// Every fifth entry is for uid 0 and awaited by the Envoys; the rest are for a uid no
	// process runs, so nothing is minted for them: the load is on the registry.
	var awaited []string
	for i := 0; i < writes; i += 5 {
		awaited = append(awaited, id(i))
	}
	var streams []*sdsFollower
	for _, h := range f.hosts[1:] {
		streams = append(streams, followSotW(t, h, append([]string{tdID}, awaited...)...))
	}
	startClients(t, f.hosts)
	meshFrom := time.Now()

	type result struct {
		entryID string
		err     error
		took    time.Duration
	}
	results := make([]result, writes)
	kill := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c := admin.NewClient(f.hosts[0].a.admin)
		for i := range writes {
			if i == killAt {
				close(kill)
			}
			uid := "1009"
			if i%5 == 0 {
				uid = "0"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			begin := time.Now()
			e, err := c.CreateEntry(ctx, admin.Entry{SPIFFEID: id(i), Selectors: []string{"unix:uid:" + uid}})
			cancel()
			results[i] = result{e.ID, err, time.Since(begin)}
			time.Sleep(50 * time.Millisecond)
		}
	})
	<-kill
	leader := f.etcd.Leader()
	f.etcd.Kill(leader)
	killed := time.Now()
	wg.Wait()
	var created0, created1009 []string
	var slowest time.Duration
	for i, r := range results {
		slowest = max(slowest, r.took)
		if r.err != nil {
			t.Errorf("write %d (%s) not acknowledged: %v", i, id(i), r.err)
			continue
		}
		if i%5 == 0 {
			created0 = append(created0, r.entryID)
		} else {
			created1009 = append(created1009, r.entryID)
		}
	}
	t.Logf("killed member m%d (the leader) at write %d of %d; the last write returned %s later; slowest write %s",
		leader, killAt, writes, time.Since(killed).Round(time.Millisecond), slowest.Round(time.Millisecond))
	waitEntries(t, f.hosts, 1009, created1009, true, 20*time.Second)
	waitEntries(t, f.hosts, 0, created0, true, 20*time.Second)
	waitHolds(t, streams, awaited, true, 20*time.Second)

	f.etcd.Restart(leader)
	m := f.etcd.Members()[leader]
	one := f.etcd.Client("root")
	one.SetEndpoints(m.ClientURL)
	// Rejoined: the restarted member's own (serializable) view has every entry the cluster has.
	eventually(t, 20*time.Second, fmt.Sprintf("m%d catches up with the cluster", leader), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		want, err := f.cli.Get(ctx, fleetPrefix+"entries/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false
		}
		got, err := one.Get(ctx, fleetPrefix+"entries/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
		return err == nil && got.Count == want.Count && got.Header.Revision >= want.Header.Revision
	})
	for _, s := range streams {
		if err := s.failure(); err != nil {
			t.Error(err)
		}
	}
	// The mesh clients report at least 50 dials each (150 ms apart).
	time.Sleep(time.Until(meshFrom.Add(9 * time.Second)))
	stopClients(t, f.hosts, 1)
}

// clusterDown: every etcd member is killed for 12 s, longer than two SVID lifetimes (5 s).
// Every host keeps serving and rotating from its copy: each Envoy stream receives every new
// SVID before the one it holds expires, and each verifies; mesh handshakes never fail; /ready
// stays green; svidctl status shows the registry unreachable; svidctl entry create fails at
// once saying so. Back up, every host catches up without a restart: a write succeeds and the
// new entry reaches streams opened during the outage on every host.
func (f *registryFleet) clusterDown(t *testing.T) {
	const (
		rotID  = "spiffe://example.org/fleet/rotating"
		newID  = "spiffe://example.org/fleet/after-outage"
		outage = 12 * time.Second
	)
	rotEntry := registerEntry(t, f.hosts[0].a, rotID, "-selector", "unix:uid:0")
	waitEntries(t, f.hosts, 0, []string{rotEntry}, true, 10*time.Second)
	var rotating, later []*sdsFollower
	for _, h := range f.hosts {
		rotating = append(rotating, followSotW(t, h, rotID, tdID))
		later = append(later, followSotW(t, h, newID, tdID))
	}
	waitHolds(t, rotating, []string{rotID}, true, 20*time.Second)
	startClients(t, f.hosts)
	meshFrom := time.Now()
	entries := map[string]int{}
	for _, h := range f.hosts {
		entries[h.name] = statusOf(t, h.a).Entries
	}

	// SIGKILL, all three: a graceful stop spends seconds on leadership transfers that cannot
	// succeed, and a power cut is the harder case anyway.
	for i := range f.etcd.Members() {
		f.etcd.Kill(i)
	}
	stopped := time.Now()
	for _, h := range f.hosts {
		waitRegistry(t, h, false, 10*time.Second)
	}
	t.Logf("every host saw the registry unreachable %s after the cluster stopped", time.Since(stopped).Round(time.Millisecond))
	for _, h := range f.hosts {
		if out := svidctlOK(t, h, "status"); !strings.Contains(out, "Registry: etcd UNREACHABLE since") {
			t.Errorf("%s: svidctl status while etcd is down:\n%s", h.name, out)
		}
		if m := scrape(t, f.metrics[h.name]); m["svidd_registry_reachable"] != 0 {
			t.Errorf("%s: svidd_registry_reachable = %v while etcd is down", h.name, m["svidd_registry_reachable"])
		}
		begin := time.Now()
		_, err := h.a.svidctl("entry", "create", "-spiffeID", "spiffe://example.org/fleet/refused", "-selector", "unix:uid:0")
		took := time.Since(begin)
		if err == nil || !strings.Contains(err.Error(), "the registry (etcd) is unreachable") {
			t.Errorf("%s: entry create while etcd is down: %v", h.name, err)
		}
		// The registry's write timeout is 2 s: a write that waited for etcd would take that.
		if took > 1500*time.Millisecond {
			t.Errorf("%s: entry create took %s to fail; it must fail at once", h.name, took)
		}
	}
	health := func() {
		for _, h := range f.hosts {
			if code := httpStatus(t, "http://"+f.health[h.name]+"/ready"); code != http.StatusOK {
				t.Errorf("%s: /ready = %d while etcd is down", h.name, code)
			}
			svidctlOK(t, h, "healthcheck")
		}
	}
	health()
	time.Sleep(time.Until(stopped.Add(outage)))
	health()
	for _, r := range rotating {
		// 12 s of 5 s SVIDs re-minted at half their life: 4 or 5 rotations.
		if n := checkReceipts(t, r, rotID, stopped); n < 3 {
			t.Errorf("%s: %d SVIDs received in the %s etcd was down, want at least 3", r.name, n, outage)
		}
	}

	f.etcd.Start()
	restarted := time.Now()
	for _, h := range f.hosts {
		waitRegistry(t, h, true, 20*time.Second)
	}
	t.Logf("every host saw the registry reachable %s after the cluster was healthy", time.Since(restarted).Round(time.Millisecond))
	registerEntry(t, f.hosts[1].a, newID, "-selector", "unix:uid:0")
	waitHolds(t, later, []string{newID}, true, 10*time.Second)
	for _, h := range f.hosts {
		if n := statusOf(t, h.a).Entries; n != entries[h.name]+1 {
			t.Errorf("%s holds %d entries after the outage, want %d", h.name, n, entries[h.name]+1)
		}
	}
	for _, r := range append(rotating, later...) {
		if err := r.failure(); err != nil {
			t.Error(err)
		}
	}
	for _, r := range rotating {
		checkReceipts(t, r, rotID, stopped)
	}
	time.Sleep(time.Until(meshFrom.Add(9 * time.Second)))
	stopClients(t, f.hosts, 1)
}

// readOnlyHosts turns etcd's authentication on with the README's roles: each host's user may
// only read the registry (and write under hosts/<its name>/), a registrar-only svidd's user
// may write it. An entry registered on the registrar reaches every host; a host's own write
// is refused with the read-only error (403), and the host stays reachable and keeps
// following. Last: it leaves authentication on.
func (f *registryFleet) readOnlyHosts(t *testing.T) {
	f.etcd.AddRole(etcdtest.RegistrarRole(fleetPrefix))
	f.etcd.AddUser("registrar", "svidd-registrar")
	for _, h := range f.hosts {
		r := etcdtest.HostRole(fleetPrefix, h.name)
		f.etcd.AddRole(r)
		f.etcd.AddUser(h.name, r.Name)
	}
	f.etcd.EnableAuth()
	reg := startAgent(t, withConfig(f.registrarConfig(t)))

	const id = "spiffe://example.org/fleet/registered-on-registrar"
	var streams []*sdsFollower
	for _, h := range f.hosts {
		streams = append(streams, followSotW(t, h, id, tdID))
	}
	registerEntry(t, reg, id, "-selector", "unix:uid:0")
	waitHolds(t, streams, []string{id}, true, 20*time.Second)

	for _, h := range f.hosts {
		_, err := h.a.svidctl("entry", "create", "-spiffeID", "spiffe://example.org/fleet/refused", "-selector", "unix:uid:0")
		if err == nil || !strings.Contains(err.Error(), "credentials are read-only") || !strings.Contains(err.Error(), "register on a registrar host") {
			t.Errorf("%s: entry create with a read-only etcd user: %v", h.name, err)
		}
		if st := statusOf(t, h.a); st.Registry == nil || !st.Registry.Reachable {
			t.Errorf("%s: registry %+v after a refused write; etcd answered, so it is reachable", h.name, st.Registry)
		}
	}
	var se *admin.StatusError
	_, err := admin.NewClient(f.hosts[1].a.admin).CreateEntry(context.Background(), admin.Entry{SPIFFEID: "spiffe://example.org/fleet/refused", Selectors: []string{"unix:uid:0"}})
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Errorf("admin API entry create on a read-only host: %v, want 403", err)
	}
	// Still following: the registrar's next entry reaches every host.
	const next = "spiffe://example.org/fleet/registered-on-registrar-2"
	for i, h := range f.hosts {
		streams[i] = followSotW(t, h, next, tdID)
	}
	registerEntry(t, reg, next, "-selector", "unix:uid:0")
	waitHolds(t, streams, []string{next}, true, 20*time.Second)
}

// registrarConfig is a registrar-only svidd's: the registry with the user "registrar".
func (f *registryFleet) registrarConfig(t *testing.T) string {
	t.Helper()
	cert, key, err := f.etcd.CA.ClientFiles("registrar")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`agent {
  registrar_only = true
}
store "etcd" {
  endpoints = [%s]
  tls {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }
}
`, `"`+strings.Join(f.etcd.Endpoints(), `", "`)+`"`, f.etcd.CA.CertFile, cert, key)
}
