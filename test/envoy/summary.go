package envoy

import (
	"fmt"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Kinds of secret in a Summary.
const (
	KindTLSCertificate    = "tls_certificate"
	KindValidationContext = "validation_context"
	KindSPIFFEValidator   = "spiffe_validator"
)

// Summary is one response as fakeenvoy prints it, one JSON object per line. e2e tests decode
// fakeenvoy's stdout into it.
type Summary struct {
	Version   string            `json:"version"`
	Nonce     string            `json:"nonce"`
	Resources []SecretSummary   `json:"resources"`
	Removed   []string          `json:"removed,omitempty"`
	Versions  map[string]string `json:"resource_versions,omitempty"` // delta only
}

// SecretSummary is one secret's PEM contents.
type SecretSummary struct {
	Name         string `json:"name"`
	Kind         string `json:"kind"`
	CertChainPEM string `json:"cert_chain_pem,omitempty"`
	KeyPEM       string `json:"key_pem,omitempty"`
	TrustedCAPEM string `json:"trusted_ca_pem,omitempty"`
	// Bundles maps trust domain name (no spiffe://) to its roots, for spiffe_validator.
	Bundles map[string]string `json:"bundles,omitempty"`
}

// Summarize returns a secret's kind and inline PEM contents. It checks that certificates and
// keys parse (CertAndKey, TrustedCA, SPIFFEValidatorBundles) so a summary is never of garbage.
func Summarize(s *tlsv3.Secret) (SecretSummary, error) {
	out := SecretSummary{Name: s.GetName()}
	switch {
	case s.GetTlsCertificate() != nil:
		if _, _, err := CertAndKey(s); err != nil {
			return out, err
		}
		chain, _ := dataBytes(s.GetTlsCertificate().GetCertificateChain())
		key, _ := dataBytes(s.GetTlsCertificate().GetPrivateKey())
		out.Kind, out.CertChainPEM, out.KeyPEM = KindTLSCertificate, string(chain), string(key)
	case s.GetValidationContext().GetCustomValidatorConfig() != nil:
		if _, err := SPIFFEValidatorBundles(s); err != nil {
			return out, err
		}
		cfg, _ := spiffeConfig(s)
		out.Kind, out.Bundles = KindSPIFFEValidator, make(map[string]string)
		for _, td := range cfg.GetTrustDomains() {
			b, _ := dataBytes(td.GetTrustBundle())
			out.Bundles[td.GetName()] = string(b)
		}
	case s.GetValidationContext() != nil:
		if _, err := TrustedCA(s); err != nil {
			return out, err
		}
		ca, _ := dataBytes(s.GetValidationContext().GetTrustedCa())
		out.Kind, out.TrustedCAPEM = KindValidationContext, string(ca)
	default:
		return out, fmt.Errorf("secret %q is of unsupported type %T", s.GetName(), s.GetType())
	}
	return out, nil
}

// Summary returns the response as fakeenvoy prints it.
func (r *Response) Summary() (Summary, error) {
	out := Summary{Version: r.VersionInfo, Nonce: r.Nonce, Resources: []SecretSummary{}}
	for _, s := range r.Secrets {
		ss, err := Summarize(s)
		if err != nil {
			return out, err
		}
		out.Resources = append(out.Resources, ss)
	}
	return out, nil
}

// Summary returns the delta response as fakeenvoy prints it; Version is system_version_info.
func (r *DeltaResponse) Summary() (Summary, error) {
	out := Summary{Version: r.SystemVersionInfo, Nonce: r.Nonce, Resources: []SecretSummary{}, Removed: r.Removed}
	for _, res := range r.Resources {
		ss, err := Summarize(res.Secret)
		if err != nil {
			return out, err
		}
		out.Resources = append(out.Resources, ss)
		if out.Versions == nil {
			out.Versions = make(map[string]string)
		}
		out.Versions[res.Name] = res.Version
	}
	return out, nil
}
