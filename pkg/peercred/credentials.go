package peercred

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
)

// TransportCredentials returns gRPC transport credentials for a server serving a peercred
// Listener: the handshake attaches the connection's Peer as AuthInfo, so handlers call
// FromContext. There is no transport security (the Unix socket is the secure channel); a
// connection that did not come from a peercred Listener fails the handshake.
//
//	srv := grpc.NewServer(grpc.Creds(peercred.TransportCredentials()))
//	srv.Serve(lis) // lis from peercred.Listen
func TransportCredentials() credentials.TransportCredentials { return transportCreds{} }

type transportCreds struct{}

// peerConn is what a connection must offer: *Conn does, and so does a wrapper embedding it.
type peerConn interface {
	Peer() *Peer
}

func (transportCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(peerConn)
	if !ok || pc.Peer() == nil {
		return nil, nil, fmt.Errorf("peercred: connection of type %T did not come from a peercred listener", c)
	}
	return plainConn{c}, AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		Peer:           pc.Peer(),
	}, nil
}

// plainConn is the connection the gRPC transport then reads, writes and closes: the same
// connection without its other methods. Without SyscallConn, gRPC does not read four socket
// options (linger, timeouts, TCP_INFO) for channelz at every accept — svidd serves no
// channelz, and at 1,000 connections those are 4,000 system calls.
type plainConn struct{ net.Conn }

// ClientHandshake passes the connection through: a client has no use for the server's
// credentials, but using these credentials on a client must work.
func (transportCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (transportCreds) Clone() credentials.TransportCredentials { return transportCreds{} }

func (transportCreds) OverrideServerName(string) error { return nil }
