package conf

import (
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Upstream kinds, the label of ca { upstream "KIND" { … } }.
const (
	UpstreamDisk   = "disk"
	UpstreamStepCA = "step_ca"
)

// DefaultUpstreamCATTL is ca_ttl when an upstream is configured and ca_ttl is not written:
// hours, not a day, so a host switched off or taken out of the upstream's trust stops being
// able to mint soon. It keeps the default svid_ttl (1h) at a sixth of it.
const DefaultUpstreamCATTL = 6 * time.Hour

// UpstreamConfig is the ca { upstream "KIND" { … } } block: who signs the host's CA.
// Kind is "" without one (the CA is self-signed).
type UpstreamConfig struct {
	Kind string // UpstreamDisk or UpstreamStepCA

	// disk: the upstream CA certificate (optionally followed by its chain), its key, and the
	// roots (optional when the certificate is itself a root).
	CertFile   string
	KeyFile    string
	BundleFile string

	// step_ca: step-ca's URL and root, and a JWK provisioner (name, encrypted key, password).
	URL                string
	RootFile           string
	Provisioner        string
	ProvisionerKeyFile string
	PasswordFile       string
}

type fileUpstream struct {
	Kind      string    `hcl:"kind,label"`
	KindRange hcl.Range `hcl:"kind,label_range"`
	// disk
	CertFile        *string   `hcl:"cert_file,optional"`
	CertFileRange   hcl.Range `hcl:"cert_file,attr_range"`
	KeyFile         *string   `hcl:"key_file,optional"`
	KeyFileRange    hcl.Range `hcl:"key_file,attr_range"`
	BundleFile      *string   `hcl:"bundle_file,optional"`
	BundleFileRange hcl.Range `hcl:"bundle_file,attr_range"`
	// step_ca
	URL                     *string   `hcl:"url,optional"`
	URLRange                hcl.Range `hcl:"url,attr_range"`
	RootFile                *string   `hcl:"root_file,optional"`
	RootFileRange           hcl.Range `hcl:"root_file,attr_range"`
	Provisioner             *string   `hcl:"provisioner,optional"`
	ProvisionerRange        hcl.Range `hcl:"provisioner,attr_range"`
	ProvisionerKeyFile      *string   `hcl:"provisioner_key_file,optional"`
	ProvisionerKeyFileRange hcl.Range `hcl:"provisioner_key_file,attr_range"`
	PasswordFile            *string   `hcl:"password_file,optional"`
	PasswordFileRange       hcl.Range `hcl:"password_file,attr_range"`
}

// defaultNodeName is agent.node_name's default: the hostname.
func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// applyUpstream reads the upstream blocks of ca {}; caTTLWritten says whether ca_ttl was.
func (l *loader) applyUpstream(cfg *Config, ups []fileUpstream, caTTLWritten bool) {
	for i, u := range ups {
		if i > 0 {
			l.diags = append(l.diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Duplicate upstream block",
				Detail:   fmt.Sprintf("ca already has an upstream %q block at %s; a CA has one upstream", ups[0].Kind, rangeString(ups[0].KindRange)),
				Subject:  u.KindRange.Ptr(),
			})
			continue
		}
		l.src["ca.upstream"] = where{rng: u.KindRange.Ptr()}
		up := &cfg.CA.Upstream
		up.Kind = u.Kind
		for _, a := range []struct {
			name string
			p    *string
			r    hcl.Range
			dst  *string
		}{
			{"cert_file", u.CertFile, u.CertFileRange, &up.CertFile},
			{"key_file", u.KeyFile, u.KeyFileRange, &up.KeyFile},
			{"bundle_file", u.BundleFile, u.BundleFileRange, &up.BundleFile},
			{"url", u.URL, u.URLRange, &up.URL},
			{"root_file", u.RootFile, u.RootFileRange, &up.RootFile},
			{"provisioner", u.Provisioner, u.ProvisionerRange, &up.Provisioner},
			{"provisioner_key_file", u.ProvisionerKeyFile, u.ProvisionerKeyFileRange, &up.ProvisionerKeyFile},
			{"password_file", u.PasswordFile, u.PasswordFileRange, &up.PasswordFile},
		} {
			key := "ca.upstream." + a.name
			l.str(key, l.file(key, a.p, a.r), a.dst)
		}
		if !caTTLWritten {
			cfg.CA.CATTL = DefaultUpstreamCATTL
		}
	}
}

// validateUpstream checks the upstream block: a known kind, and the settings it needs and
// only those.
func (v *validator) validateUpstream(u UpstreamConfig) {
	if u.Kind == "" {
		return
	}
	set := map[string]string{
		"cert_file": u.CertFile, "key_file": u.KeyFile, "bundle_file": u.BundleFile,
		"url": u.URL, "root_file": u.RootFile, "provisioner": u.Provisioner,
		"provisioner_key_file": u.ProvisionerKeyFile, "password_file": u.PasswordFile,
	}
	var required, optional []string
	switch u.Kind {
	case UpstreamDisk:
		required, optional = []string{"cert_file", "key_file"}, []string{"bundle_file"}
	case UpstreamStepCA:
		required = []string{"url", "root_file", "provisioner", "provisioner_key_file", "password_file"}
	default:
		v.errf("ca.upstream", "upstream %q is not one of %q, %q", u.Kind, UpstreamDisk, UpstreamStepCA)
		return
	}
	allowed := map[string]bool{}
	for _, k := range append(required, optional...) {
		allowed[k] = true
	}
	for _, k := range required {
		if set[k] == "" {
			v.errf("ca.upstream", "upstream %q needs %s", u.Kind, k)
		}
	}
	for _, k := range []string{"cert_file", "key_file", "bundle_file", "url", "root_file", "provisioner", "provisioner_key_file", "password_file"} {
		if set[k] != "" && !allowed[k] {
			v.errf("ca.upstream."+k, "%s is not a setting of upstream %q", k, u.Kind)
		}
	}
	if u.Kind == UpstreamStepCA && u.URL != "" {
		if p, err := url.Parse(u.URL); err != nil || p.Scheme != "https" || p.Host == "" {
			v.errf("ca.upstream.url", "url %q is not an https:// URL, e.g. https://ca.example.org:9000", u.URL)
		}
	}
}
