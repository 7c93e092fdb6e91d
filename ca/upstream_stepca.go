package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// StepCAConfig configures the step_ca upstream: smallstep's step-ca signs each host CA over
// its HTTP API (POST /1.0/sign) with a one-time token of a JWK provisioner whose X.509
// template issues CA certificates.
type StepCAConfig struct {
	// URL is step-ca's address, e.g. https://ca.example.org:9000.
	URL string
	// RootFile is step-ca's root certificate (PEM): svidd trusts step-ca's TLS with it.
	RootFile string
	// Provisioner is the JWK provisioner's name; ProvisionerKeyFile its private key as step
	// writes it (a JWE, encrypted with the password in PasswordFile).
	Provisioner        string
	ProvisionerKeyFile string
	PasswordFile       string
	Clock              func() time.Time
}

// StepCA is the step_ca upstream. Every signing uses a fresh one-time token signed with the
// provisioner key; the roots come from step-ca's /roots, fetched over TLS verified with
// RootFile.
type StepCA struct {
	cfg    StepCAConfig
	base   *url.URL
	key    jose.JSONWebKey
	alg    jose.SignatureAlgorithm
	client *http.Client
}

var _ Upstream = (*StepCA)(nil)

// tokenTTL is the one-time token's lifetime: it is used within seconds of being made.
const tokenTTL = 5 * time.Minute

// NewStepCA reads the root and decrypts the provisioner key, so a wrong password or path is
// reported when svidd starts. It does not contact step-ca.
func NewStepCA(cfg StepCAConfig) (*StepCA, error) {
	switch {
	case cfg.URL == "":
		return nil, errors.New("step_ca upstream: url is required")
	case cfg.RootFile == "":
		return nil, errors.New("step_ca upstream: root_file is required")
	case cfg.Provisioner == "":
		return nil, errors.New("step_ca upstream: provisioner is required")
	case cfg.ProvisionerKeyFile == "" || cfg.PasswordFile == "":
		return nil, errors.New("step_ca upstream: provisioner_key_file and password_file are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	base, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return nil, fmt.Errorf("step_ca upstream: url %q is not an https:// URL", cfg.URL)
	}
	roots, err := readCerts(cfg.RootFile)
	if err != nil {
		return nil, fmt.Errorf("step_ca upstream: root_file: %w", err)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("step_ca upstream: %s holds no certificate", cfg.RootFile)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	key, err := readProvisionerKey(cfg.ProvisionerKeyFile, cfg.PasswordFile)
	if err != nil {
		return nil, fmt.Errorf("step_ca upstream: %w", err)
	}
	alg := jose.SignatureAlgorithm(key.Algorithm)
	if alg == "" {
		alg = jose.ES256
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.Proxy = nil // step-ca is reached directly; a proxy must not see the tokens
	return &StepCA{cfg: cfg, base: base, key: key, alg: alg, client: &http.Client{Transport: tr}}, nil
}

// readProvisionerKey decrypts the JWE step writes for a provisioner key (compact or JSON
// serialisation, PBES2 key wrapping) with the password in passwordFile.
func readProvisionerKey(keyFile, passwordFile string) (jose.JSONWebKey, error) {
	var key jose.JSONWebKey
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return key, fmt.Errorf("provisioner key: %w", err)
	}
	pw, err := os.ReadFile(passwordFile)
	if err != nil {
		return key, fmt.Errorf("password file: %w", err)
	}
	pw = bytes.TrimRight(pw, "\r\n")
	enc, err := jose.ParseEncrypted(strings.TrimSpace(string(data)),
		[]jose.KeyAlgorithm{jose.PBES2_HS256_A128KW, jose.PBES2_HS384_A192KW, jose.PBES2_HS512_A256KW},
		[]jose.ContentEncryption{jose.A128GCM, jose.A192GCM, jose.A256GCM, jose.A128CBC_HS256, jose.A256CBC_HS512})
	if err != nil {
		return key, fmt.Errorf("provisioner key %s is not an encrypted JWK (JWE): %w", keyFile, err)
	}
	plain, err := enc.Decrypt(pw)
	if err != nil {
		return key, fmt.Errorf("decrypting provisioner key %s with the password in %s: %w", keyFile, passwordFile, err)
	}
	if err := key.UnmarshalJSON(plain); err != nil {
		return key, fmt.Errorf("provisioner key %s: %w", keyFile, err)
	}
	if key.IsPublic() || key.KeyID == "" {
		return key, fmt.Errorf("provisioner key %s is not a private JWK with a kid", keyFile)
	}
	return key, nil
}

// Name implements Upstream.
func (s *StepCA) Name() string { return "step_ca" }

// SignCA implements Upstream: POST /1.0/sign with the CSR and a one-time token whose subject
// is the CSR's common name (the host) and whose SANs are its URIs (the trust domain ID); the
// provisioner's template makes it a CA certificate. The roots come from GET /roots.
func (s *StepCA) SignCA(ctx context.Context, csrDER []byte, ttl time.Duration) (*Signed, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parsing CSR: %w", err)
	}
	signURL := s.base.JoinPath("/1.0/sign").String()
	ott, err := s.token(csr, signURL)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]string{
		"csr":      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		"ott":      ott,
		"notAfter": ttl.String(),
	})
	var signed struct {
		CertChain []string `json:"certChain"`
		Crt       string   `json:"crt"`
		CA        string   `json:"ca"`
	}
	if err := s.call(ctx, http.MethodPost, signURL, body, &signed); err != nil {
		return nil, err
	}
	pems := signed.CertChain
	if len(pems) == 0 { // older servers: crt and ca only
		pems = []string{signed.Crt, signed.CA}
	}
	var chain []*x509.Certificate
	for _, p := range pems {
		certs, err := decodeCerts(p)
		if err != nil {
			return nil, fmt.Errorf("step-ca's certificate chain: %w", err)
		}
		for _, c := range certs {
			if !isSelfSigned(c) {
				chain = append(chain, c)
			}
		}
	}
	var roots struct {
		Crts []string `json:"crts"`
	}
	if err := s.call(ctx, http.MethodGet, s.base.JoinPath("/roots").String(), nil, &roots); err != nil {
		return nil, err
	}
	out := &Signed{Chain: chain}
	for _, p := range roots.Crts {
		certs, err := decodeCerts(p)
		if err != nil {
			return nil, fmt.Errorf("step-ca's roots: %w", err)
		}
		out.Roots = append(out.Roots, certs...)
	}
	return out, nil
}

// token makes a JWK provisioner one-time token for the sign endpoint.
func (s *StepCA) token(csr *x509.CertificateRequest, aud string) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: s.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.key.KeyID))
	if err != nil {
		return "", fmt.Errorf("provisioner key: %w", err)
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	sans := make([]string, 0, len(csr.URIs))
	for _, u := range csr.URIs {
		sans = append(sans, u.String())
	}
	now := s.cfg.Clock()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer:    s.cfg.Provisioner,
		Subject:   csr.Subject.CommonName,
		Audience:  jwt.Audience{aud},
		NotBefore: jwt.NewNumericDate(now),
		IssuedAt:  jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(tokenTTL)),
		ID:        hex.EncodeToString(jti),
	}).Claims(map[string]any{"sans": sans}).Serialize()
	if err != nil {
		return "", fmt.Errorf("signing the one-time token: %w", err)
	}
	return tok, nil
}

// call does one request and decodes a JSON answer; a non-2xx answer becomes an error with
// step-ca's message.
func (s *StepCA) call(ctx context.Context, method, u string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(data, &e)
		if e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		return fmt.Errorf("%s %s: step-ca answered %s: %s", method, u, resp.Status, e.Message)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, u, err)
	}
	return nil
}
