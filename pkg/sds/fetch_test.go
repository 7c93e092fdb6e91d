package sds

import (
	"context"
	"errors"
	"fmt"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

func TestFetchSecrets(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name     string
		req      *discoveryv3.DiscoveryRequest
		watchErr error
		want     []string
		code     codes.Code
	}{
		{name: "named", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{idWeb, "ROOTCA"}}, want: []string{idWeb, "ROOTCA"}},
		{name: "wildcard", req: &discoveryv3.DiscoveryRequest{}, want: []string{idWeb, idDB, "spiffe://example.org", "spiffe://other.org"}},
		{name: "some unknown", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{"spiffe://example.org/api", "default"}}, want: []string{"default"}},
		{name: "all unknown", req: &discoveryv3.DiscoveryRequest{ResourceNames: []string{"spiffe://example.org/api"}}, code: codes.NotFound},
		{name: "wrong type_url", req: &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/google.protobuf.Empty"}, code: codes.InvalidArgument},
		{name: "watch fails", req: &discoveryv3.DiscoveryRequest{}, watchErr: errors.New("boom"), code: codes.Unavailable},
		{name: "caller refused for good", req: &discoveryv3.DiscoveryRequest{}, watchErr: fmt.Errorf("%w: exec'd", workload.ErrNotEntitled), code: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workloadtest.NewWatcher(f.View())
			w.SetErr(tt.watchErr)
			c := startServer(t, w, nil)
			if tt.req.TypeUrl == "" {
				tt.req.TypeUrl = SecretTypeURL
			}
			resp, err := c.FetchSecrets(context.Background(), tt.req)
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want %v", err, tt.code)
			}
			if w.Open() != 0 {
				t.Errorf("FetchSecrets left %d subscriptions open", w.Open())
			}
			if err != nil {
				return
			}
			if resp.TypeUrl != SecretTypeURL || resp.VersionInfo == "" || resp.Nonce == "" {
				t.Errorf("response header %q %q %q", resp.TypeUrl, resp.VersionInfo, resp.Nonce)
			}
			wantNames(t, checkSecrets(t, resp.Resources), tt.want...)
		})
	}
}
