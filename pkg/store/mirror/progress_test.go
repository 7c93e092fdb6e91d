package mirror_test

import (
	"context"
	"path/filepath"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/svidd/svidd/internal/etcdtest"
)

// TestProgress: a host's copy reports the revision it has delivered and the newest entry
// change in it, a delete included (it leaves no key to find it by), also when the change was
// made by another host; while cut off, the copy stays where it was; a host that starts later
// is at least as far on loading.
func TestProgress(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	a := startHost(t, c, filepath.Join(t.TempDir(), "a.db"))
	b := startHost(t, c, filepath.Join(t.TempDir(), "b.db"))
	eventually(t, "both hosts reach the registry", func() bool { return reachable(a) && reachable(b) })
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()

	e, err := a.m.CreateEntry(ctx, newEntry("/p"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.DeleteEntry(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/nothing-here") // the current revision: the delete's
	if err != nil {
		t.Fatal(err)
	}
	del := resp.Header.Revision
	for name, h := range map[string]*host{"writer": a, "other": b} {
		eventually(t, name+" reports the delete as the newest change", func() bool {
			delivered, last := h.m.Progress()
			return last == del && delivered >= del
		})
	}

	// Writes outside entries/ (node records) are no registry change.
	if _, err := cli.Put(ctx, "/svidd/hosts/x/node", "{}"); err != nil {
		t.Fatal(err)
	}
	b.proxy.Cut()
	eventually(t, "b notices", func() bool { return !reachable(b) })
	if _, err := a.m.CreateEntry(ctx, newEntry("/q")); err != nil {
		t.Fatal(err)
	}
	if _, last := b.m.Progress(); last != del {
		t.Fatalf("cut off, b reports newest change %d, want %d (where its copy is)", last, del)
	}
	b.proxy.Restore()
	eventually(t, "b catches up", func() bool { _, last := b.m.Progress(); return last > del })
	_, la := a.m.Progress()
	if _, lb := b.m.Progress(); la != lb {
		t.Fatalf("newest change: a %d, b %d", la, lb)
	}
}
