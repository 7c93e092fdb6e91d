package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	gofed "github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/svidd/svidd/pkg/workload"
)

// Bundle endpoint profiles (SPIFFE Federation §5.2).
const (
	// ProfileHTTPSSPIFFE: the endpoint serves with an X509-SVID of its trust domain; a client
	// authenticates it by SPIFFE ID against a bundle it already holds.
	ProfileHTTPSSPIFFE = "https_spiffe"
	// ProfileHTTPSWeb: the endpoint serves with a Web PKI certificate; a client authenticates
	// it with its ordinary root store.
	ProfileHTTPSWeb = "https_web"
)

// EndpointIDPath is the path of the SPIFFE ID an https_spiffe bundle endpoint of svidd serves
// with: spiffe://TRUST_DOMAIN/svidd/bundle-endpoint. Peers configure it as their
// endpoint_spiffe_id. The SVID is minted by the agent's own CA and never served to a
// workload; an entry for the same ID is possible but pointless.
const EndpointIDPath = "/svidd/bundle-endpoint"

// EndpointID is the SPIFFE ID an https_spiffe endpoint of td serves with.
func EndpointID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, EndpointIDPath)
}

// SVIDMinter mints the https_spiffe endpoint's serving SVID; *ca.CA satisfies it.
type SVIDMinter interface {
	MintX509SVID(id spiffeid.ID, ttl time.Duration, dnsNames []string) (*workload.SVID, error)
}

// EndpointConfig configures a bundle endpoint.
type EndpointConfig struct {
	TrustDomain spiffeid.TrustDomain
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile string
	// RefreshHint is published as spiffe_refresh_hint (positive).
	RefreshHint time.Duration
	// Bundle returns the trust domain's current bundle (the CA's, which holds a prepared CA
	// before it signs anything: new keys are published before use, as §4.1 requires).
	Bundle func() *workload.Bundle
	// Minter mints the serving SVID (https_spiffe only).
	Minter SVIDMinter
	// CertFile and KeyFile hold the serving certificate chain and key, PEM (https_web only).
	// They are re-read when they change, so a renewed certificate needs no restart.
	CertFile, KeyFile string
	Logger            *slog.Logger
}

// Endpoint serves a trust domain's bundle over HTTPS to federated peers. It answers GET on
// any path with the bundle document, requires no client certificate (§5.2), and holds no
// secret beyond its serving key.
type Endpoint struct {
	cfg EndpointConfig
	log *slog.Logger
	// svid is the https_spiffe serving SVID; web the https_web certificate as last loaded.
	svid atomic.Pointer[x509svid.SVID]
	web  webCert
}

// NewEndpoint checks cfg. It starts nothing; Serve does.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("bundle endpoint: trust domain is required")
	case cfg.Bundle == nil:
		return nil, errors.New("bundle endpoint: Bundle is required")
	case cfg.RefreshHint <= 0:
		return nil, errors.New("bundle endpoint: refresh hint must be positive")
	}
	e := &Endpoint{cfg: cfg, log: cfg.Logger.With("component", "bundle_endpoint")}
	switch cfg.Profile {
	case ProfileHTTPSSPIFFE:
		if cfg.Minter == nil {
			return nil, errors.New("bundle endpoint: https_spiffe needs a minter")
		}
	case ProfileHTTPSWeb:
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, errors.New("bundle endpoint: https_web needs cert_file and key_file")
		}
		e.web = webCert{certFile: cfg.CertFile, keyFile: cfg.KeyFile, log: e.log}
		if _, err := e.web.load(); err != nil {
			return nil, fmt.Errorf("bundle endpoint: %w", err)
		}
	default:
		return nil, fmt.Errorf("bundle endpoint: profile %q is not %s or %s", cfg.Profile, ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	}
	return e, nil
}

// Serve answers on ln until ctx is done. For https_spiffe it mints the serving SVID first and
// replaces it at half its lifetime.
func (e *Endpoint) Serve(ctx context.Context, ln net.Listener) error {
	var tlsCfg *tls.Config
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	switch e.cfg.Profile {
	case ProfileHTTPSSPIFFE:
		next, err := e.mint()
		if err != nil {
			ln.Close()
			return err
		}
		wg.Go(func() { e.rotate(ctx, next) })
		tlsCfg = tlsconfig.TLSServerConfig(svidSource{e})
	case ProfileHTTPSWeb:
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: e.web.get}
	}
	h, err := gofed.NewHandler(e.cfg.TrustDomain, bundleSource{e}, gofed.WithLogger(goSpiffeLogger{e.log}))
	if err != nil {
		ln.Close()
		return fmt.Errorf("bundle endpoint: %w", err)
	}
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug), // TLS noise from scanners
	}
	e.log.Info("bundle endpoint serving", "address", ln.Addr().String(), "profile", e.cfg.Profile,
		"trust_domain", e.cfg.TrustDomain.Name(), "refresh_hint", e.cfg.RefreshHint)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(tls.NewListener(ln, tlsCfg)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("bundle endpoint: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-errc
	return nil
}

// bundleSource hands the current bundle to go-spiffe's handler, with our refresh hint.
type bundleSource struct{ e *Endpoint }

func (s bundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	b := s.e.cfg.Bundle()
	if b == nil || td != s.e.cfg.TrustDomain {
		return nil, fmt.Errorf("no bundle for %s", td.Name())
	}
	return FromWorkload(b, s.e.cfg.RefreshHint)
}

// svidSource hands the current serving SVID to go-spiffe's TLS configuration.
type svidSource struct{ e *Endpoint }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) {
	if v := s.e.svid.Load(); v != nil {
		return v, nil
	}
	return nil, errors.New("no serving SVID yet")
}

// mint replaces the serving SVID and returns when the next one is due: at half its lifetime.
func (e *Endpoint) mint() (time.Time, error) {
	id := EndpointID(e.cfg.TrustDomain)
	s, err := e.cfg.Minter.MintX509SVID(id, 0, nil)
	if err != nil {
		return time.Time{}, fmt.Errorf("bundle endpoint: minting its SVID %s: %w", id, err)
	}
	e.svid.Store(&x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: s.PrivateKey})
	e.log.Debug("bundle endpoint SVID minted", "spiffe_id", id.String(), "serial", s.Serial, "not_after", s.NotAfter)
	return s.NotBefore.Add(s.NotAfter.Sub(s.NotBefore) / 2), nil
}

// rotate re-mints the serving SVID at next, and again at half each new one's lifetime. A
// failed mint is retried soon; the current SVID serves meanwhile.
func (e *Endpoint) rotate(ctx context.Context, next time.Time) {
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := e.mint()
		if err != nil {
			e.log.Error("renewing the bundle endpoint's SVID failed; retrying", "error", err)
			n = time.Now().Add(5 * time.Second)
		}
		t.Reset(time.Until(n))
	}
}

// webCert is the https_web serving certificate, re-read when its files change (checked at
// most once a second, on a handshake). A file that fails to load leaves the last good
// certificate in use and is reported once per change.
type webCert struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp
	checked time.Time
	lastErr string
}

type fileStamp struct {
	size    int64
	modTime time.Time
	ino     uint64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: fi.Size(), modTime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino // a file replaced by rename has a new inode, maybe the same size and mtime
	}
	return st, nil
}

// load reads both files; it keeps the result only if they parse as a matching pair.
func (w *webCert) load() (*tls.Certificate, error) {
	cs, err := stampOf(w.certFile)
	if err != nil {
		return nil, fmt.Errorf("https_web certificate: %w", err)
	}
	ks, err := stampOf(w.keyFile)
	if err != nil {
		return nil, fmt.Errorf("https_web key: %w", err)
	}
	certPEM, err := os.ReadFile(w.certFile)
	if err != nil {
		return nil, fmt.Errorf("https_web certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(w.keyFile)
	if err != nil {
		return nil, fmt.Errorf("https_web key: %w", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("https_web certificate %s and key %s: %w", w.certFile, w.keyFile, err)
	}
	w.mu.Lock()
	w.cert, w.stamp = &c, [2]fileStamp{cs, ks}
	w.mu.Unlock()
	return &c, nil
}

func (w *webCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	w.mu.Lock()
	cur, stamp := w.cert, w.stamp
	due := time.Since(w.checked) >= time.Second
	if due {
		w.checked = time.Now()
	}
	w.mu.Unlock()
	if !due {
		return cur, nil
	}
	cs, err1 := stampOf(w.certFile)
	ks, err2 := stampOf(w.keyFile)
	if err1 == nil && err2 == nil && cs == stamp[0] && ks == stamp[1] {
		return cur, nil
	}
	c, err := w.load()
	if err == nil {
		w.log.Info("bundle endpoint certificate reloaded", "cert_file", w.certFile, "not_after", c.Leaf.NotAfter)
		w.mu.Lock()
		w.lastErr = ""
		w.mu.Unlock()
		return c, nil
	}
	w.mu.Lock()
	report := err.Error() != w.lastErr
	w.lastErr = err.Error()
	w.mu.Unlock()
	if report {
		w.log.Error("reloading the bundle endpoint certificate failed; serving the last good one", "error", err)
	}
	return cur, nil
}

// goSpiffeLogger passes go-spiffe's log lines to slog.
type goSpiffeLogger struct{ l *slog.Logger }

func (g goSpiffeLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...)) }
func (g goSpiffeLogger) Infof(f string, a ...any)  { g.l.Info(fmt.Sprintf(f, a...)) }
func (g goSpiffeLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...)) }
func (g goSpiffeLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...)) }
