package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Upstream signs the host's CA certificates, making each host's CA an intermediate under a
// PKI the operator already runs (a root on disk, smallstep's step-ca; a Vault PKI mount could
// implement it too). The trust domain's X.509 bundle is then the upstream's roots, the same on
// every host, so workloads on different hosts verify each other.
//
// Implementations must be safe for concurrent use. The CA calls SignCA from its rotation only
// (never on a workload's request path), with a context that bounds the call.
type Upstream interface {
	// SignCA signs csr (DER), a request for a CA certificate whose only URI SAN is the trust
	// domain ID and whose subject names the host, valid for about ttl (an upstream may cap
	// it). It returns the signed certificate first, followed by any upstream intermediates up
	// to but not including a root, and the upstream's current roots (self-signed). The
	// caller owns the returned slices. The CA checks everything it gets back before use.
	SignCA(ctx context.Context, csr []byte, ttl time.Duration) (*Signed, error)
	// Name says which upstream this is ("disk", "step_ca"), for logs and status.
	Name() string
}

// Signed is an upstream's answer to SignCA.
type Signed struct {
	// Chain is the signed CA certificate, then the upstream intermediates (never a root).
	Chain []*x509.Certificate
	// Roots are the upstream's trust anchors: the trust domain's X.509 bundle.
	Roots []*x509.Certificate
}

// upstreamTimeout bounds one SignCA call: a hung upstream must not hold the rotation lock
// (svidctl ca prepare waits on it) for long.
const upstreamTimeout = 30 * time.Second

// UpstreamStatus is the state of the CA's upstream, for svidctl status.
type UpstreamStatus struct {
	Name string
	// LastSuccess is when the upstream last signed a CA this host uses.
	LastSuccess time.Time
	// Failures counts failed signings since the last success; LastError and LastFailure
	// describe the newest.
	Failures    int
	LastError   string
	LastFailure time.Time
}

// upstreamState records upstream outcomes; separate from the snapshot because failures change
// nothing a workload sees.
type upstreamState struct {
	mu sync.Mutex
	st UpstreamStatus
}

// UpstreamStatus returns the upstream's state; ok is false without an upstream.
func (c *CA) UpstreamStatus() (st UpstreamStatus, ok bool) {
	if c.cfg.Upstream == nil {
		return UpstreamStatus{}, false
	}
	c.upstream.mu.Lock()
	defer c.upstream.mu.Unlock()
	return c.upstream.st, true
}

func (c *CA) upstreamFailed(err error, now time.Time) {
	c.upstream.mu.Lock()
	c.upstream.st.Failures++
	c.upstream.st.LastError = err.Error()
	c.upstream.st.LastFailure = now
	n := c.upstream.st.Failures
	c.upstream.mu.Unlock()
	c.log.Error("upstream failed to sign a CA; the active CA keeps signing until it expires",
		"upstream", c.cfg.Upstream.Name(), "consecutive_failures", n, "error", err)
	if c.cfg.OnUpstreamError != nil {
		c.cfg.OnUpstreamError(err)
	}
}

func (c *CA) upstreamSucceeded(now time.Time) {
	c.upstream.mu.Lock()
	defer c.upstream.mu.Unlock()
	c.upstream.st.Failures = 0
	c.upstream.st.LastSuccess = now
}

// newUpstreamAuthority generates a fresh key, has the upstream sign a CA certificate for it
// and checks the result by minting a throwaway SVID and verifying it against the upstream's
// roots, as a workload on another host would. Nothing is used that fails the check.
func (c *CA) newUpstreamAuthority(st State, now time.Time) (*authority, error) {
	a, err := c.signUpstream(st, now)
	if err != nil {
		err = fmt.Errorf("upstream %s: %w", c.cfg.Upstream.Name(), err)
		c.upstreamFailed(err, now)
		return nil, err
	}
	c.upstreamSucceeded(now)
	c.log.Info("upstream signed a CA", "upstream", c.cfg.Upstream.Name(), "state", st,
		"subject", a.cert.Subject.String(), "issuer", a.cert.Issuer.String(), "not_after", a.cert.NotAfter,
		"chain", len(a.chain), "roots", len(a.roots))
	return a, nil
}

func (c *CA) signUpstream(st State, now time.Time) (*authority, error) {
	key, err := generateKey(c.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		// The host's name in the subject lets an operator tell in the upstream's logs (and in
		// any SVID's chain) which host a CA belongs to.
		Subject: pkix.Name{Organization: []string{"SPIFFE"}, CommonName: c.cfg.NodeName},
		// The trust domain ID, no path, as the only URI SAN (X509-SVID §3.2).
		URIs: []*url.URL{c.td.ID().URL()},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("creating CSR: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), upstreamTimeout)
	defer cancel()
	signed, err := c.cfg.Upstream.SignCA(ctx, csr, c.cfg.CATTL)
	if err != nil {
		return nil, err
	}
	if len(signed.Chain) == 0 {
		return nil, errors.New("returned no certificate")
	}
	cert := signed.Chain[0]
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("returned a certificate for another key")
	}
	a := &authority{state: st, cert: cert, signer: key, chain: slices.Clone(signed.Chain[1:]), roots: sortRoots(signed.Roots)}
	if err := checkUpstreamAuthority(a, c.td, now); err != nil {
		return nil, fmt.Errorf("refusing the CA certificate it signed: %w", err)
	}
	// Mint a throwaway SVID and verify it as a peer would: this catches what the field
	// checks miss (a chain that does not link up, a name constraint, an expired link).
	probe, err := c.mintWith(a, spiffeid.RequireFromPath(c.td, "/svidd/upstream-check"), min(time.Minute, lifetime(a)/6), nil, now)
	if err != nil {
		return nil, fmt.Errorf("minting a test SVID with the new CA: %w", err)
	}
	if _, _, err := x509svid.Verify(probe.Certificates, x509bundle.FromX509Authorities(c.td, a.roots), x509svid.WithTime(now)); err != nil {
		return nil, fmt.Errorf("refusing the CA certificate it signed: an SVID it signs does not verify against the upstream's roots: %w", err)
	}
	if a.jwt, err = newJWTKey(c.cfg.KeyType); err != nil {
		return nil, err
	}
	return a, nil
}

// checkUpstreamAuthority checks an upstream-signed CA before use or after loading: a signing
// certificate for the trust domain, a chain to a root, and room under every pathLen
// constraint above it for the host CA (a pathLen-0 upstream intermediate can sign our CA, but
// then no verifier accepts the SVIDs our CA signs).
func checkUpstreamAuthority(a *authority, td spiffeid.TrustDomain, now time.Time) error {
	cert := a.cert
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return errors.New("certificate is not a CA (basicConstraints cA=false); the upstream must issue CA certificates")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("certificate lacks the keyCertSign key usage")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != td.IDString() {
		return fmt.Errorf("certificate's URI SANs are %v, want exactly %s", cert.URIs, td.IDString())
	}
	if len(a.roots) == 0 {
		return errors.New("upstream gave no roots")
	}
	for _, r := range a.roots {
		if err := r.CheckSignatureFrom(r); err != nil || !bytes.Equal(r.RawIssuer, r.RawSubject) {
			return fmt.Errorf("root %q is not self-signed", r.Subject)
		}
	}
	// above lists the certificates over ours, nearest first, ending at the root that signed
	// the last of them.
	above := slices.Clone(a.chain)
	top := cert
	if len(above) > 0 {
		top = above[len(above)-1]
	}
	var root *x509.Certificate
	for _, r := range a.roots {
		if top.CheckSignatureFrom(r) == nil {
			root = r
			break
		}
	}
	if root == nil {
		return fmt.Errorf("certificate chain ends at %q, which no upstream root signed", top.Issuer)
	}
	if !bytes.Equal(top.Raw, root.Raw) {
		above = append(above, root)
	}
	child := cert
	for i, p := range above {
		if err := child.CheckSignatureFrom(p); err != nil {
			return fmt.Errorf("%q is not signed by the next certificate in the chain, %q: %w", child.Subject, p.Subject, err)
		}
		// i+1 CA certificates (ours and the intermediates between) sit under p.
		if p.MaxPathLen >= 0 && p.BasicConstraintsValid && p.MaxPathLen < i+1 {
			return fmt.Errorf("upstream CA %q has pathLenConstraint %d: it leaves no room for a CA under it, and SVIDs signed there would fail every verifier; issue it with a pathLen of at least %d (or none)",
				p.Subject, p.MaxPathLen, i+1)
		}
		child = p
	}
	if !now.Before(cert.NotAfter) {
		return fmt.Errorf("certificate expired at %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// sortRoots dedups roots and orders them by NotBefore, then bytes: every host that got the
// same roots publishes the same bundle bytes, whatever order its upstream listed them in.
func sortRoots(roots []*x509.Certificate) []*x509.Certificate {
	out := slices.Clone(roots)
	slices.SortFunc(out, func(a, b *x509.Certificate) int {
		if c := a.NotBefore.Compare(b.NotBefore); c != 0 {
			return c
		}
		return bytes.Compare(a.Raw, b.Raw)
	})
	return slices.CompactFunc(out, func(a, b *x509.Certificate) bool { return bytes.Equal(a.Raw, b.Raw) })
}

// bundleCerts is the X.509 bundle of auths: with an upstream, the union of the roots each
// authority was signed under (so a root the upstream has dropped stays until the CAs it
// signed expire); a self-signed authority is its own root.
func bundleCerts(auths []*authority) []*x509.Certificate {
	var own, roots []*x509.Certificate
	for _, a := range auths {
		if a.roots == nil {
			own = append(own, a.cert)
			continue
		}
		roots = append(roots, a.roots...)
	}
	return append(own, sortRoots(roots)...)
}

// backoff spaces retries of a failed rotation step: exponential from 1 s to 5 min with equal
// jitter, so a fleet whose upstream comes back does not call it in lockstep.
type backoff struct{ n int }

const (
	backoffMin = time.Second
	backoffMax = 5 * time.Minute
)

func (b *backoff) next() time.Duration {
	d := backoffMax
	if b.n < 20 {
		d = min(backoffMax, backoffMin<<b.n)
	}
	b.n++
	return d/2 + randDuration(d/2)
}

func (b *backoff) reset() { b.n = 0 }

func randDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return mrand.N(d)
}
