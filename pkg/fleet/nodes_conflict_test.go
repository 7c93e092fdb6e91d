package fleet_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/fleet"
)

// TestRecordSameName: two hosts configured with the same node name. The second finds the
// alive key under the first's lease: it does not overwrite the first's record, and once that
// lease has outlived a crashed run's it reports the conflict (Conflict, an error in its log
// naming the node name). When the first stops, the second takes the name over and the
// conflict clears.
func TestRecordSameName(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, c.Endpoints()[0])
	run := func(version string, log *proctest.Buffer) (*fleet.NodeRecord, func()) {
		p, err := fleet.NewNodeRecord(fleet.NodeRecordConfig{
			Client: cli, Prefix: recPrefix, Name: "web-1", Version: version,
			Progress: func() fleet.Progress { return fleet.Progress{} },
			Every:    50 * time.Millisecond, Heartbeat: 200 * time.Millisecond, TTL: 2 * time.Second, Timeout: time.Second,
			Logger: slog.New(slog.NewTextHandler(log, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				cancel()
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
	if a.Conflict() != "" {
		t.Errorf("the first host reports a conflict: %s", a.Conflict())
	}
	if !strings.Contains(logB.String(), "level=ERROR") || !strings.Contains(logB.String(), "node_name=web-1") {
		t.Errorf("the second host's log has no error naming the node name:\n%s", logB.String())
	}
	t.Logf("conflict: %s", b.Conflict())
	stopA()
	eventually(t, "the second host takes the name over", 10*time.Second, func() bool { return version() == "second" && b.Conflict() == "" })
}
