package federation

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/svidd/svidd/pkg/store"
)

// Run fetches the bundles of the configured relationships that have an endpoint, each in its
// own goroutine, restarting them when Configure changes their relationship. It returns nil
// once ctx is done and every fetcher has stopped.
func (m *Manager) Run(ctx context.Context) error {
	type running struct {
		rel    Relationship
		cancel context.CancelFunc
	}
	var wg sync.WaitGroup
	active := map[spiffeid.TrustDomain]running{}
	defer func() {
		for _, r := range active {
			r.cancel()
		}
		wg.Wait()
	}()
	for {
		m.mu.Lock()
		want := make(map[spiffeid.TrustDomain]Relationship, len(m.rels))
		for td, r := range m.rels {
			if r.URL != "" {
				want[td] = r
			}
		}
		m.mu.Unlock()
		for td, r := range active {
			if w, ok := want[td]; !ok || w != r.rel {
				r.cancel()
				delete(active, td)
			}
		}
		for td, rel := range want {
			if _, ok := active[td]; ok {
				continue
			}
			fctx, cancel := context.WithCancel(ctx)
			active[td] = running{rel: rel, cancel: cancel}
			wg.Go(func() { m.watch(fctx, rel) })
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
		}
	}
}

// watch polls rel's endpoint until ctx is done; in a fleet (Share), only while this host is
// the trust domain's fetcher, or while it is cut off from the fleet (Sharing.Alone): a
// foreign CA's rotation during a registry outage must not be missed.
func (m *Manager) watch(ctx context.Context, rel Relationship) {
	if m.cfg.Share == nil {
		m.poll(ctx, rel)
		return
	}
	failures := 0
	for ctx.Err() == nil {
		if m.cfg.Share.Alone() {
			m.log.Warn("federation: the fleet registry is unreachable; this host fetches the bundle for itself until it is back", "trust_domain", rel.TrustDomain.Name())
			actx, stop := m.untilAlone(ctx, false)
			m.poll(actx, rel)
			stop()
			continue
		}
		sctx, stop := m.untilAlone(ctx, true)
		lead, resign, err := m.cfg.Share.Lead(sctx, rel.TrustDomain)
		if err != nil {
			stop()
			if ctx.Err() != nil {
				return
			}
			if sctx.Err() != nil {
				continue // cut off while waiting to lead: fetch alone
			}
			failures++
			if failures == 1 {
				m.log.Warn("federation: cannot take part in choosing the fleet's fetcher; retrying", "trust_domain", rel.TrustDomain.Name(), "error", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff(failures, 5*time.Second)):
			}
			continue
		}
		failures = 0
		m.log.Info("federation: this host fetches the bundle for the fleet", "trust_domain", rel.TrustDomain.Name())
		m.poll(lead, rel)
		resign()
		stop()
	}
}

// aloneCheck is how often a fleet host looks whether it is cut off from the registry (an
// in-process read of the registry's status).
const aloneCheck = time.Second

// untilAlone returns a context that ends with ctx or once Share.Alone() == alone.
func (m *Manager) untilAlone(ctx context.Context, alone bool) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(aloneCheck)
		defer t.Stop()
		for {
			select {
			case <-cctx.Done():
				return
			case <-t.C:
				if m.cfg.Share.Alone() == alone {
					cancel()
					return
				}
			}
		}
	}()
	return cctx, cancel
}

// poll polls rel's endpoint until ctx is done: at once, then at the bundle's refresh hint
// (bounded), and after a failure with exponential backoff from one second up to that interval.
func (m *Manager) poll(ctx context.Context, rel Relationship) {
	client := m.client(rel)
	defer client.CloseIdleConnections()
	log := m.log.With("trust_domain", rel.TrustDomain.Name(), "url", rel.URL)
	log.Info("federation: fetching bundles", "profile", rel.Profile)
	failures := 0
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hint, err := m.fetch(ctx, client, rel)
		if ctx.Err() != nil {
			return
		}
		m.cfg.OnRefresh(err)
		interval := m.interval(hint)
		wait := interval
		if err != nil {
			failures++
			wait = backoff(failures, interval)
			log.Warn("federation: fetching bundle failed; retrying", "error", err, "failures", failures, "retry_in", wait.Round(time.Millisecond))
		} else {
			if failures > 0 {
				log.Info("federation: bundle endpoint answers again", "failures", failures)
			}
			failures = 0
		}
		now := time.Now()
		m.mu.Lock()
		if st := m.statusLocked(rel.TrustDomain); st != nil {
			st.last, st.next = now, now.Add(wait)
			st.lastErr = ""
			if err != nil {
				st.lastErr = err.Error()
			}
		}
		m.mu.Unlock()
		t.Reset(wait)
	}
}

func (m *Manager) statusLocked(td spiffeid.TrustDomain) *refreshStatus {
	if _, ok := m.rels[td]; !ok {
		return nil
	}
	st := m.status[td]
	if st == nil {
		st = &refreshStatus{}
		m.status[td] = st
	}
	return st
}

// interval is the poll interval for a bundle whose hint is hint (0: none).
func (m *Manager) interval(hint time.Duration) time.Duration {
	if hint <= 0 {
		hint = DefaultRefresh
	}
	return min(max(hint, m.cfg.MinRefresh), MaxRefresh)
}

// backoff is the wait after the n-th failure in a row: 1 s doubling, at most interval, with
// ±20% jitter so that many agents do not retry in step.
func backoff(n int, interval time.Duration) time.Duration {
	d := time.Second << min(n-1, 20)
	d = min(d, interval)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// fetch gets the bundle once and hands it to accept. It returns the refresh hint of the
// bundle now held (0 if it has none).
func (m *Manager) fetch(ctx context.Context, client *http.Client, rel Relationship) (time.Duration, error) {
	hint := func() time.Duration {
		m.mu.Lock()
		defer m.mu.Unlock()
		if h := m.current[rel.TrustDomain]; h != nil {
			return refreshHintOf(h.bundle)
		}
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rel.URL, http.NoBody)
	if err != nil {
		return hint(), err
	}
	resp, err := client.Do(req)
	if err != nil {
		return hint(), err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return hint(), fmt.Errorf("bundle endpoint answered %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBundleBytes+1))
	if err != nil {
		return hint(), fmt.Errorf("reading the bundle: %w", err)
	}
	if len(data) > maxBundleBytes {
		return hint(), fmt.Errorf("bundle larger than %d bytes", maxBundleBytes)
	}
	b, err := spiffebundle.Parse(rel.TrustDomain, data)
	if err != nil {
		return hint(), fmt.Errorf("%w: %v", ErrInvalidBundle, err)
	}
	if _, err := m.accept(ctx, b, store.BundleFromEndpoint); err != nil {
		return hint(), err
	}
	if m.cfg.Share != nil && !m.cfg.Share.Alone() {
		// Offered after every fetch, changed or not: the shared copy may be older (another
		// host's, before this one led); Publish skips an identical one.
		if err := m.cfg.Share.Publish(ctx, rel.TrustDomain, data); err != nil {
			m.log.Warn("federation: sharing the fetched bundle with the fleet", "trust_domain", rel.TrustDomain.Name(), "error", err)
		}
	}
	return hint(), nil
}

// client is the HTTP client for rel's endpoint: https_web verifies the server with the
// system roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured, as everywhere in Go);
// https_spiffe verifies that it presents EndpointID, an X509-SVID that chains to the bundle
// svidd holds for that ID's trust domain (the foreign one, or svidd's own).
func (m *Manager) client(rel Relationship) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	switch rel.Profile {
	case ProfileHTTPSSPIFFE:
		tr.TLSClientConfig = tlsconfig.TLSClientConfig(trustSource{m}, tlsconfig.AuthorizeID(rel.EndpointID))
	default:
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// trustSource is the X.509 bundles an https_spiffe endpoint is verified against.
type trustSource struct{ m *Manager }

func (s trustSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td == s.m.cfg.TrustDomain {
		if b := s.m.cfg.OwnBundle(); b != nil {
			return x509bundle.FromX509Authorities(td, b.X509Authorities), nil
		}
	}
	s.m.mu.Lock()
	h := s.m.current[td]
	s.m.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("no bundle of %s to authenticate its https_spiffe endpoint with: give federates_with a bundle_file, or set one with svidctl bundle set", td.Name())
	}
	return h.bundle.X509Bundle(), nil
}
