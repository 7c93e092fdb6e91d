package admin_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

// TestFederatedBundlesAPI: svidctl bundle set/show/list/delete through the admin API over a
// real federation manager and store; bad input is 400 and stores nothing, an unknown trust
// domain 404, svidd's own trust domain is refused.
func TestFederatedBundlesAPI(t *testing.T) {
	ctx := context.Background()
	var st store.Store
	c, _, _ := startServerWith(t, nil, func(cfg *admin.Config, s store.Store) {
		st = s
		m, err := federation.NewManager(federation.ManagerConfig{TrustDomain: td, Store: s, OwnBundle: func() *workload.Bundle { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Federation = admin.NewFederation(m)
	})
	other := workloadtest.NewCA(t, workloadtest.OtherTD, "k")
	if _, err := c.SetBundle(ctx, "spiffe://other.org", "pem", other.Bundle(t, 0).PEM); err != nil {
		t.Fatal(err)
	}
	b, err := c.FederatedBundle(ctx, "other.org")
	if err != nil || b.TrustDomain != "other.org" || b.PEM != string(other.Bundle(t, 0).PEM) || !strings.Contains(string(b.SPIFFE), `"x509-svid"`) {
		t.Fatalf("show = %+v, %v", b, err)
	}
	list, err := c.ListBundles(ctx)
	if err != nil || len(list) != 1 || !list[0].HasBundle || list[0].Source != "manual" || list[0].X509Authorities != 1 || list[0].Configured {
		t.Fatalf("list = %+v, %v", list, err)
	}
	own, err := c.Bundle(ctx)
	if err != nil || own.TrustDomain != "example.org" {
		t.Fatalf("own bundle = %+v, %v", own, err)
	}

	for name, tc := range map[string]struct {
		td, format, data string
		code             int
	}{
		"own trust domain": {"example.org", "pem", string(other.Bundle(t, 0).PEM), http.StatusBadRequest},
		"not a bundle":     {"third.org", "pem", "hello", http.StatusBadRequest},
		"bad format":       {"third.org", "der", "x", http.StatusBadRequest},
		"workload ID":      {"spiffe://third.org/w", "pem", string(other.Bundle(t, 0).PEM), http.StatusBadRequest},
	} {
		_, err := c.SetBundle(ctx, tc.td, tc.format, []byte(tc.data))
		var se *admin.StatusError
		if !errors.As(err, &se) || se.Code != tc.code {
			t.Errorf("%s: err = %v, want status %d", name, err, tc.code)
		}
	}
	if rows, _ := st.ListBundles(ctx); len(rows) != 1 {
		t.Fatalf("bad input stored something: %d bundles", len(rows))
	}
	if _, err := c.FederatedBundle(ctx, "third.org"); !admin.IsNotFound(err) {
		t.Fatalf("unknown trust domain: %v, want 404", err)
	}
	if err := c.DeleteBundle(ctx, "spiffe://other.org"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteBundle(ctx, "other.org"); !admin.IsNotFound(err) {
		t.Fatalf("second delete: %v, want 404", err)
	}
}
