package admission

import (
	"context"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/tap"

	"github.com/svidd/svidd/pkg/peercred"
)

// ServerOptions returns the gRPC server options that enforce the limits on every connection
// of the server: the stream rate and a full uid's new streams (tap handle), the open-stream
// cap and each stream's Account (interceptors, chained with any others), and the bounds on
// messages, headers, concurrent streams and pings. The server must also serve a Listener
// from this Controller for the connection limits.
func (c *Controller) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InTapHandle(c.tap),
		grpc.ChainUnaryInterceptor(c.unary),
		grpc.ChainStreamInterceptor(c.stream),
		grpc.MaxRecvMsgSize(c.cfg.MaxMessageBytes),
		grpc.MaxConcurrentStreams(uint32(c.cfg.MaxOpenStreamsPerUID)),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minPingInterval, PermitWithoutStream: true}),
	}
}

// tap charges the stream rate. gRPC calls it in the connection's reader, before a stream
// goroutine or handler exists, and answers an error with its status at once: refusing a
// flood costs a map lookup. A connection without peer credentials cannot come from a
// peercred listener; it is left to the handlers, which refuse it.
func (c *Controller) tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	p, ok := peercred.FromContext(ctx)
	if !ok {
		return ctx, nil
	}
	if err := c.NewStream(p.UID); err != nil {
		return nil, err
	}
	return ctx, nil
}

func (c *Controller) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	p, ok := peercred.FromContext(ctx)
	if !ok {
		return h(ctx, req)
	}
	a, err := c.openStream(p.UID)
	if err != nil {
		return nil, err
	}
	defer a.close()
	return h(NewContext(ctx, a), req)
}

func (c *Controller) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	p, ok := peercred.FromContext(ss.Context())
	if !ok {
		return h(srv, ss)
	}
	a, err := c.openStream(p.UID)
	if err != nil {
		return err
	}
	defer a.close()
	return h(srv, &accountStream{ServerStream: ss, ctx: NewContext(ss.Context(), a)})
}

// accountStream gives the handler a context carrying the stream's Account.
type accountStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *accountStream) Context() context.Context { return s.ctx }

// Listener is a peercred listener whose Accept enforces the connection limits: a connection
// over its uid's limits is closed as soon as it is accepted, before the HTTP/2 handshake
// and any attestation. Admit and the other methods of the peercred listener still work
// (Admit runs first); AcceptPeer bypasses the limits.
type Listener struct {
	*peercred.Listener
	c *Controller
}

// Listener wraps ln.
func (c *Controller) Listener(ln *peercred.Listener) *Listener {
	return &Listener{Listener: ln, c: c}
}

// Accept implements net.Listener. The connection it returns frees its uid's slot on Close.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		pc, err := l.Listener.AcceptPeer()
		if err != nil {
			return nil, err
		}
		release, err := l.c.OpenConnection(pc.Peer().UID)
		if err != nil {
			pc.Close() // the client sees EOF; a gRPC client reports Unavailable and backs off
			continue
		}
		return &conn{Conn: pc, release: release}, nil
	}
}

// conn is an admitted connection. It keeps *peercred.Conn's Peer method, which the
// transport credentials need.
type conn struct {
	*peercred.Conn
	release func() // idempotent
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
