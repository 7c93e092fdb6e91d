package sds

import (
	"context"
	"log/slog"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/peercred"
)

// streamLog is one RPC's logger, built on its first use at an enabled level. A healthy stream
// logs only at debug, so at the usual levels most streams never log; building their attributes
// (the Envoy node, the caller) and cloning the handler for each of thousands of streams cost
// more CPU and memory than serving them (issue 6). When a level is enabled, the record carries
// the same attributes, in the same order, as an eager slog.With chain would:
// component, rpc, node{…}, pid, uid.
//
// Only the goroutine serving the RPC uses it.
type streamLog struct {
	base *slog.Logger // the server's logger
	// acct is the stream's admission account: lines a client can trigger at will go
	// through its log budget (warn); nil writes them all.
	acct *admission.Account
	rpc  string
	node *nodeInfo // nil until the first request is seen
	peer *peercred.Peer
	l    *slog.Logger // built on first use; reset when an attribute is added
}

func newStreamLog(base *slog.Logger, rpc string, acct *admission.Account) *streamLog {
	return &streamLog{base: base, rpc: rpc, acct: acct}
}

// limited writes a record at level through the stream's log budget: for every line a
// client can make svidd write as often as it likes (a NACK, a failed watch). The caller
// has checked at(level) and passes its logger.
func (sl *streamLog) limited(l *slog.Logger, level slog.Level, msg string, args ...any) {
	sl.acct.Log(l, level, msg, args...)
}

// setNode records the Envoy node of the stream's first request (Envoy sends it only there).
// Only the few fields logged are kept, not the request.
func (sl *streamLog) setNode(n *corev3.Node) {
	sl.node = newNodeInfo(n)
	sl.l = nil
}

// setPeer records the identified caller.
func (sl *streamLog) setPeer(p *peercred.Peer) {
	sl.peer = p
	sl.l = nil
}

// at returns the logger when level is enabled, else nil: callers build a record's arguments
// only when it will be written.
func (sl *streamLog) at(level slog.Level) *slog.Logger {
	if !sl.base.Enabled(context.Background(), level) {
		return nil
	}
	if sl.l == nil {
		args := make([]any, 0, 6)
		args = append(args, "rpc", sl.rpc)
		if sl.node != nil {
			args = append(args, sl.node.attr())
		}
		if sl.peer != nil {
			args = append(args, "pid", sl.peer.PID, "uid", sl.peer.UID)
		}
		sl.l = sl.base.With(args...)
	}
	return sl.l
}

// nodeInfo is what a stream logs about the Envoy on the other end.
type nodeInfo struct {
	present             bool
	id, cluster, agent  string
	version             string // user_agent_version, when there is no build version
	hasBuild            bool
	major, minor, patch uint32
}

func newNodeInfo(n *corev3.Node) *nodeInfo {
	if n == nil {
		return &nodeInfo{}
	}
	ni := &nodeInfo{present: true, id: n.GetId(), cluster: n.GetCluster(), agent: n.GetUserAgentName()}
	if v := n.GetUserAgentBuildVersion().GetVersion(); v != nil {
		ni.hasBuild = true
		ni.major, ni.minor, ni.patch = v.GetMajorNumber(), v.GetMinorNumber(), v.GetPatch()
	} else {
		ni.version = n.GetUserAgentVersion()
	}
	return ni
}

// attr describes the node: id, cluster, and user agent and version when Envoy sent them.
func (ni *nodeInfo) attr() slog.Attr {
	if !ni.present {
		return slog.Group("node")
	}
	attrs := []any{"id", truncate(ni.id), "cluster", truncate(ni.cluster)}
	if ni.agent != "" {
		attrs = append(attrs, "user_agent", truncate(ni.agent))
	}
	if ni.hasBuild {
		v := strconv.FormatUint(uint64(ni.major), 10) + "." + strconv.FormatUint(uint64(ni.minor), 10) + "." + strconv.FormatUint(uint64(ni.patch), 10)
		attrs = append(attrs, "version", v)
	} else if ni.version != "" {
		attrs = append(attrs, "version", truncate(ni.version))
	}
	return slog.Group("node", attrs...)
}
