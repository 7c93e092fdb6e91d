package fleet_test

import (
	"context"
	"log/slog"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/fleet"
)

// TestRecordSameName: two hosts configured with the same node name. The second finds the
// alive key under the first's lease: it does not overwrite the first's record, and once that
// lease has outlived a crashed run's it reports the conflict (Conflict, an error in its log
// naming the node name). Each runs a JWT key Publisher held until it holds the name
// (Holds): the second neither deletes the first's key nor publishes its own meanwhile. When
// the first stops, the second takes the name over, the conflict clears and its key is
// published.
func TestRecordSameName(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, c.Endpoints()[0])
	run := func(version string, log *proctest.Buffer) (*fleet.NodeRecord, func()) {
		var p *fleet.NodeRecord
		pub, err := fleet.NewPublisher(fleet.PublisherConfig{Client: cli, Prefix: recPrefix, Node: "web-1",
			Keys: func() []fleet.Key {
				return []fleet.Key{{KID: version, Public: pub(t), NotAfter: time.Now().Add(time.Hour)}}
			},
			Every: 100 * time.Millisecond, Hold: func() bool { return !p.Holds() }})
		if err != nil {
			t.Fatal(err)
		}
		p, err = fleet.NewNodeRecord(fleet.NodeRecordConfig{
			Client: cli, Prefix: recPrefix, Name: "web-1", Version: version,
			Progress: func() fleet.Progress { return fleet.Progress{} },
			Every:    50 * time.Millisecond, Heartbeat: 200 * time.Millisecond, TTL: 2 * time.Second, Timeout: time.Second,
			OnHeld: pub.Trigger,
			Logger: slog.New(slog.NewTextHandler(log, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 2)
		go func() { done <- p.Run(ctx) }()
		go func() { done <- pub.Run(ctx) }()
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cancel()
				<-done
				<-done
			}
		}
		t.Cleanup(stop)
		return p, stop
	}
	version := func() string {
		h, ok := hostNamed(list(t, cli, time.Minute), "web-1")
		if !ok || h.State != fleet.StateUp {
			return ""
		}
		return h.Version
	}
	keys := func() []string {
		resp, err := cli.Get(context.Background(), recPrefix+"hosts/web-1/jwtkeys/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, path.Base(string(kv.Key)))
		}
		return out
	}
	logA, logB := &proctest.Buffer{}, &proctest.Buffer{}
	a, stopA := run("first", logA)
	eventually(t, "the first host up", 5*time.Second, func() bool { return version() == "first" })
	b, _ := run("second", logB)
	start := time.Now()
	eventually(t, "the second host reports the conflict", 10*time.Second, func() bool { return b.Conflict() != "" })
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("conflict reported after %v, before a crashed run's lease (2 s) could have ended", took)
	}
	if v := version(); v != "first" {
		t.Fatalf("node record during the conflict: version %q, want the first host's", v)
	}
	if k := keys(); !slices.Equal(k, []string{"first"}) {
		t.Fatalf("JWT keys under web-1 during the conflict: %v, want the first host's only", k)
	}
	if a.Conflict() != "" {
		t.Errorf("the first host reports a conflict: %s", a.Conflict())
	}
	if !strings.Contains(logB.String(), "level=ERROR") || !strings.Contains(logB.String(), "node_name=web-1") {
		t.Errorf("the second host's log has no error naming the node name:\n%s", logB.String())
	}
	t.Logf("conflict: %s", b.Conflict())
	stopA()
	eventually(t, "the second host takes the name over", 10*time.Second, func() bool { return version() == "second" && b.Conflict() == "" })
	eventually(t, "the second host's JWT key published", 5*time.Second, func() bool { return slices.Equal(keys(), []string{"second"}) })
}
