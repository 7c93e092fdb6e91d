package agent

import (
	"fmt"
	"log/slog"

	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/conf"
)

// newUpstream builds the CA's upstream from the ca { upstream "KIND" {} } block; nil, nil
// without one. The files are checked here, so a mistake stops svidd at start.
func newUpstream(u conf.UpstreamConfig, log *slog.Logger) (ca.Upstream, error) {
	switch u.Kind {
	case "":
		return nil, nil
	case conf.UpstreamDisk:
		return ca.NewDisk(ca.DiskConfig{CertFile: u.CertFile, KeyFile: u.KeyFile, BundleFile: u.BundleFile, Logger: log})
	case conf.UpstreamStepCA:
		return ca.NewStepCA(ca.StepCAConfig{URL: u.URL, RootFile: u.RootFile, Provisioner: u.Provisioner,
			ProvisionerKeyFile: u.ProvisionerKeyFile, PasswordFile: u.PasswordFile})
	}
	return nil, fmt.Errorf("unknown upstream %q", u.Kind)
}
