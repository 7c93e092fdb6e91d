package peercred

import (
	"context"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthInfo is the credentials.AuthInfo our transport credentials attach to every gRPC
// connection accepted on a peercred listener.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Peer *Peer
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// FromContext returns the Peer of the connection a gRPC handler is serving, or false when the
// connection did not come through a peercred listener.
func FromContext(ctx context.Context) (*Peer, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok || ai.Peer == nil {
		return nil, false
	}
	return ai.Peer, true
}
