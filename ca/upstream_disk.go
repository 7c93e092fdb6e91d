package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DiskConfig configures the disk upstream: an upstream CA certificate and key in files, as an
// offline root or an intermediate an operator copies to each host.
type DiskConfig struct {
	// CertFile holds the upstream CA certificate (PEM) that signs the host CAs, optionally
	// followed by the intermediates above it; a root among them is dropped.
	CertFile string
	// KeyFile holds its private key (PEM: PKCS#8, SEC 1 EC or PKCS#1 RSA).
	KeyFile string
	// BundleFile holds the roots (PEM). Optional when CertFile's certificate is itself a
	// self-signed root, which is then the only root.
	BundleFile string
	Clock      func() time.Time
	Logger     *slog.Logger
}

// Disk is the disk upstream. The files are re-read at every signing, so replacing them (a new
// upstream intermediate, a root added to the bundle) takes effect at the next CA rotation
// without a restart; if a read fails the last good copy is used, and the failure logged.
type Disk struct {
	cfg DiskConfig
	log *slog.Logger

	mu   sync.Mutex
	last *diskFiles
}

var _ Upstream = (*Disk)(nil)

// diskFiles is one good reading of the files.
type diskFiles struct {
	cert   *x509.Certificate
	chain  []*x509.Certificate // intermediates above cert, no root
	signer crypto.Signer
	roots  []*x509.Certificate
}

// NewDisk reads and checks the files once, so a mistake is reported when svidd starts rather
// than at the first rotation.
func NewDisk(cfg DiskConfig) (*Disk, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("disk upstream: cert_file and key_file are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Disk{cfg: cfg, log: cfg.Logger.With("component", "ca", "upstream", "disk")}
	f, err := d.read()
	if err != nil {
		return nil, fmt.Errorf("disk upstream: %w", err)
	}
	d.last = f
	return d, nil
}

// Name implements Upstream.
func (d *Disk) Name() string { return "disk" }

// files re-reads the files, falling back to the last good copy.
func (d *Disk) files() (*diskFiles, error) {
	f, err := d.read()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if d.last == nil {
			return nil, err
		}
		d.log.Warn("reading the upstream files failed; using the last good copy", "error", err)
		return d.last, nil
	}
	d.last = f
	return f, nil
}

func (d *Disk) read() (*diskFiles, error) {
	certs, err := readCerts(d.cfg.CertFile)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", d.cfg.CertFile)
	}
	f := &diskFiles{cert: certs[0]}
	for _, c := range certs[1:] {
		if !isSelfSigned(c) {
			f.chain = append(f.chain, c)
		}
	}
	if f.signer, err = readKey(d.cfg.KeyFile, f.cert.PublicKey); err != nil {
		return nil, err
	}
	switch {
	case d.cfg.BundleFile != "":
		if f.roots, err = readCerts(d.cfg.BundleFile); err != nil {
			return nil, err
		}
		if len(f.roots) == 0 {
			return nil, fmt.Errorf("%s holds no certificate", d.cfg.BundleFile)
		}
	case isSelfSigned(f.cert):
		f.roots = []*x509.Certificate{f.cert}
	default:
		return nil, fmt.Errorf("%s is not a self-signed root, so bundle_file (the roots it chains to) is required", d.cfg.CertFile)
	}
	c := f.cert
	if !c.BasicConstraintsValid || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s: %q is not a CA certificate with keyCertSign", d.cfg.CertFile, c.Subject)
	}
	if c.MaxPathLen == 0 && c.MaxPathLenZero {
		return nil, fmt.Errorf("%s: %q has pathLenConstraint 0, so the host CAs it would sign could not sign SVIDs that any verifier accepts; issue it with a pathLen of at least 1 (or none)", d.cfg.CertFile, c.Subject)
	}
	if now := d.cfg.Clock(); !now.Before(c.NotAfter) {
		return nil, fmt.Errorf("%s: %q expired at %s", d.cfg.CertFile, c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return f, nil
}

// SignCA implements Upstream: the host CA gets the CSR's subject and URI SAN, cA=true with
// pathLen 0 (it signs only leaves), keyCertSign and cRLSign, and a lifetime capped at the
// upstream certificate's.
func (d *Disk) SignCA(_ context.Context, csrDER []byte, ttl time.Duration) (*Signed, error) {
	f, err := d.files()
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parsing CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := d.cfg.Clock()
	notAfter := now.Add(ttl)
	if notAfter.After(f.cert.NotAfter) {
		notAfter = f.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               csr.Subject,
		NotBefore:             now.Add(-min(backdate, ttl/10)),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		URIs:                  csr.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.cert, csr.PublicKey, f.signer)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	chain := []*x509.Certificate{cert}
	if !isSelfSigned(f.cert) {
		chain = append(chain, f.cert)
	}
	return &Signed{Chain: append(chain, f.chain...), Roots: f.roots}, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := decodeCerts(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// readKey reads a PEM private key and checks it belongs to pub.
func readKey(path string, pub crypto.PublicKey) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var k any
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%s: PEM block %q is not a private key", path, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key of type %T cannot sign", path, k)
	}
	if p, ok := s.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !p.Equal(pub) {
		return nil, fmt.Errorf("%s: the key does not match the certificate", path)
	}
	return s, nil
}
