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
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
}

// loadState reads and verifies the state file. A missing file yields an error matching
// fs.ErrNotExist; anything else wrong is an error naming the file, and the file is left as
// it is: a CA key is never silently replaced.
func loadState(path string, td spiffeid.TrustDomain) (*snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // includes fs.ErrNotExist for the first start
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("CA state file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("CA state file %s is not a regular file", path)
	}
	// It holds private keys: refuse it if anyone else may have read or replaced it.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("CA state file %s has mode %04o: it must not be accessible by group or others (chmod 600 it after checking it was not tampered with)", path, perm)
	}
	// Whoever owns it could have swapped in their own CA: it must be ours.
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("CA state file %s is owned by uid %d, not by this process (uid %d)", path, sys.Uid, os.Geteuid())
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("reading CA state file %s: %w", path, err)
	}
	snap, err := decodeState(buf.Bytes(), td)
	if err != nil {
		return nil, fmt.Errorf("CA state file %s is invalid (refusing to replace it): %w", path, err)
	}
	return snap, nil
}

func decodeState(data []byte, td spiffeid.TrustDomain) (*snapshot, error) {
	var st fileState
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("decoding JSON: %w", err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("unsupported version %d (want %d)", st.Version, stateVersion)
	}
	if st.TrustDomain != td.Name() {
		return nil, fmt.Errorf("it belongs to trust domain %q, not the configured %q", st.TrustDomain, td.Name())
	}
	if st.BundleSequence == 0 {
		return nil, errors.New("bundle_sequence is missing")
	}
	var auths []*authority
	count := map[State]int{}
	for i, fa := range st.Authorities {
		a, err := decodeAuthority(fa, td)
		if err != nil {
			return nil, fmt.Errorf("authority %d: %w", i, err)
		}
		count[a.state]++
		auths = append(auths, a)
	}
	if count[StateActive] != 1 {
		return nil, fmt.Errorf("%d active authorities (want exactly 1)", count[StateActive])
	}
	if count[StatePrepared] > 1 {
		return nil, fmt.Errorf("%d prepared authorities (want at most 1)", count[StatePrepared])
	}
	return newSnapshot(td, auths, st.BundleSequence), nil
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
	if err := checkCACert(cert, td); err != nil {
		return nil, err
	}
	a := &authority{state: fa.State, cert: cert}
	if fa.State == StateOld {
		return a, nil
	}
	if fa.PrivateKey == "" {
		return nil, fmt.Errorf("%s authority has no private key", fa.State)
	}
	kder, err := decodePEM([]byte(fa.PrivateKey), "PRIVATE KEY")
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
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("private key does not match the certificate")
	}
	a.signer = signer
	return a, nil
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
		if a.state != StateOld {
			kder, err := x509.MarshalPKCS8PrivateKey(a.signer)
			if err != nil {
				return nil, fmt.Errorf("encoding CA key: %w", err)
			}
			fa.PrivateKey = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
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
