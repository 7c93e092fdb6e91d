package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/mirror"
)

// nodeListTimeout bounds the registry read behind svidctl node list.
const nodeListTimeout = 5 * time.Second

// runNodeRecord publishes this host's node record (store "etcd"): once the copy is first up
// to date, so that a host starting does not show as behind for what it has not loaded yet.
func (a *Agent) runNodeRecord(ctx context.Context, run func(string, func() error)) error {
	if a.etcd == nil || a.registry == nil {
		return nil
	}
	p, err := fleet.NewNodeRecord(fleet.NodeRecordConfig{
		Client: a.etcd,
		Prefix: a.cfg.Store.Etcd.Prefix,
		Name:   a.cfg.NodeName,
		Groups: a.cfg.NodeGroups,
		Progress: func() fleet.Progress {
			delivered, last := a.registry.Progress()
			return fleet.Progress{CANotAfter: a.ca.NotAfter(), Revision: delivered, LastChange: last}
		},
		OnHeld: func() {
			if a.fleet != nil {
				a.fleet.pub.Trigger()
			}
		},
		Logger: a.log.With("component", "fleet"),
	})
	if err != nil {
		return err
	}
	a.nodeRecord.Store(p)
	run("node record", func() error {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for ok, _ := a.registry.Status(); !ok; ok, _ = a.registry.Status() {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		return p.Run(ctx)
	})
	return nil
}

// nodesAdmin is the fleet's host list for the admin API; nil without a registry.
func (a *Agent) nodesAdmin() admin.Nodes {
	var status func() (bool, time.Time)
	switch {
	case a.etcd == nil:
		return nil
	case a.registry != nil:
		status = a.registry.Status
	case a.reg != nil: // a registrar-only host
		status = a.reg.status
	default:
		return nil
	}
	return nodesAdmin{cli: a.etcd, prefix: a.cfg.Store.Etcd.Prefix, self: a.cfg.NodeName, status: status}
}

// nodesAdmin reads and forgets node records through cli; status is the registry's
// reachability as this host last saw it.
type nodesAdmin struct {
	cli          *clientv3.Client
	prefix, self string
	status       func() (reachable bool, since time.Time)
}

// reachable refuses at once while the registry is known to be unreachable, rather than
// waiting for a read that cannot succeed.
func (x nodesAdmin) reachable() error {
	if ok, since := x.status(); !ok {
		return admin.Unavailable(fmt.Errorf("%w since %s; the node list is read from it", mirror.ErrUnreachable, since.UTC().Format(time.RFC3339)))
	}
	return nil
}

func (x nodesAdmin) Nodes(ctx context.Context) (admin.NodeList, error) {
	if err := x.reachable(); err != nil {
		return admin.NodeList{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, nodeListTimeout)
	defer cancel()
	f, err := fleet.List(ctx, x.cli, x.prefix, fleet.DefaultBehindAfter)
	if err != nil {
		return admin.NodeList{}, registryError(err)
	}
	out := admin.NodeList{Now: time.Now().UTC(), LastChange: f.LastChange, BehindAfter: int64(fleet.DefaultBehindAfter / time.Second), Nodes: []admin.Node{}}
	for _, h := range f.Hosts {
		out.Nodes = append(out.Nodes, nodeToWire(h.Record, string(h.State), h.Problem))
	}
	return out, nil
}

func (x nodesAdmin) ForgetNode(ctx context.Context, name string) (admin.Node, error) {
	if err := x.reachable(); err != nil {
		return admin.Node{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, nodeListTimeout)
	defer cancel()
	r, err := fleet.Forget(ctx, x.cli, x.prefix, name)
	switch {
	case errors.Is(err, fleet.ErrHostUp):
		return admin.Node{}, fmt.Errorf("%w: %v", admin.ErrNodeUp, err)
	case errors.Is(err, fleet.ErrNoHost):
		return admin.Node{}, fmt.Errorf("%w: %v", store.ErrNotFound, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return admin.Node{}, fmt.Errorf("%w: forgetting host %s: this host's etcd role may write only under %shosts/%s/; run it on a registrar host (README \"Running a fleet\")",
			admin.ErrForbidden, name, x.prefix, x.self)
	case err != nil:
		return admin.Node{}, registryError(err)
	}
	return nodeToWire(r, string(fleet.StateGone), ""), nil
}

// registryError reports a failed registry read or write: refused by etcd's authorization
// (403), or the registry being unavailable (503), with what etcd said. A failure the mirror
// has not noticed yet (it probes every second) has no "since" to tell.
func registryError(err error) error {
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return fmt.Errorf("%w: %v", admin.ErrForbidden, err)
	}
	return admin.Unavailable(fmt.Errorf("%w: %w", mirror.ErrUnreachable, err))
}

func nodeToWire(r fleet.Record, state, problem string) admin.Node {
	groups := r.Groups
	if groups == nil {
		groups = []string{}
	}
	return admin.Node{
		Name: r.Name, Groups: groups, State: state, Version: r.Version, CANotAfter: r.CANotAfter,
		Revision: r.Revision, LastChange: r.LastChange, StartedAt: r.Started, LastSeen: r.LastSeen,
		Problem: problem,
	}
}
