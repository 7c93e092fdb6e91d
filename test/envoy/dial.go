package envoy

import (
	"context"
	"fmt"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial returns a gRPC client connection to the agent's Unix socket, as Envoy's envoy_grpc
// cluster with a pipe address makes one: plaintext HTTP/2 over the socket, since the socket's
// peer credentials, not TLS, identify the caller. Like Envoy it does not wait for the agent:
// the connection is made in the background and a stream opened while the agent is down fails
// with codes.Unavailable. ctx is checked only for being already done.
func Dial(ctx context.Context, socketPath string) (*grpc.ClientConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dialing %s: %w", socketPath, err)
	}
	abs, err := filepath.Abs(socketPath)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", socketPath, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", socketPath, err)
	}
	conn.Connect()
	return conn, nil
}

// NewNode returns the node an Envoy 1.36 would send: id and cluster from the bootstrap, and
// the structured build version that SPIRE reads to pick a validator (spire#2420).
func NewNode(id string) *corev3.Node {
	return &corev3.Node{
		Id:            id,
		Cluster:       "fakeenvoy",
		UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
			UserAgentBuildVersion: &corev3.BuildVersion{
				Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 36, Patch: 0},
			},
		},
	}
}
