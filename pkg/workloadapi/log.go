package workloadapi

import (
	"context"
	"log/slog"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/peercred"
)

// callLog is one RPC's logger, built on its first use at an enabled level. A healthy stream
// logs only at debug, so at the usual levels most calls never log; deriving a logger with the
// rpc and caller attributes for each of them would cost more than serving them (issue 6).
// When a level is enabled the record is the same as with an eager slog.With chain:
// component, rpc, pid, uid. Only the goroutine serving the call uses it.
type callLog struct {
	base *slog.Logger // the server's logger
	// acct is the call's admission account: warnings and errors, which a client can make
	// svidd write as often as it likes, go through its log budget; nil writes them all.
	acct *admission.Account
	rpc  string
	peer *peercred.Peer
	l    *slog.Logger // built on first use; reset when the caller is known
}

func (s *Server) callLog(ctx context.Context, rpc string) *callLog {
	return &callLog{base: s.log, rpc: rpc, acct: admission.AccountFrom(ctx)}
}

// setPeer adds the identified caller.
func (cl *callLog) setPeer(p *peercred.Peer) {
	cl.peer = p
	cl.l = nil
}

// Enabled reports whether records at level are written.
func (cl *callLog) Enabled(level slog.Level) bool {
	return cl.base.Enabled(context.Background(), level)
}

// logger returns the call's logger, building it on first use.
func (cl *callLog) logger() *slog.Logger {
	if cl.l == nil {
		if cl.peer != nil {
			cl.l = cl.base.With("rpc", cl.rpc, "pid", cl.peer.PID, "uid", cl.peer.UID)
		} else {
			cl.l = cl.base.With("rpc", cl.rpc)
		}
	}
	return cl.l
}

func (cl *callLog) log(level slog.Level, msg string, args ...any) {
	if !cl.Enabled(level) {
		return
	}
	if level <= slog.LevelDebug {
		cl.logger().Log(context.Background(), level, msg, args...)
		return
	}
	cl.acct.Log(cl.logger(), level, msg, args...)
}

// Debug, Warn and Error log at their level, like slog.Logger's methods.
func (cl *callLog) Debug(msg string, args ...any) { cl.log(slog.LevelDebug, msg, args...) }
func (cl *callLog) Warn(msg string, args ...any)  { cl.log(slog.LevelWarn, msg, args...) }
func (cl *callLog) Error(msg string, args ...any) { cl.log(slog.LevelError, msg, args...) }
