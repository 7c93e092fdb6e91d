package federation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/workload"
)

// Refresh bounds. A foreign endpoint is polled at its spiffe_refresh_hint (§4.1), never more
// often than ManagerConfig.MinRefresh and never less often than MaxRefresh; without a hint,
// every DefaultRefresh.
const (
	DefaultMinRefresh = time.Minute
	DefaultRefresh    = 5 * time.Minute
	MaxRefresh        = time.Hour
	// maxBundleBytes bounds an endpoint's answer: a bundle is a few KiB.
	maxBundleBytes = 1 << 20
)

// Relationship is one federates_with block: a foreign trust domain and where its bundle
// comes from.
type Relationship struct {
	TrustDomain spiffeid.TrustDomain
	// URL is the bundle endpoint (https://...); empty when the bundle is managed by hand
	// (svidctl bundle set) or comes only from BundleFile.
	URL string
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile string
	// EndpointID is the SPIFFE ID an https_spiffe endpoint must present.
	EndpointID spiffeid.ID
	// BundleFile bootstraps the bundle (SPIFFE document or PEM) when none is stored yet.
	BundleFile string
	// ToAllWorkloads gives this trust domain's bundle to every caller with an identity,
	// whatever its entries' federates_with.
	ToAllWorkloads bool
}

// BundleStore persists federated bundles; store.Store satisfies it.
type BundleStore interface {
	SetBundle(ctx context.Context, b store.FederatedBundle) (store.FederatedBundle, error)
	ListBundles(ctx context.Context) ([]store.FederatedBundle, error)
	DeleteBundle(ctx context.Context, td spiffeid.TrustDomain) (store.FederatedBundle, error)
}

// Snapshot is the federated bundles at one moment: what the agent serves.
type Snapshot struct {
	// Bundles holds each foreign trust domain's bundle. Shared and immutable.
	Bundles map[spiffeid.TrustDomain]*workload.Bundle
	// ToAll lists the trust domains every caller receives, sorted by name (whether or not
	// their bundle has arrived).
	ToAll []spiffeid.TrustDomain
}

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	// TrustDomain is svidd's own: never federated with, never stored as a federated bundle.
	TrustDomain spiffeid.TrustDomain
	Store       BundleStore
	// OwnBundle returns svidd's own bundle: an https_spiffe endpoint of the own trust domain
	// is authenticated with it.
	OwnBundle func() *workload.Bundle
	// OnChange receives every new Snapshot, in order. It is called with the Manager's write
	// lock held, so it must not block or call back into the Manager.
	OnChange func(Snapshot)
	// OnRefresh, when set, is told the outcome of every fetch from a bundle endpoint (for
	// metrics). It must not block.
	OnRefresh func(err error)
	// MinRefresh is the shortest poll interval (default DefaultMinRefresh); tests lower it.
	MinRefresh time.Duration
	// Share, when set (a fleet on etcd), makes the hosts fetch each foreign bundle once:
	// see Sharing. Nil: every host fetches for itself.
	Share  Sharing
	Logger *slog.Logger
}

// Sharing is how the hosts of a fleet fetch each foreign bundle once. A host fetches td's
// bundle only while Lead says it is td's fetcher, and hands each bundle it accepted to
// Publish; every host takes the bundles other hosts published through Manager.Shared.
type Sharing interface {
	// Lead blocks until this host is td's fetcher, or ctx ends (its error). The context it
	// returns ends when the host stops being the fetcher (its lease ended); resign gives the
	// role up.
	Lead(ctx context.Context, td spiffeid.TrustDomain) (lead context.Context, resign func(), err error)
	// Publish offers doc, td's bundle as this host accepted it, to the other hosts. It never
	// replaces a bundle with a higher spiffe_sequence.
	Publish(ctx context.Context, td spiffeid.TrustDomain, doc []byte) error
	// Alone reports whether this host is cut off from the fleet (its registry unreachable
	// for longer than a fetcher's lease): no fetcher can be elected or heard from, so the
	// host fetches for itself, as without a fleet, and shares nothing until it is back.
	Alone() bool
	// SetManual makes doc, td's bundle as the operator set it (svidctl bundle set), the one
	// every host holds. Its errors wrap store.ErrReadOnly when this host may not write the
	// shared bundles, store.ErrUnavailable when the registry is unreachable.
	SetManual(ctx context.Context, td spiffeid.TrustDomain, doc []byte) error
	// Remove deletes td's shared bundle (svidctl bundle delete): every host drops its copy
	// (Manager.SharedRemoved). It reports whether one was shared; errors as SetManual's.
	Remove(ctx context.Context, td spiffeid.TrustDomain) (bool, error)
}

// Manager owns the federated bundles: it loads them from the store, fetches them from bundle
// endpoints, applies the operator's manual changes, and publishes Snapshots.
type Manager struct {
	cfg ManagerConfig
	log *slog.Logger

	// wmu serializes changes (fetch results, operator's sets and deletes, configuration),
	// their store writes and OnChange calls, so Snapshots go out in the order changes happen.
	wmu sync.Mutex

	mu      sync.Mutex // guards the fields below; never held during I/O
	current map[spiffeid.TrustDomain]*held
	rels    map[spiffeid.TrustDomain]Relationship
	status  map[spiffeid.TrustDomain]*refreshStatus
	kick    chan struct{} // Run re-reads rels
}

// held is one foreign bundle as kept.
type held struct {
	bundle  *spiffebundle.Bundle
	version uint64
	source  store.BundleSource
	updated time.Time
	view    *workload.Bundle
}

type refreshStatus struct {
	last, next time.Time
	lastErr    string
}

// NewManager checks cfg. It starts nothing; Run does.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("federation: trust domain is required")
	case cfg.Store == nil || cfg.OwnBundle == nil:
		return nil, errors.New("federation: Store and OwnBundle are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func(Snapshot) {}
	}
	if cfg.OnRefresh == nil {
		cfg.OnRefresh = func(error) {}
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = DefaultMinRefresh
	}
	return &Manager{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "federation"),
		current: make(map[spiffeid.TrustDomain]*held),
		rels:    make(map[spiffeid.TrustDomain]Relationship),
		status:  make(map[spiffeid.TrustDomain]*refreshStatus),
		kick:    make(chan struct{}, 1),
	}, nil
}

// Load reads the stored bundles (the last good ones from before a restart) and publishes them.
// A stored bundle that no longer parses is reported and skipped, never deleted.
func (m *Manager) Load(ctx context.Context) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	rows, err := m.cfg.Store.ListBundles(ctx)
	if err != nil {
		return fmt.Errorf("loading federated bundles: %w", err)
	}
	m.mu.Lock()
	for _, r := range rows {
		if r.TrustDomain == m.cfg.TrustDomain {
			continue
		}
		b, err := spiffebundle.Parse(r.TrustDomain, r.Doc)
		if err != nil {
			m.log.Error("stored federated bundle does not parse; ignored", "trust_domain", r.TrustDomain.Name(), "error", err)
			continue
		}
		m.current[r.TrustDomain] = newHeld(b, r.Sequence, r.Source, r.UpdatedAt)
	}
	m.mu.Unlock()
	m.publishLocked()
	return nil
}

func newHeld(b *spiffebundle.Bundle, version uint64, src store.BundleSource, updated time.Time) *held {
	return &held{bundle: b, version: version, source: src, updated: updated, view: ToWorkload(b, version)}
}

// Configure makes rels the federation relationships: bundles of relationships no longer
// configured are deleted (those fetched from an endpoint or read from a bundle_file; a bundle
// set by hand stays until deleted by hand), new ones are bootstrapped from their bundle_file
// when no bundle is stored, and Run starts, restarts or stops their fetchers. Every
// bundle_file is read before anything changes: an error leaves everything as it was.
func (m *Manager) Configure(ctx context.Context, rels []Relationship) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	want := make(map[spiffeid.TrustDomain]Relationship, len(rels))
	boot := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle)
	m.mu.Lock()
	have := maps.Clone(m.current)
	m.mu.Unlock()
	for _, r := range rels {
		if r.TrustDomain == m.cfg.TrustDomain {
			return fmt.Errorf("federates_with %q: that is svidd's own trust domain", r.TrustDomain.Name())
		}
		want[r.TrustDomain] = r
		if r.BundleFile == "" || have[r.TrustDomain] != nil {
			continue
		}
		data, err := os.ReadFile(r.BundleFile)
		if err != nil {
			return fmt.Errorf("federates_with %q: reading bundle_file: %w", r.TrustDomain.Name(), err)
		}
		b, err := ParseBundleAnyFormat(r.TrustDomain, data)
		if err != nil {
			return fmt.Errorf("federates_with %q: bundle_file %s: %w", r.TrustDomain.Name(), r.BundleFile, err)
		}
		boot[r.TrustDomain] = b
	}
	changed := false
	for td, h := range have {
		if _, ok := want[td]; ok || h.source == store.BundleManual {
			continue
		}
		if _, err := m.cfg.Store.DeleteBundle(ctx, td); err != nil && !errors.Is(err, store.ErrBundleNotFound) {
			return fmt.Errorf("ending federation with %q: %w", td.Name(), err)
		}
		m.mu.Lock()
		delete(m.current, td)
		m.mu.Unlock()
		changed = true
		m.log.Info("federation ended: bundle removed", "trust_domain", td.Name())
	}
	for td, b := range boot {
		if _, err := m.acceptLocked(ctx, b, store.BundleFromFile); err != nil {
			return fmt.Errorf("federates_with %q: bundle_file: %w", td.Name(), err)
		}
		changed = true
	}
	m.mu.Lock()
	toAllBefore := toAllOf(m.rels)
	m.rels = want
	for td := range m.status {
		if _, ok := want[td]; !ok {
			delete(m.status, td)
		}
	}
	toAllChanged := !slices.Equal(toAllBefore, toAllOf(want))
	m.mu.Unlock()
	if changed || toAllChanged {
		m.publishLocked()
	}
	select {
	case m.kick <- struct{}{}:
	default:
	}
	return nil
}

func toAllOf(rels map[spiffeid.TrustDomain]Relationship) []spiffeid.TrustDomain {
	var out []spiffeid.TrustDomain
	for td, r := range rels {
		if r.ToAllWorkloads {
			out = append(out, td)
		}
	}
	slices.SortFunc(out, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	return out
}

// publishLocked sends the current Snapshot. m.wmu must be held.
func (m *Manager) publishLocked() {
	m.mu.Lock()
	s := Snapshot{Bundles: make(map[spiffeid.TrustDomain]*workload.Bundle, len(m.current)), ToAll: toAllOf(m.rels)}
	for td, h := range m.current {
		s.Bundles[td] = h.view
	}
	m.mu.Unlock()
	m.cfg.OnChange(s)
}

// accept stores b as td's bundle if it is new, and publishes it; see acceptLocked.
func (m *Manager) accept(ctx context.Context, b *spiffebundle.Bundle, src store.BundleSource) (bool, error) {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	return m.acceptLocked(ctx, b, src)
}

// acceptLocked checks b against the bundle held for its trust domain, stores it and
// publishes the change. It reports whether anything changed. The rules (Trust Domain and
// Bundle §4.1.2: spiffe_sequence only grows, and changes whenever the content does): when
// both carry a sequence, a lower one is refused, and so is the same one with other keys.
// The resource version Views carry grows by at least one on every change. m.wmu must be held.
func (m *Manager) acceptLocked(ctx context.Context, b *spiffebundle.Bundle, src store.BundleSource) (bool, error) {
	td := b.TrustDomain()
	version, changed, err := m.checkLocked(b, src)
	if err != nil || !changed {
		return false, err
	}
	doc, err := Marshal(b)
	if err != nil {
		return false, err
	}
	row, err := m.cfg.Store.SetBundle(ctx, store.FederatedBundle{TrustDomain: td, Doc: doc, Source: src, Sequence: version})
	if err != nil {
		return false, fmt.Errorf("storing bundle of %s: %w", td.Name(), err)
	}
	m.mu.Lock()
	m.current[td] = newHeld(b, version, src, row.UpdatedAt)
	m.mu.Unlock()
	m.log.Info("federated bundle updated", "trust_domain", td.Name(), "source", string(src), "version", version,
		"x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()))
	m.publishLocked()
	return true, nil
}

// checkLocked applies acceptLocked's rules to b: the version it would be held with, or
// changed false when it is the bundle held. m.wmu must be held.
func (m *Manager) checkLocked(b *spiffebundle.Bundle, src store.BundleSource) (version uint64, changed bool, err error) {
	td := b.TrustDomain()
	if td == m.cfg.TrustDomain {
		return 0, false, fmt.Errorf("%w: %s is svidd's own trust domain; its bundle comes from svidd's CA", ErrInvalidBundle, td.Name())
	}
	m.mu.Lock()
	cur := m.current[td]
	m.mu.Unlock()
	if cur == nil {
		v, err := NextVersion(nil, b, 0)
		return v, err == nil, err
	}
	if version, err = NextVersion(cur.bundle, b, cur.version); err != nil {
		return 0, false, err
	}
	if src == cur.source && SameKeys(cur.bundle, b) && refreshHintOf(b) == refreshHintOf(cur.bundle) && curSeqOr0(b) == curSeqOr0(cur.bundle) {
		return 0, false, nil // same keys, same metadata (new metadata is kept: the hint drives polling)
	}
	return version, true, nil
}

// NextVersion applies the rules of a bundle replacing another (Trust Domain and Bundle
// §4.1.2: spiffe_sequence only grows, and changes whenever the content does) to next
// replacing cur (nil: none held; curVersion its resource version). It returns the version
// next is held with, which grows by at least one on every change. Its errors wrap
// ErrInvalidBundle.
func NextVersion(cur, next *spiffebundle.Bundle, curVersion uint64) (uint64, error) {
	td := next.TrustDomain()
	newSeq, hasSeq := next.SequenceNumber()
	version := uint64(1)
	if hasSeq && newSeq > 0 {
		version = newSeq
	}
	if cur == nil {
		return version, nil
	}
	curSeq, curHasSeq := cur.SequenceNumber()
	switch {
	case hasSeq && curHasSeq && newSeq < curSeq:
		return 0, fmt.Errorf("%w: spiffe_sequence %d of %s is lower than the held bundle's %d (a replayed or rolled-back bundle); delete the held bundle to replace it by hand",
			ErrInvalidBundle, newSeq, td.Name(), curSeq)
	case hasSeq && curHasSeq && newSeq == curSeq && !SameKeys(cur, next):
		return 0, fmt.Errorf("%w: the keys of %s changed but spiffe_sequence stayed %d", ErrInvalidBundle, td.Name(), newSeq)
	}
	return max(version, curVersion+1), nil
}

func refreshHintOf(b *spiffebundle.Bundle) time.Duration {
	h, _ := b.RefreshHint()
	return h
}

func curSeqOr0(b *spiffebundle.Bundle) uint64 {
	s, _ := b.SequenceNumber()
	return s
}

// Shared takes a bundle the fleet shares (Sharing), src as stored with it. One fetched
// from an endpoint by another host is taken as if this host had fetched it, for a
// relationship with a bundle endpoint (for any other trust domain it does nothing); one the
// operator set by hand on any host (BundleManual) is taken as if set here, whatever the
// relationships. A bundle older than the one held is refused as a fetched one would be.
func (m *Manager) Shared(ctx context.Context, td spiffeid.TrustDomain, doc []byte, src store.BundleSource) error {
	if src != store.BundleManual {
		m.mu.Lock()
		rel, ok := m.rels[td]
		m.mu.Unlock()
		if !ok || rel.URL == "" {
			return nil
		}
		src = store.BundleFromEndpoint
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return fmt.Errorf("%w: shared bundle of %s: %v", ErrInvalidBundle, td.Name(), err)
	}
	_, err = m.accept(ctx, b, src)
	return err
}

// SharedRemoved drops td's bundle: the operator deleted the fleet's shared copy on some
// host (svidctl bundle delete), as Delete does here.
func (m *Manager) SharedRemoved(ctx context.Context, td spiffeid.TrustDomain) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	_, err := m.deleteLocked(ctx, td)
	return err
}

// Set stores a bundle given by the operator (svidctl bundle set) in format FormatSPIFFE or
// FormatPEM. Errors about the input wrap ErrInvalidBundle. In a fleet (Share) the bundle
// goes to every host: it is checked against the one held here, then written to the shared
// copy, then held; a write the registry refuses leaves everything as it was.
func (m *Manager) Set(ctx context.Context, td spiffeid.TrustDomain, format string, data []byte) error {
	b, err := ParseBundle(td, format, data)
	if err != nil {
		return err
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.cfg.Share != nil {
		if _, _, err := m.checkLocked(b, store.BundleManual); err != nil {
			return err
		}
		doc, err := Marshal(b)
		if err != nil {
			return err
		}
		if err := m.cfg.Share.SetManual(ctx, td, doc); err != nil {
			return err
		}
	}
	_, err = m.acceptLocked(ctx, b, store.BundleManual)
	return err
}

// Delete removes td's bundle (in a fleet, every host's). A bundle whose federates_with block
// still names an endpoint comes back at the next refresh: remove the block to end the
// federation.
func (m *Manager) Delete(ctx context.Context, td spiffeid.TrustDomain) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	shared := false
	if m.cfg.Share != nil {
		var err error
		if shared, err = m.cfg.Share.Remove(ctx, td); err != nil {
			return err
		}
	}
	found, err := m.deleteLocked(ctx, td)
	if err != nil {
		return err
	}
	if !found && !shared {
		return fmt.Errorf("%w: %s", store.ErrBundleNotFound, td.Name())
	}
	m.log.Info("federated bundle deleted by the operator", "trust_domain", td.Name())
	return nil
}

// deleteLocked removes td's bundle from the store and the Snapshot; found false when none was
// held. m.wmu must be held.
func (m *Manager) deleteLocked(ctx context.Context, td spiffeid.TrustDomain) (found bool, err error) {
	_, err = m.cfg.Store.DeleteBundle(ctx, td)
	if err != nil && !errors.Is(err, store.ErrBundleNotFound) {
		return false, err
	}
	stored := err == nil
	m.mu.Lock()
	_, found = m.current[td]
	delete(m.current, td)
	m.mu.Unlock()
	if found {
		m.publishLocked()
	}
	return found || stored, nil
}

// BundleStatus describes one federated trust domain: its bundle (if any) and its
// relationship (if configured).
type BundleStatus struct {
	TrustDomain     spiffeid.TrustDomain
	HasBundle       bool
	Source          store.BundleSource
	Version         uint64
	UpdatedAt       time.Time
	X509Authorities int
	JWTAuthorities  int
	// Configured: a federates_with block names the trust domain.
	Configured     bool
	URL            string
	Profile        string
	ToAllWorkloads bool
	LastRefresh    time.Time
	NextRefresh    time.Time
	LastError      string
}

// Status lists every trust domain with a bundle or a relationship, by name.
func (m *Manager) Status() []BundleStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	tds := map[spiffeid.TrustDomain]bool{}
	for td := range m.current {
		tds[td] = true
	}
	for td := range m.rels {
		tds[td] = true
	}
	out := make([]BundleStatus, 0, len(tds))
	for td := range tds {
		s := BundleStatus{TrustDomain: td}
		if h := m.current[td]; h != nil {
			s.HasBundle, s.Source, s.Version, s.UpdatedAt = true, h.source, h.version, h.updated
			s.X509Authorities, s.JWTAuthorities = len(h.view.X509Authorities), len(h.view.JWTAuthorities)
		}
		if r, ok := m.rels[td]; ok {
			s.Configured, s.URL, s.Profile, s.ToAllWorkloads = true, r.URL, r.Profile, r.ToAllWorkloads
		}
		if st := m.status[td]; st != nil {
			s.LastRefresh, s.NextRefresh, s.LastError = st.last, st.next, st.lastErr
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b BundleStatus) int { return strings.Compare(a.TrustDomain.Name(), b.TrustDomain.Name()) })
	return out
}

// Bundle returns td's bundle and the SPIFFE document svidd keeps for it, or ok false.
func (m *Manager) Bundle(td spiffeid.TrustDomain) (b *workload.Bundle, doc []byte, ok bool) {
	m.mu.Lock()
	h := m.current[td]
	m.mu.Unlock()
	if h == nil {
		return nil, nil, false
	}
	doc, err := Marshal(h.bundle)
	if err != nil {
		return h.view, nil, true
	}
	return h.view, doc, true
}
