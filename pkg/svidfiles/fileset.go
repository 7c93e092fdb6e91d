package svidfiles

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FileSet is one generation's content, PEM and JSON as written to disk.
type FileSet struct {
	// SVID is the X509-SVID chain, leaf first, PEM (svid.pem).
	SVID []byte
	// Key is the SVID's private key, PKCS#8 PEM (svid_key.pem).
	Key []byte
	// Bundle is the trust bundle: the own trust domain's roots, then federated ones, PEM
	// (bundle.pem).
	Bundle []byte
	// JWTSVID (jwt_svid.token) and JWTBundle (jwt_bundle.json) are optional; nil means the
	// file is not written (and absent when read).
	JWTSVID   []byte
	JWTBundle []byte
}

func (s FileSet) validate() error {
	switch {
	case len(s.SVID) == 0:
		return errors.New("file set has no SVID")
	case len(s.Key) == 0:
		return errors.New("file set has no private key")
	case len(s.Bundle) == 0:
		return errors.New("file set has no trust bundle")
	}
	// Never publish a pair no TLS stack would load.
	if _, err := tls.X509KeyPair(s.SVID, s.Key); err != nil {
		return fmt.Errorf("SVID and key do not form a key pair: %w", err)
	}
	return nil
}

// files lists the generation's files with their modes; optional empty files are left out.
func (s FileSet) files() []genFile {
	fs := []genFile{{SVIDFile, s.SVID, fileMode}, {KeyFile, s.Key, keyMode}, {BundleFile, s.Bundle, fileMode}}
	if s.JWTSVID != nil {
		// A JWT-SVID is a bearer credential: as secret as the key.
		fs = append(fs, genFile{JWTSVIDFile, s.JWTSVID, keyMode})
	}
	if s.JWTBundle != nil {
		fs = append(fs, genFile{JWTBundleFile, s.JWTBundle, fileMode})
	}
	return fs
}

type genFile struct {
	name string
	data []byte
	mode fs.FileMode
}

// FromX509SVID builds the X.509 part of a FileSet from what the Workload API returned: svid's
// chain and key, and the roots of every bundle, svid's own trust domain first (then the others
// by name), so a reader that takes only the first certificates still gets its own roots.
func FromX509SVID(svid *x509svid.SVID, bundles *x509bundle.Set) (FileSet, error) {
	chain, key, err := svid.Marshal()
	if err != nil {
		return FileSet{}, fmt.Errorf("encoding X509-SVID %s: %w", svid.ID, err)
	}
	own := svid.ID.TrustDomain()
	var roots []byte
	if b, ok := bundles.Get(own); ok {
		pem, err := b.Marshal()
		if err != nil {
			return FileSet{}, fmt.Errorf("encoding bundle of %s: %w", own, err)
		}
		roots = append(roots, pem...)
	} else {
		return FileSet{}, fmt.Errorf("no bundle for the SVID's own trust domain %s", own)
	}
	for _, b := range bundles.Bundles() {
		if b.TrustDomain() == own {
			continue
		}
		pem, err := b.Marshal()
		if err != nil {
			return FileSet{}, fmt.Errorf("encoding bundle of %s: %w", b.TrustDomain(), err)
		}
		roots = append(roots, pem...)
	}
	return FileSet{SVID: chain, Key: key, Bundle: roots}, nil
}

// JWTBundleJSON encodes JWT bundles as jwt_bundle.json: an object mapping each trust domain
// name to its JWKS document, {"example.org": {"keys": [...]}, ...}.
func JWTBundleJSON(set *jwtbundle.Set) ([]byte, error) {
	m := map[string]json.RawMessage{}
	for _, b := range set.Bundles() {
		jwks, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("encoding JWT bundle of %s: %w", b.TrustDomain(), err)
		}
		m[b.TrustDomain().Name()] = jwks
	}
	out, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding JWT bundles: %w", err)
	}
	return append(out, '\n'), nil
}
