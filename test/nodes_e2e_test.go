package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/pkg/admin"
)

// TestNodeListE2E: two svidd processes share one etcd; `svidctl node list` on host A shows
// both up, both holding the newest entry; host B killed with SIGKILL (no lease revoked) shows
// as gone within its lease's TTL, with its last record, while A stays up; then B's record is
// forgotten (A's, up, is not).
func TestNodeListE2E(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cfg := func(name string) agentOpt {
		return withConfig(fmt.Sprintf("agent {\n  node_name   = %q\n  node_groups = [\"web\"]\n}\nstore \"etcd\" {\n  endpoints = [%q]\n}\n", name, c.Endpoints()[0]))
	}
	a := startAgent(t, cfg("host-a"))
	// The entry exists before host-b starts and before host-a restarts: each publishes its
	// record once its copy is up to date, holding it.
	a.createEntry("spiffe://example.org/web", "-selector", "unix:uid:1000")
	a.restart()
	b := startAgent(t, cfg("host-b"))

	list := func() admin.NodeList {
		t.Helper()
		out := a.mustSvidctl("node", "list", "-output", "json")
		var nl admin.NodeList
		if err := json.Unmarshal([]byte(out), &nl); err != nil {
			t.Fatalf("node list -output json: %v\n%s", err, out)
		}
		return nl
	}
	byName := func(nl admin.NodeList) map[string]admin.Node {
		m := map[string]admin.Node{}
		for _, n := range nl.Nodes {
			m[n.Name] = n
		}
		return m
	}
	within := func(what string, d time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > d {
				t.Fatalf("not within %s: %s", d, what)
			}
			time.Sleep(200 * time.Millisecond)
		}
		return time.Since(start)
	}

	// (Later changes reach the records with the heartbeat, a minute by default; pkg/fleet's
	// tests follow them with a short one.)
	var nl admin.NodeList
	within("both hosts up, holding the newest entry", 20*time.Second, func() bool {
		nl = list()
		m := byName(nl)
		return len(nl.Nodes) == 2 && m["host-a"].State == "up" && m["host-b"].State == "up" &&
			nl.LastChange > 0 && m["host-a"].LastChange == nl.LastChange && m["host-b"].LastChange == nl.LastChange
	})
	for _, n := range nl.Nodes {
		if n.Version == "" || n.CANotAfter.IsZero() || n.Revision < nl.LastChange || n.StartedAt.IsZero() || len(n.Groups) != 1 || n.Groups[0] != "web" {
			t.Fatalf("node %+v", n)
		}
	}

	b.kill()
	killed := time.Now()
	took := within("host-b shown gone after SIGKILL", 45*time.Second, func() bool { return byName(list())["host-b"].State == "gone" })
	t.Logf("host-b gone %s after SIGKILL (lease TTL 30 s)", took.Round(100*time.Millisecond))
	// The lease ends at most 30 s after the last keep-alive B sent; the slack covers
	// etcd's expiry check, the polling and a svidctl run.
	if took > 33*time.Second {
		t.Errorf("gone after %s, want within the lease TTL (30 s)", took)
	}
	m := byName(list())
	if gb := m["host-b"]; gb.LastSeen.After(killed) || gb.Version == "" {
		t.Errorf("gone host-b = %+v, want its last record", gb)
	}
	if m["host-a"].State != "up" {
		t.Errorf("host-a = %+v, want up", m["host-a"])
	}
	out := a.mustSvidctl("node", "list")
	if !strings.Contains(out, "host-b") || !strings.Contains(out, "GONE") {
		t.Errorf("node list table:\n%s", out)
	}
	t.Logf("svidctl node list:\n%s", out)

	if _, err := a.svidctl("node", "forget", "host-a"); err == nil || !strings.Contains(err.Error(), "the host is up") {
		t.Errorf("node forget of an up host: %v", err)
	}
	a.mustSvidctl("node", "forget", "host-b")
	if nl := list(); len(nl.Nodes) != 1 || nl.Nodes[0].Name != "host-a" {
		t.Errorf("after forgetting host-b: %+v", nl.Nodes)
	}
}
