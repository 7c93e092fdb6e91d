package workload

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestWanted: no hint is nil (everything wanted), an empty hint stays distinguishable from no
// hint (bundles only), and a hint comes back as given.
func TestWanted(t *testing.T) {
	web := spiffeid.RequireFromString("spiffe://example.org/web")
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		wantNil bool
		want    []spiffeid.ID
	}{
		{"no hint", context.Background(), true, nil},
		{"nil hint is no hint", WithWanted(context.Background(), nil), true, nil},
		{"empty hint", WithWanted(context.Background(), []spiffeid.ID{}), false, []spiffeid.ID{}},
		{"one ID", WithWanted(context.Background(), []spiffeid.ID{web}), false, []spiffeid.ID{web}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Wanted(tc.ctx)
			if (got == nil) != tc.wantNil {
				t.Fatalf("Wanted = %#v, nil %v, want nil %v", got, got == nil, tc.wantNil)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("Wanted = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("Wanted = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestEmptyPartial: a Partial View with no SVID ready yet is not "entitled to nothing".
func TestEmptyPartial(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    *View
		want bool
	}{
		{"nil", nil, true},
		{"no SVIDs", &View{}, true},
		{"partial, none ready", &View{Partial: true}, false},
		{"partial, one ready", &View{Partial: true, SVIDs: []*SVID{{}}}, false},
		{"complete", &View{SVIDs: []*SVID{{}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.v.Empty(); got != tc.want {
				t.Fatalf("Empty() = %v, want %v", got, tc.want)
			}
		})
	}
}
