package agent_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/internal/etcdtest"
	"github.com/svidd/svidd/internal/testpki"
	"github.com/svidd/svidd/pkg/admin"
)

// foreignRoot is a CA certificate of td, PEM-encoded: a foreign trust domain's bundle as an
// operator would set it by hand.
func foreignRoot(t *testing.T, td spiffeid.TrustDomain) string {
	t.Helper()
	return string(testpki.CertPEM(testpki.Root(t, td.Name()+" root", testpki.NoPathLen, time.Hour).Cert))
}

// hasX509Bundle reports whether the Workload API on cfg's socket gives this process td's
// X.509 bundle (FetchX509Bundles).
func hasX509Bundle(t *testing.T, cfg conf.Config, td spiffeid.TrustDomain) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	set, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr("unix://"+cfg.SocketPath))
	if err != nil {
		t.Fatalf("FetchX509Bundles on %s: %v", cfg.NodeName, err)
	}
	return set.Has(td)
}

// TestFleetManualBundle: a federated bundle the operator sets by hand (svidctl bundle set) on
// one host of a fleet, or on a registrar-only host, reaches every host's Workload API for a
// caller whose entry federates with it (host-b has no federates_with block for it: a bundle
// set by hand needs none), and svidctl bundle delete removes it from every host.
func TestFleetManualBundle(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{})
	other := spiffeid.RequireTrustDomainFromString("other.org")
	web := mustEntry(t, "/web", "unix:uid:"+strconv.Itoa(os.Getuid()))
	web.Name, web.FederatesWith = "web", []spiffeid.TrustDomain{other}
	aCfg, _ := fleetHost(t, c, "host-a", nil)
	bCfg, _ := fleetHost(t, c, "host-b", nil, web)
	regCfg, _ := runRegistryAgent(t, conf.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/svidd/"}, func(cfg *conf.Config) {
		cfg.RegistrarOnly = true
	})
	a, reg := admin.NewClient(aCfg.AdminSocketPath), admin.NewClient(regCfg.AdminSocketPath)
	ctx := context.Background()

	if hasX509Bundle(t, bCfg, other) {
		t.Fatal("host-b serves other.org's bundle before any was set")
	}
	if _, err := a.SetBundle(ctx, "other.org", "pem", []byte(foreignRoot(t, other))); err != nil {
		t.Fatalf("bundle set on host-a: %v", err)
	}
	eventually(t, "the bundle set on host-a served on host-b", func() bool { return hasX509Bundle(t, bCfg, other) })
	bs, err := admin.NewClient(bCfg.AdminSocketPath).ListBundles(ctx)
	if err != nil || len(bs) != 1 || bs[0].Source != "manual" || bs[0].Configured {
		t.Fatalf("host-b's bundles: %+v, %v; want other.org set by hand", bs, err)
	}
	if err := a.DeleteBundle(ctx, "other.org"); err != nil {
		t.Fatalf("bundle delete on host-a: %v", err)
	}
	eventually(t, "the bundle deleted on host-a gone on host-b", func() bool { return !hasX509Bundle(t, bCfg, other) })
	if err := a.DeleteBundle(ctx, "other.org"); !admin.IsNotFound(err) {
		t.Fatalf("second bundle delete on host-a: %v, want not found", err)
	}

	var set admin.Bundle
	eventually(t, "bundle set on the registrar", func() bool {
		set, err = reg.SetBundle(ctx, "other.org", "pem", []byte(foreignRoot(t, other)))
		return err == nil
	})
	eventually(t, "the bundle set on the registrar served on host-b", func() bool { return hasX509Bundle(t, bCfg, other) })
	if got, err := reg.FederatedBundle(ctx, "other.org"); err != nil || got.PEM != set.PEM {
		t.Fatalf("bundle show on the registrar: %+v, %v; want what was set", got, err)
	}
	if bs, err := reg.ListBundles(ctx); err != nil || len(bs) != 1 || bs[0].TrustDomain != "other.org" || bs[0].Source != "manual" || bs[0].X509Authorities != 1 {
		t.Fatalf("bundle list on the registrar: %+v, %v", bs, err)
	}
	eventually(t, "host-a holds the registrar's bundle", func() bool {
		got, err := a.FederatedBundle(ctx, "other.org")
		return err == nil && got.PEM == set.PEM
	})
	if err := reg.DeleteBundle(ctx, "other.org"); err != nil {
		t.Fatalf("bundle delete on the registrar: %v", err)
	}
	eventually(t, "the bundle deleted on the registrar gone on host-b", func() bool { return !hasX509Bundle(t, bCfg, other) })
	eventually(t, "the bundle deleted on the registrar gone on host-a", func() bool {
		_, err := a.FederatedBundle(ctx, "other.org")
		return admin.IsNotFound(err)
	})
}
