package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/ownership"
)

const stateVersion = 1

// fileState is the on-disk form of a snapshot. PEM rather than base64 DER so that an
// operator can inspect it with jq and openssl.
type fileState struct {
	Version        int             `json:"version"`
	TrustDomain    string          `json:"trust_domain"`
	BundleSequence uint64          `json:"bundle_sequence"`
	Authorities    []fileAuthority `json:"authorities"`
}

type fileAuthority struct {
	State       State  `json:"state"`
	Certificate string `json:"certificate"`
	// PrivateKey is PKCS#8 PEM; absent for old authorities, which never sign again.
	PrivateKey string `json:"private_key,omitempty"`
	// JWTKeyID, JWTPublicKey (PKIX PEM) and JWTPrivateKey (PKCS#8 PEM, absent for old
	// authorities) are the authority's JWT-SVID signing key. All three are absent in files
	// written before JWT-SVIDs existed; New then generates keys for the authorities that
	// still sign.
	JWTKeyID      string `json:"jwt_key_id,omitempty"`
	JWTPublicKey  string `json:"jwt_public_key,omitempty"`
	JWTPrivateKey string `json:"jwt_private_key,omitempty"`
	// UpstreamChain (the upstream intermediates above Certificate, never a root) and
	// UpstreamRoots (the roots it chains to) are set, as PEM, when an upstream signed
	// Certificate; both absent for a self-signed authority.
	UpstreamChain string `json:"upstream_chain,omitempty"`
	UpstreamRoots string `json:"upstream_roots,omitempty"`
}

// maxKeyIDLen bounds a kid read from the state file; ours are 32 hex digits.
const maxKeyIDLen = 128

// loadState reads and verifies the state file, returning its authorities and bundle
// sequence. A missing file yields an error matching fs.ErrNotExist; anything else wrong is an
// error naming the file, and the file is left as it is: a CA key is never silently replaced.
func loadState(path string, td spiffeid.TrustDomain) ([]*authority, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err // includes fs.ErrNotExist for the first start
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("CA state file %s: %w", path, err)
	}
	// It holds private keys: refuse it if anyone else may have read it (the mode), or
	// replaced it (its owner could have swapped in their own CA), as for every file svidd
	// trusts (pkg/ownership). The checks are on the open file, so they hold for what is read.
	if perm := fi.Mode().Perm(); fi.Mode().IsRegular() && perm&0o077 != 0 {
		return nil, 0, fmt.Errorf("CA state file %s has mode %04o: it must not be accessible by group or others (chmod 600 it after checking it was not tampered with)", path, perm)
	}
	if err := ownership.CheckFileInfo("CA state file", path, fi); err != nil {
		return nil, 0, err
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, 0, fmt.Errorf("reading CA state file %s: %w", path, err)
	}
	auths, seq, err := decodeState(buf.Bytes(), td)
	if err != nil {
		return nil, 0, fmt.Errorf("CA state file %s is invalid (refusing to replace it): %w", path, err)
	}
	return auths, seq, nil
}

func decodeState(data []byte, td spiffeid.TrustDomain) ([]*authority, uint64, error) {
	var st fileState
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, 0, fmt.Errorf("decoding JSON: %w", err)
	}
	if st.Version != stateVersion {
		return nil, 0, fmt.Errorf("unsupported version %d (want %d)", st.Version, stateVersion)
	}
	if st.TrustDomain != td.Name() {
		return nil, 0, fmt.Errorf("it belongs to trust domain %q, not the configured %q", st.TrustDomain, td.Name())
	}
	if st.BundleSequence == 0 {
		return nil, 0, errors.New("bundle_sequence is missing")
	}
	var auths []*authority
	count := map[State]int{}
	kids := map[string]int{}
	for i, fa := range st.Authorities {
		a, err := decodeAuthority(fa, td)
		if err != nil {
			return nil, 0, fmt.Errorf("authority %d: %w", i, err)
		}
		if a.jwt != nil {
			// A bundle maps kid to key: two keys under one kid would hide one of them.
			if j, dup := kids[a.jwt.kid]; dup {
				return nil, 0, fmt.Errorf("authorities %d and %d have the same JWT key ID %q", j, i, a.jwt.kid)
			}
			kids[a.jwt.kid] = i
		}
		count[a.state]++
		auths = append(auths, a)
	}
	if count[StateActive] != 1 {
		return nil, 0, fmt.Errorf("%d active authorities (want exactly 1)", count[StateActive])
	}
	if count[StatePrepared] > 1 {
		return nil, 0, fmt.Errorf("%d prepared authorities (want at most 1)", count[StatePrepared])
	}
	return auths, st.BundleSequence, nil
}

func decodeAuthority(fa fileAuthority, td spiffeid.TrustDomain) (*authority, error) {
	switch fa.State {
	case StateActive, StatePrepared, StateOld:
	default:
		return nil, fmt.Errorf("unknown state %q", fa.State)
	}
	der, err := decodePEM([]byte(fa.Certificate), "CERTIFICATE")
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate: %w", err)
	}
	a := &authority{state: fa.State, cert: cert}
	if fa.UpstreamRoots == "" {
		if fa.UpstreamChain != "" {
			return nil, errors.New("upstream chain without upstream roots")
		}
		if err := checkCACert(cert, td); err != nil {
			return nil, err
		}
	} else {
		if a.chain, err = decodeCerts(fa.UpstreamChain); err != nil {
			return nil, fmt.Errorf("upstream chain: %w", err)
		}
		if a.roots, err = decodeCerts(fa.UpstreamRoots); err != nil {
			return nil, fmt.Errorf("upstream roots: %w", err)
		}
		if len(a.roots) == 0 {
			return nil, errors.New("upstream roots are empty")
		}
		// Checked as of its own start: an expired one is still a valid state to load (it is
		// pruned or replaced next).
		if err := checkUpstreamAuthority(a, td, cert.NotBefore); err != nil {
			return nil, err
		}
	}
	if a.jwt, err = decodeJWTKey(fa); err != nil {
		return nil, err
	}
	if fa.State == StateOld {
		return a, nil
	}
	if fa.PrivateKey == "" {
		return nil, fmt.Errorf("%s authority has no private key", fa.State)
	}
	signer, err := decodePrivateKey(fa.PrivateKey, cert.PublicKey)
	if err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, errors.New("private key does not match the certificate")
	}
	a.signer = signer
	return a, nil
}

// decodeJWTKey reads an authority's JWT key: nil if the file has none (written before
// JWT-SVIDs existed), public only for an old authority.
func decodeJWTKey(fa fileAuthority) (*jwtKey, error) {
	if fa.JWTKeyID == "" {
		if fa.JWTPublicKey != "" || fa.JWTPrivateKey != "" {
			return nil, errors.New("JWT key without a key ID")
		}
		return nil, nil
	}
	if len(fa.JWTKeyID) > maxKeyIDLen || strings.ContainsFunc(fa.JWTKeyID, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return nil, fmt.Errorf("JWT key ID %q is not up to %d printable ASCII characters", fa.JWTKeyID, maxKeyIDLen)
	}
	if fa.JWTPublicKey == "" {
		return nil, errors.New("JWT key has no public key")
	}
	der, err := decodePEM([]byte(fa.JWTPublicKey), "PUBLIC KEY")
	if err != nil {
		return nil, fmt.Errorf("JWT public key: %w", err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parsing JWT public key: %w", err)
	}
	if _, err := jwtAlgorithm(pub); err != nil {
		return nil, err
	}
	k := &jwtKey{kid: fa.JWTKeyID, pub: pub}
	if fa.State == StateOld {
		return k, nil // an old authority's JWT key never signs again
	}
	if fa.JWTPrivateKey == "" {
		return nil, fmt.Errorf("%s authority has no JWT private key", fa.State)
	}
	if k.signer, err = decodePrivateKey(fa.JWTPrivateKey, pub); err != nil {
		return nil, fmt.Errorf("JWT key: %w", err)
	}
	if k.signer == nil {
		return nil, errors.New("JWT private key does not match the JWT public key")
	}
	return k, nil
}

// decodePrivateKey parses a PKCS#8 PEM key; it returns nil, nil if the key is valid but its
// public part is not want.
func decodePrivateKey(p string, want crypto.PublicKey) (crypto.Signer, error) {
	kder, err := decodePEM([]byte(p), "PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kder)
	if err != nil {
		return nil, fmt.Errorf("parsing private key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(want) {
		return nil, nil
	}
	return signer, nil
}

// checkCACert verifies that cert is one of our roots: a self-signed signing certificate
// whose only URI SAN is the trust domain's ID.
func checkCACert(cert *x509.Certificate, td spiffeid.TrustDomain) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return errors.New("certificate is not a CA")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("certificate lacks keyCertSign")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != td.IDString() {
		return fmt.Errorf("certificate is not a CA for trust domain %q (URI SANs %v)", td.Name(), cert.URIs)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return fmt.Errorf("certificate is not validly self-signed: %w", err)
	}
	if !cert.NotAfter.After(cert.NotBefore) {
		return errors.New("certificate has an empty validity period")
	}
	return nil
}

// decodeCerts parses zero or more PEM CERTIFICATE blocks and nothing else.
func decodeCerts(data string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(data)
	for len(bytes.TrimSpace(rest)) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("trailing data that is not PEM")
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block is %q, want \"CERTIFICATE\"", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func decodePEM(data []byte, typ string) ([]byte, error) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	if b.Type != typ {
		return nil, fmt.Errorf("PEM block is %q, want %q", b.Type, typ)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after PEM block")
	}
	return b.Bytes, nil
}

func encodeState(td spiffeid.TrustDomain, snap *snapshot) ([]byte, error) {
	st := fileState{Version: stateVersion, TrustDomain: td.Name(), BundleSequence: snap.sequence}
	for _, a := range snap.authorities {
		fa := fileAuthority{
			State:       a.state,
			Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw})),
		}
		if a.roots != nil {
			chain, _ := encodeChain(a.chain)
			roots, _ := encodeChain(a.roots)
			fa.UpstreamChain, fa.UpstreamRoots = string(chain), string(roots)
		}
		if a.state != StateOld {
			kder, err := x509.MarshalPKCS8PrivateKey(a.signer)
			if err != nil {
				return nil, fmt.Errorf("encoding CA key: %w", err)
			}
			fa.PrivateKey = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
		}
		if a.jwt != nil {
			pder, err := x509.MarshalPKIXPublicKey(a.jwt.pub)
			if err != nil {
				return nil, fmt.Errorf("encoding JWT public key: %w", err)
			}
			fa.JWTKeyID = a.jwt.kid
			fa.JWTPublicKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}))
			if a.state != StateOld {
				kder, err := x509.MarshalPKCS8PrivateKey(a.jwt.signer)
				if err != nil {
					return nil, fmt.Errorf("encoding JWT key: %w", err)
				}
				fa.JWTPrivateKey = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
			}
		}
		st.Authorities = append(st.Authorities, fa)
	}
	out, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// saveState writes the state atomically: a 0600 temp file in the same directory, fsync,
// rename over the old file, fsync the directory. A crash leaves either the old or the new
// state, never a torn one.
func saveState(path string, td spiffeid.TrustDomain, snap *snapshot) error {
	data, err := encodeState(td, snap)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // CreateTemp uses 0600
	if err != nil {
		return fmt.Errorf("writing CA state %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("writing CA state %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing CA state %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing CA state %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing CA state %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing CA state %s: %w", path, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing data dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing data dir %s: %w", dir, err)
	}
	return nil
}
