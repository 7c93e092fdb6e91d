package conf

import (
	"fmt"
	"net/url"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/entry"
)

// Bundle endpoint profiles (SPIFFE Federation §5.2).
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// FederationConfig is the federation {} block and the federates_with blocks.
type FederationConfig struct {
	// Endpoint is the bundle endpoint serving this trust domain's bundle; nil: none.
	Endpoint *BundleEndpointConfig
	// MinRefreshInterval is the shortest interval at which a foreign bundle endpoint is
	// polled, whatever its refresh hint (default 1m; tests lower it).
	MinRefreshInterval time.Duration
	// FederatesWith are the federation relationships, in file order.
	FederatesWith []FederatesWith
}

// BundleEndpointConfig is federation { bundle_endpoint { ... } }.
type BundleEndpointConfig struct {
	Address string // host:port
	Profile string // ProfileHTTPSSPIFFE or ProfileHTTPSWeb
	// RefreshHint is published as spiffe_refresh_hint; 0 means the default, a fifteenth of
	// ca_ttl capped at 5m (the CA publishes its successor a third of ca_ttl before using it,
	// so peers polling at the hint see it at least five times first: §4.1 asks 3-5).
	RefreshHint time.Duration
	// CertFile and KeyFile: the https_web serving certificate and key (PEM).
	CertFile, KeyFile string
}

// FederatesWith is one federates_with "TRUST_DOMAIN" { ... } block.
type FederatesWith struct {
	TrustDomain       spiffeid.TrustDomain
	BundleEndpointURL string // "" : the bundle is managed by hand or comes from BundleFile
	Profile           string
	EndpointSPIFFEID  spiffeid.ID
	BundleFile        string
	// ToAllWorkloads gives this trust domain's bundle to every caller with an identity,
	// without listing it in entries (spiffe/spire#2272).
	ToAllWorkloads bool
}

type fileFederation struct {
	BundleEndpoint  *fileBundleEndpoint `hcl:"bundle_endpoint,block"`
	MinRefresh      *string             `hcl:"min_refresh_interval,optional"`
	MinRefreshRange hcl.Range           `hcl:"min_refresh_interval,attr_range"`
}

type fileBundleEndpoint struct {
	DefRange         hcl.Range `hcl:",def_range"`
	Address          *string   `hcl:"address,optional"`
	AddressRange     hcl.Range `hcl:"address,attr_range"`
	Profile          *string   `hcl:"profile,optional"`
	ProfileRange     hcl.Range `hcl:"profile,attr_range"`
	RefreshHint      *string   `hcl:"refresh_hint,optional"`
	RefreshHintRange hcl.Range `hcl:"refresh_hint,attr_range"`
	CertFile         *string   `hcl:"cert_file,optional"`
	CertFileRange    hcl.Range `hcl:"cert_file,attr_range"`
	KeyFile          *string   `hcl:"key_file,optional"`
	KeyFileRange     hcl.Range `hcl:"key_file,attr_range"`
}

type fileFederatesWith struct {
	Name          string    `hcl:"name,label"`
	NameRange     hcl.Range `hcl:"name,label_range"`
	URL           *string   `hcl:"bundle_endpoint_url,optional"`
	URLRange      hcl.Range `hcl:"bundle_endpoint_url,attr_range"`
	Profile       *string   `hcl:"profile,optional"`
	ProfileRange  hcl.Range `hcl:"profile,attr_range"`
	EndpointID    *string   `hcl:"endpoint_spiffe_id,optional"`
	EndpointRange hcl.Range `hcl:"endpoint_spiffe_id,attr_range"`
	BundleFile    *string   `hcl:"bundle_file,optional"`
	BundleRange   hcl.Range `hcl:"bundle_file,attr_range"`
	ToAll         *bool     `hcl:"to_all_workloads,optional"`
}

func fedKey(i int) string { return fmt.Sprintf("federates_with.%d", i) }

func (l *loader) applyFederation(cfg *Config, f *fileRoot) {
	if fed := f.Federation; fed != nil {
		l.duration("federation.min_refresh_interval", l.file("federation.min_refresh_interval", fed.MinRefresh, fed.MinRefreshRange), &cfg.Federation.MinRefreshInterval)
		if be := fed.BundleEndpoint; be != nil {
			ep := &BundleEndpointConfig{}
			l.src["federation.bundle_endpoint"] = where{rng: be.DefRange.Ptr()}
			l.str("federation.bundle_endpoint.address", l.file("federation.bundle_endpoint.address", be.Address, be.AddressRange), &ep.Address)
			l.str("federation.bundle_endpoint.profile", l.file("federation.bundle_endpoint.profile", be.Profile, be.ProfileRange), &ep.Profile)
			l.duration("federation.bundle_endpoint.refresh_hint", l.file("federation.bundle_endpoint.refresh_hint", be.RefreshHint, be.RefreshHintRange), &ep.RefreshHint)
			l.str("federation.bundle_endpoint.cert_file", l.file("federation.bundle_endpoint.cert_file", be.CertFile, be.CertFileRange), &ep.CertFile)
			l.str("federation.bundle_endpoint.key_file", l.file("federation.bundle_endpoint.key_file", be.KeyFile, be.KeyFileRange), &ep.KeyFile)
			cfg.Federation.Endpoint = ep
		}
	}
	for i, fw := range f.FederatesWith {
		key := fedKey(i)
		l.src[key] = where{rng: fw.NameRange.Ptr()}
		out := FederatesWith{ToAllWorkloads: fw.ToAll != nil && *fw.ToAll}
		td, err := parseTrustDomain(fw.Name)
		if err != nil {
			l.fail(key, l.src[key], err.Error())
		}
		out.TrustDomain = td
		l.str(key+".bundle_endpoint_url", l.file(key+".bundle_endpoint_url", fw.URL, fw.URLRange), &out.BundleEndpointURL)
		l.str(key+".profile", l.file(key+".profile", fw.Profile, fw.ProfileRange), &out.Profile)
		l.str(key+".bundle_file", l.file(key+".bundle_file", fw.BundleFile, fw.BundleRange), &out.BundleFile)
		if v := l.file(key+".endpoint_spiffe_id", fw.EndpointID, fw.EndpointRange); v != nil {
			l.src[key+".endpoint_spiffe_id"] = v.at
			id, err := spiffeid.FromString(v.s)
			if err != nil {
				l.fail(key+".endpoint_spiffe_id", v.at, fmt.Sprintf("spiffe ID %q: %v", v.s, err))
			}
			out.EndpointSPIFFEID = id
		}
		cfg.Federation.FederatesWith = append(cfg.Federation.FederatesWith, out)
	}
}

// entryFederatesWith decodes an entry's federates_with list of trust domain names.
func (l *loader) entryFederatesWith(key string, fe fileEntry) []spiffeid.TrustDomain {
	names, ok := l.stringList(key+".federates_with", fe.FedWith, fe.FedWithRng)
	if !ok {
		return nil
	}
	var out []spiffeid.TrustDomain
	for j, n := range names {
		k := fmt.Sprintf("%s.federates_with.%d", key, j)
		td, err := parseTrustDomain(n)
		if err != nil {
			l.fail(k, l.src[k], err.Error())
			continue
		}
		out = append(out, td)
	}
	return entry.NormalizeTrustDomains(out)
}

func (v *validator) federation(c Config) {
	f := c.Federation
	if !v.bad("federation.min_refresh_interval") && f.MinRefreshInterval < time.Second {
		v.errf("federation.min_refresh_interval", "min_refresh_interval must be at least 1s, got %s", fmtDuration(f.MinRefreshInterval))
	}
	if ep := f.Endpoint; ep != nil {
		const k = "federation.bundle_endpoint"
		if ep.Address == "" {
			v.errf(k+".address", "a bundle endpoint needs an address, e.g. \"0.0.0.0:8443\"")
		} else {
			v.address(k+".address", ep.Address)
		}
		switch ep.Profile {
		case ProfileHTTPSSPIFFE:
			if ep.CertFile != "" || ep.KeyFile != "" {
				v.errf(v.sourced(k+".cert_file", k+".key_file"), "cert_file and key_file are for https_web; an https_spiffe endpoint serves with an SVID of its own trust domain")
			}
		case ProfileHTTPSWeb:
			if ep.CertFile == "" || ep.KeyFile == "" {
				v.errf(v.sourced(k+".cert_file", k+".key_file", k+".profile"), "an https_web endpoint needs cert_file and key_file (its Web PKI certificate and key, PEM)")
			}
		default:
			v.errf(k+".profile", "profile %q is not one of https_spiffe, https_web", ep.Profile)
		}
		if !v.bad(k+".refresh_hint") && !v.bad("ca.ca_ttl") {
			switch _, written := v.src[k+".refresh_hint"]; {
			case written && ep.RefreshHint < time.Second:
				v.errf(k+".refresh_hint", "refresh_hint must be at least 1s, got %s", fmtDuration(ep.RefreshHint))
			case ep.RefreshHint > c.CA.CATTL/9:
				v.errf(k+".refresh_hint", "refresh_hint %s is longer than a ninth of ca_ttl %s (%s): a new CA is published a third of ca_ttl before it signs, and peers polling at the hint must see it at least three times first (SPIFFE Federation §4.1)",
					fmtDuration(ep.RefreshHint), fmtDuration(c.CA.CATTL), fmtDuration(c.CA.CATTL/9))
			}
		}
	}
	seen := map[spiffeid.TrustDomain]int{}
	for i, fw := range f.FederatesWith {
		key := fedKey(i)
		if v.bad(key) {
			continue
		}
		if first, dup := seen[fw.TrustDomain]; dup {
			detail := fmt.Sprintf("trust domain %q already has a federates_with block", fw.TrustDomain.Name())
			if w := v.at(fedKey(first)); w.rng != nil {
				detail += " at " + rangeString(*w.rng)
			}
			v.errf(key, "%s", detail)
			continue
		}
		seen[fw.TrustDomain] = i
		if fw.TrustDomain == c.TrustDomain {
			v.errf(key, "%q is this agent's own trust domain; federate with foreign ones only", fw.TrustDomain.Name())
			continue
		}
		if fw.BundleEndpointURL == "" {
			if fw.Profile != "" || !fw.EndpointSPIFFEID.IsZero() {
				v.errf(v.sourced(key+".profile", key+".endpoint_spiffe_id"), "profile and endpoint_spiffe_id need a bundle_endpoint_url")
			}
			continue
		}
		if u, err := url.Parse(fw.BundleEndpointURL); err != nil || u.Scheme != "https" || u.Host == "" {
			v.errf(key+".bundle_endpoint_url", "bundle_endpoint_url %q is not an https:// URL (both profiles are HTTPS)", fw.BundleEndpointURL)
		}
		switch fw.Profile {
		case ProfileHTTPSSPIFFE:
			if fw.EndpointSPIFFEID.IsZero() && !v.bad(key+".endpoint_spiffe_id") {
				v.errf(key, "https_spiffe needs endpoint_spiffe_id, the SPIFFE ID the endpoint serves with (svidd's: spiffe://%s/svidd/bundle-endpoint)", fw.TrustDomain.Name())
			}
		case ProfileHTTPSWeb:
			if !fw.EndpointSPIFFEID.IsZero() {
				v.errf(key+".endpoint_spiffe_id", "endpoint_spiffe_id is for https_spiffe; an https_web endpoint is verified with the system's roots")
			}
		case "":
			v.errf(key, "a federates_with block with a bundle_endpoint_url needs profile = \"https_spiffe\" or \"https_web\"")
		default:
			v.errf(key+".profile", "profile %q is not one of https_spiffe, https_web", fw.Profile)
		}
	}
}

// BundleEndpointRefreshHint is the refresh hint the bundle endpoint publishes: the configured
// one, else a fifteenth of ca_ttl capped at 5m (and at least a second).
func (c Config) BundleEndpointRefreshHint() time.Duration {
	if ep := c.Federation.Endpoint; ep != nil && ep.RefreshHint > 0 {
		return ep.RefreshHint
	}
	return max(min(5*time.Minute, c.CA.CATTL/15), time.Second)
}
