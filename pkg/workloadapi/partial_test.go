package workloadapi

import (
	"context"
	"slices"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"

	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// TestPartialView: a Workload API stream that joins a caller group made Partial by an SDS
// stream never sends an X509SVIDResponse from the Partial View (it would lack SVIDs and put
// the wrong one first): it waits for the complete View. The bundles-only RPCs answer from the
// Partial View at once, and a Partial View with no SVID ready yet is not "no identity".
func TestPartialView(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name    string
		partial *workload.View
	}{
		// web is ready, db (the default, first in the complete View) is still being minted.
		{"one SVID ready, not the default", &workload.View{Partial: true, SVIDs: []*workload.SVID{f.Web}, Bundles: f.View().Bundles}},
		{"no SVID ready yet", &workload.View{Partial: true, Bundles: f.View().Bundles}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, workloadtest.NewWatcher(tc.partial), nil)
			c := ts.raw(t)
			x509s := openRaw(t, func(ctx context.Context) (grpc.ServerStreamingClient[workloadpb.X509SVIDResponse], error) {
				return c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
			})
			bundles := openRaw(t, func(ctx context.Context) (grpc.ServerStreamingClient[workloadpb.X509BundlesResponse], error) {
				return c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
			})
			jwts := openRaw(t, func(ctx context.Context) (grpc.ServerStreamingClient[workloadpb.JWTBundlesResponse], error) {
				return c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
			})
			want := []string{"spiffe://example.org", "spiffe://other.org"}
			if r := bundles.recv(); !slices.Equal(keys(r.Bundles), want) {
				t.Fatalf("X509BundlesResponse from the Partial View: %v, want %v", keys(r.Bundles), want)
			}
			if r := jwts.recv(); !slices.Equal(keys(r.Bundles), want) {
				t.Fatalf("JWTBundlesResponse from the Partial View: %v, want %v", keys(r.Bundles), want)
			}
			ctx := withHeader(testCtx(t))
			tok := caSign(t, f.CA, f.Web.ID, []string{"aud"}, time.Minute)
			if r, err := c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "aud", Svid: tok}); err != nil || r.SpiffeId != idWeb {
				t.Fatalf("ValidateJWTSVID with a Partial View: %v, %v", r, err)
			}
			x509s.none() // nothing from the Partial View

			ts.w.Publish(f.View())
			r := x509s.recv()
			if len(r.Svids) != 2 || r.Svids[0].SpiffeId != idDB || r.Svids[1].SpiffeId != idWeb {
				t.Fatalf("X509SVIDResponse after the complete View: %d SVIDs, want db (the default) then web", len(r.Svids))
			}
			bundles.none() // same bundles: nothing new to send
			jwts.none()
		})
	}
}
