package envoy

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// SecretTypeURL is the SDS resource type: the only type_url an SDS stream carries.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// SPIFFEValidatorName is the custom_validator_config name of Envoy's SPIFFE certificate
// validator, used by the "ALL" secret.
const SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"

// spiffeValidatorTypeURL is the typed_config type of the SPIFFE validator.
var spiffeValidatorTypeURL = "type.googleapis.com/" + string((&tlsv3.SPIFFECertValidatorConfig{}).ProtoReflect().Descriptor().FullName())

// ErrInvalid is wrapped by every error about a response that Envoy would reject (and that this
// client NACKs): bad type_url, undecodable resource, duplicate name, failed ValidateAll. Tests
// branch on it to tell "the agent sent garbage" from "the stream broke".
var ErrInvalid = errors.New("invalid SDS response")

// decodeSecret unpacks one resource and checks it as Envoy would before applying it.
func decodeSecret(a *anypb.Any) (*tlsv3.Secret, error) {
	if a == nil {
		return nil, fmt.Errorf("%w: nil resource", ErrInvalid)
	}
	if a.GetTypeUrl() != SecretTypeURL {
		return nil, fmt.Errorf("%w: resource type %q, want %q", ErrInvalid, a.GetTypeUrl(), SecretTypeURL)
	}
	s := &tlsv3.Secret{}
	if err := proto.Unmarshal(a.GetValue(), s); err != nil {
		return nil, fmt.Errorf("%w: decoding secret: %w", ErrInvalid, err)
	}
	if err := validateSecret(s); err != nil {
		return nil, err
	}
	return s, nil
}

// validateSecret runs the generated validation, and also validates the SPIFFE validator config
// hidden in an Any (ValidateAll does not look inside typed_config).
func validateSecret(s *tlsv3.Secret) error {
	if s.GetName() == "" {
		return fmt.Errorf("%w: secret without a name", ErrInvalid)
	}
	if err := s.ValidateAll(); err != nil {
		return fmt.Errorf("%w: secret %q: %w", ErrInvalid, s.GetName(), err)
	}
	if s.GetType() == nil {
		return fmt.Errorf("%w: secret %q has no type (tls_certificate, validation_context…)", ErrInvalid, s.GetName())
	}
	if cv := s.GetValidationContext().GetCustomValidatorConfig(); cv != nil {
		if _, err := spiffeConfig(s); err != nil {
			return fmt.Errorf("%w: secret %q: %w", ErrInvalid, s.GetName(), err)
		}
	}
	return nil
}

// dataBytes reads an inline DataSource. svidd sends everything inline; a filename or an
// environment variable in a secret would make Envoy read the agent's host paths.
func dataBytes(ds *corev3.DataSource) ([]byte, error) {
	switch sp := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return sp.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(sp.InlineString), nil
	case nil:
		return nil, errors.New("data source is empty")
	default:
		return nil, fmt.Errorf("data source is %T, want inline bytes", sp)
	}
}

// parseCertsPEM parses every CERTIFICATE block; anything else in the PEM is an error, so a key
// leaked into a chain or trust bundle is caught.
func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(strings.TrimSpace(string(b))) != 0 {
		return nil, errors.New("trailing data after PEM blocks")
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return certs, nil
}

// CertAndKey returns the chain (leaf first) and private key of a tls_certificate secret. The
// key must be one PKCS#8 "PRIVATE KEY" block and must match the leaf.
func CertAndKey(s *tlsv3.Secret) ([]*x509.Certificate, crypto.Signer, error) {
	tc := s.GetTlsCertificate()
	if tc == nil {
		return nil, nil, fmt.Errorf("secret %q is not a tls_certificate", s.GetName())
	}
	chainPEM, err := dataBytes(tc.GetCertificateChain())
	if err != nil {
		return nil, nil, fmt.Errorf("reading certificate chain of %q: %w", s.GetName(), err)
	}
	chain, err := parseCertsPEM(chainPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing certificate chain of %q: %w", s.GetName(), err)
	}
	keyPEM, err := dataBytes(tc.GetPrivateKey())
	if err != nil {
		return nil, nil, fmt.Errorf("reading private key of %q: %w", s.GetName(), err)
	}
	blk, rest := pem.Decode(keyPEM)
	if blk == nil || blk.Type != "PRIVATE KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, nil, fmt.Errorf("private key of %q is not one PKCS#8 PRIVATE KEY PEM block", s.GetName())
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing private key of %q: %w", s.GetName(), err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("private key of %q is %T, not a signer", s.GetName(), k)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := signer.Public().(equaler); !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, nil, fmt.Errorf("private key of %q does not match its leaf certificate", s.GetName())
	}
	return chain, signer, nil
}

// TrustedCA returns the roots of a validation_context secret's trusted_ca.
func TrustedCA(s *tlsv3.Secret) ([]*x509.Certificate, error) {
	vc := s.GetValidationContext()
	if vc == nil {
		return nil, fmt.Errorf("secret %q is not a validation_context", s.GetName())
	}
	b, err := dataBytes(vc.GetTrustedCa())
	if err != nil {
		return nil, fmt.Errorf("reading trusted_ca of %q: %w", s.GetName(), err)
	}
	certs, err := parseCertsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("parsing trusted_ca of %q: %w", s.GetName(), err)
	}
	return certs, nil
}

// SPIFFEValidatorBundles returns, for a secret using Envoy's SPIFFE validator (the "ALL"
// secret), each trust domain's roots keyed by trust domain name as Envoy's config spells it
// (without "spiffe://").
func SPIFFEValidatorBundles(s *tlsv3.Secret) (map[string][]*x509.Certificate, error) {
	cfg, err := spiffeConfig(s)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]*x509.Certificate, len(cfg.GetTrustDomains()))
	for _, td := range cfg.GetTrustDomains() {
		b, err := dataBytes(td.GetTrustBundle())
		if err != nil {
			return nil, fmt.Errorf("reading trust bundle of %q in %q: %w", td.GetName(), s.GetName(), err)
		}
		certs, err := parseCertsPEM(b)
		if err != nil {
			return nil, fmt.Errorf("parsing trust bundle of %q in %q: %w", td.GetName(), s.GetName(), err)
		}
		out[td.GetName()] = certs
	}
	return out, nil
}

// spiffeConfig decodes and checks the SPIFFE validator config of a validation context.
func spiffeConfig(s *tlsv3.Secret) (*tlsv3.SPIFFECertValidatorConfig, error) {
	cv := s.GetValidationContext().GetCustomValidatorConfig()
	if cv == nil {
		return nil, fmt.Errorf("secret %q has no custom_validator_config", s.GetName())
	}
	if cv.GetName() != SPIFFEValidatorName {
		return nil, fmt.Errorf("secret %q: custom validator %q, want %q", s.GetName(), cv.GetName(), SPIFFEValidatorName)
	}
	if cv.GetTypedConfig().GetTypeUrl() != spiffeValidatorTypeURL {
		return nil, fmt.Errorf("secret %q: validator typed_config is %q, want %q", s.GetName(), cv.GetTypedConfig().GetTypeUrl(), spiffeValidatorTypeURL)
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		return nil, fmt.Errorf("decoding SPIFFE validator config of %q: %w", s.GetName(), err)
	}
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("SPIFFE validator config of %q: %w", s.GetName(), err)
	}
	seen := make(map[string]bool)
	for _, td := range cfg.GetTrustDomains() {
		// Envoy's config comment: the name "must *not* have 'spiffe://' prefix".
		if strings.HasPrefix(td.GetName(), "spiffe://") {
			return nil, fmt.Errorf("SPIFFE validator config of %q: trust domain %q must not have the spiffe:// prefix", s.GetName(), td.GetName())
		}
		if seen[td.GetName()] {
			return nil, fmt.Errorf("SPIFFE validator config of %q: trust domain %q listed twice", s.GetName(), td.GetName())
		}
		seen[td.GetName()] = true
	}
	return cfg, nil
}
