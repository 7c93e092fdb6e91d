// Package agent assembles svidd: it owns the store, the CA, the attestor and the identity
// cache, serves SDS and the admin API on their sockets, and turns every change (entry written,
// SVID due, bundle rotated) into new Views for the affected streams.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/sds"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/telemetry"
	"github.com/svidd/svidd/pkg/wire"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workloadapi"
)

// Config is the validated configuration (conf.Load) plus what only code can provide.
type Config struct {
	conf.Config
	Logger *slog.Logger
	// Level, when set, is the logger's level; Reload changes it.
	Level *slog.LevelVar
	// OnReady, when set, is called once the sockets serve (svidd tells systemd).
	OnReady func()
}

// Agent is one svidd.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	lock    *os.File
	store   store.Store
	ca      *ca.CA
	att     *attestor.Attestor
	cache   *cache
	metrics *telemetry.Metrics
	// admission holds the per-uid limits of the api socket.
	admission *admission.Controller

	serving atomic.Bool
	started time.Time

	reloadMu sync.Mutex // serializes Reload; guards cfg.Entries

	qmu    sync.Mutex
	queue  []func()
	qready chan struct{}
}

var (
	_ workload.Watcher    = (*Agent)(nil)
	_ workload.JWTFetcher = (*Agent)(nil)
)

// New opens the data dir (creating it 0700), takes its lock so two agents never share it,
// opens the store and loads (or creates) the CA. It starts nothing; Run does.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, qready: make(chan struct{}, 1)}
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a.lock = lock
	ok := false
	defer func() {
		if !ok {
			a.closeResources()
		}
	}()

	a.metrics = telemetry.New(telemetry.Config{Logger: a.log})
	st, err := store.OpenSQLite(context.Background(), filepath.Join(cfg.DataDir, "svidd.db"))
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	a.store = st
	a.ca, err = ca.New(ca.Config{
		TrustDomain: cfg.TrustDomain,
		Dir:         cfg.DataDir,
		KeyType:     cfg.CA.KeyType,
		CATTL:       cfg.CA.CATTL,
		SVIDTTL:     cfg.CA.SVIDTTL,
		JWTSVIDTTL:  cfg.CA.JWTSVIDTTL,
		Logger:      a.log,
		OnStep:      a.metrics.CARotation,
	})
	if err != nil {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	a.att, err = attestor.New(attestor.Config{Logger: a.log.With("component", "attestor")})
	if err != nil {
		return nil, err
	}
	lim := cfg.Limits
	a.admission, err = admission.New(admission.Config{
		ConnectionsPerSecond:     float64(lim.ConnectionsPerSecond),
		ConnectionBurst:          lim.ConnectionBurst,
		MaxOpenConnectionsPerUID: lim.MaxOpenConnectionsPerUID,
		StreamsPerSecond:         float64(lim.StreamsPerSecond),
		StreamBurst:              lim.StreamBurst,
		MaxOpenStreamsPerUID:     lim.MaxOpenStreamsPerUID,
		MaxMessageBytes:          lim.MaxMessageBytes,
		Logger:                   a.log.With("component", "admission"),
		OnReject:                 a.metrics.AdmissionRefused,
	})
	if err != nil {
		return nil, err
	}
	a.cache = newCache(a.log.With("component", "cache"), a.ca, time.Now)
	a.cache.scheduleRotation = a.scheduleRotation
	a.cache.onMint = a.metrics.SVIDMinted
	a.cache.onRotate = a.metrics.SVIDRotated
	ok = true
	return a, nil
}

// prepareDataDir creates dir 0700, or checks an existing one is not writable by others: the
// CA key lives there.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("data dir %s is writable by group or others (mode %04o); it holds the CA key: chmod 0700 it", dir, fi.Mode().Perm())
	}
	return nil
}

// lockDataDir takes an exclusive, non-blocking flock on DIR/svidd.lock.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "svidd.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another svidd (pid %s)", dir, string(pid))
		}
		return nil, fmt.Errorf("locking data dir: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return f, nil
}

func (a *Agent) closeResources() {
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.log.Error("closing store", "error", err)
		}
	}
	if a.lock != nil {
		a.lock.Close()
	}
}

// attest returns the caller's selectors: attested once per connection (usually already at
// accept, see preattest), and again only if attestation must now include the binary's digest.
// An attestation made at accept is confirmed by the first call that uses it: the caller must
// still be alive and run the same binary, else it is attested afresh, as if nothing had been
// done at accept (a caller that exited or exec'd between connect and its first request is
// handled exactly as before).
func (a *Agent) attest(ctx context.Context, p *peercred.Peer, digest bool) ([]entry.Selector, error) {
	for {
		c := connAttestations(p).current(digest)
		ran := c.run(func() (*attestor.Attestation, error) { return a.record(ctx, p, digest) })
		if !ran {
			select {
			case <-c.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if c.err != nil {
			connAttestations(p).drop(digest, c) // errors are not kept: the next call tries again
			if !ran && ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
				continue // the call that made it went away; ours has not
			}
			return nil, fmt.Errorf("attesting pid %d: %w", p.PID, c.err)
		}
		if c.confirm(a.att, p) {
			return c.at.Selectors, nil
		}
		connAttestations(p).drop(digest, c)
	}
}

// record runs one attestation and counts it.
func (a *Agent) record(ctx context.Context, p *peercred.Peer, digest bool) (*attestor.Attestation, error) {
	start := time.Now()
	at, err := a.att.Record(ctx, p, attestor.Options{Digest: digest})
	a.metrics.AttestationDone(time.Since(start), err)
	return at, err
}

// preattest starts the attestation of a connection just accepted, in the background, so that
// it is done (on the CPU Envoy leaves idle between connecting and asking) by the time the first
// request needs it. Only a peer with a pidfd qualifies: attest confirms the result with it.
func (a *Agent) preattest(ctx context.Context, p *peercred.Peer) {
	hasPIDFD := false
	_ = p.WithPIDFD(func(fd int) error { hasPIDFD = fd >= 0; return nil })
	if !hasPIDFD {
		return
	}
	c := connAttestations(p).current(a.cache.usesDigest())
	if c.started.Load() {
		return
	}
	go c.run(func() (*attestor.Attestation, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		at, err := a.record(ctx, p, c.digest)
		c.early = err == nil
		return at, err
	})
}

// connAttest is one attestation of a connection's caller: made once, by preattest or by the
// first RPC, and awaited by every other RPC of the connection.
type connAttest struct {
	digest  bool
	started atomic.Bool
	done    chan struct{} // closed when at and err are set
	at      *attestor.Attestation
	err     error

	mu    sync.Mutex
	early bool // made at accept, not yet confirmed by an RPC (set before done closes)
	stale bool // confirmation failed: attest again
}

// run makes the attestation with f unless it is already being made; it reports whether it ran f.
func (c *connAttest) run(f func() (*attestor.Attestation, error)) bool {
	if !c.started.CompareAndSwap(false, true) {
		return false
	}
	c.at, c.err = f()
	close(c.done)
	return true
}

// confirm reports whether the attestation may be used: always for one made by an RPC (as
// before: once per connection); for one made at accept, once the caller is found unchanged.
func (c *connAttest) confirm(att *attestor.Attestor, p *peercred.Peer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stale {
		return false
	}
	if c.early {
		if !att.Unchanged(p, c.at) {
			c.stale = true
			return false
		}
		c.early = false
	}
	return true
}

// connAttestState holds a connection's attestations, one per digest option, in its Peer.
type connAttestState struct {
	mu sync.Mutex
	by [2]*connAttest // [0] without the binary's digest, [1] with it
}

type attestKey struct{}

func connAttestations(p *peercred.Peer) *connAttestState {
	v, _ := p.Memo(attestKey{}, func() (any, error) { return &connAttestState{}, nil })
	return v.(*connAttestState)
}

// digestSlot is the index in connAttestState.by of the attestation with or without digest.
func digestSlot(digest bool) int {
	if digest {
		return 1
	}
	return 0
}

// current returns the attestation to use or make for digest.
func (s *connAttestState) current(digest bool) *connAttest {
	i := digestSlot(digest)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.by[i] == nil {
		s.by[i] = &connAttest{digest: digest, done: make(chan struct{})}
	}
	return s.by[i]
}

// drop forgets c, if it is still the current one, so that the next call attests afresh.
func (s *connAttestState) drop(digest bool, c *connAttest) {
	i := digestSlot(digest)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.by[i] == c {
		s.by[i] = nil
	}
}

// preattestListener starts the attestation of every connection it accepts.
type preattestListener struct {
	net.Listener
	ctx context.Context
	a   *Agent
}

func (l preattestListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if pc, ok := c.(interface{ Peer() *peercred.Peer }); ok {
			l.a.preattest(l.ctx, pc.Peer())
		}
	}
	return c, err
}

// Watch implements workload.Watcher: attest the connection, then subscribe to its View.
func (a *Agent) Watch(ctx context.Context, p *peercred.Peer) (*workload.Subscription, error) {
	if !a.serving.Load() {
		return nil, workload.ErrUnavailable
	}
	sel, err := a.attest(ctx, p, a.cache.usesDigest())
	if err != nil {
		return nil, err
	}
	// If the first unix:sha256 entry appears later, this stream's caller is attested again,
	// with its binary's digest, so that entry can match it.
	reattest := func() ([]entry.Selector, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return a.attest(ctx, p, true)
	}
	method, _ := grpc.Method(ctx)
	opened := time.Now()
	var served []string
	onClose := func() {
		a.log.Info("stream closed", "rpc", method, "pid", p.PID, "uid", p.UID, "duration", time.Since(opened).Round(time.Millisecond))
	}
	// A front-end that names the identities it needs first (SDS) gets them without waiting
	// for every other SVID the caller is entitled to.
	sub, err := a.cache.subscribe(sel, workload.Wanted(ctx), reattest, onClose)
	if err != nil {
		return nil, err
	}
	if a.log.Enabled(ctx, slog.LevelInfo) { // a hot path: build the ID list only if it is logged
		v := sub.Latest()
		for i, s := range v.SVIDs {
			if i == maxLoggedIDs {
				served = append(served, fmt.Sprintf("(+%d more)", len(v.SVIDs)-i))
				break
			}
			served = append(served, s.ID.String())
		}
		a.log.Info("stream opened", "rpc", method, "pid", p.PID, "uid", p.UID, "gid", p.GID, "spiffe_ids", served)
	}
	return sub, nil
}

// maxLoggedIDs bounds the SPIFFE IDs listed on a stream's log line.
const maxLoggedIDs = 8

// FetchJWTSVIDs implements workload.JWTFetcher: JWT-SVIDs are minted per request (the
// audience is the caller's), only for identities the attested caller is entitled to.
func (a *Agent) FetchJWTSVIDs(ctx context.Context, p *peercred.Peer, id spiffeid.ID, audience []string) ([]*workload.JWTSVID, error) {
	if !a.serving.Load() {
		return nil, workload.ErrUnavailable
	}
	sel, err := a.attest(ctx, p, a.cache.usesDigest())
	if err != nil {
		return nil, err
	}
	ids := a.cache.entitledIDs(sel)
	if !id.IsZero() {
		if !slices.Contains(ids, id) {
			return nil, workload.ErrNotEntitled
		}
		ids = []spiffeid.ID{id}
	}
	if len(ids) == 0 {
		return nil, workload.ErrNotEntitled
	}
	out := make([]*workload.JWTSVID, 0, len(ids))
	for _, sid := range ids {
		s, err := a.ca.MintJWTSVID(sid, audience, 0)
		a.metrics.JWTSVIDMinted(err)
		if errors.Is(err, ca.ErrCAExpired) {
			return nil, fmt.Errorf("%w: %v", workload.ErrUnavailable, err)
		}
		if err != nil {
			return nil, fmt.Errorf("minting JWT-SVID for %s: %w", sid, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// Run serves until ctx is done. It returns nil after a clean stop.
func (a *Agent) Run(ctx context.Context) (err error) {
	defer a.closeResources()
	defer a.cache.stop() // ends background minting before the CA and store go
	a.started = time.Now().UTC()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The store is this process's alone (flock) and nothing serves yet, so the only writes
	// before the cache is loaded are the config reconciliation's: one listing feeds both,
	// unless reconciling changed the store (listing 10,000 entries takes ~50 ms, a fifth of
	// a cold start's budget).
	entries, err := a.store.ListEntries(ctx, store.Filter{})
	if err != nil {
		return fmt.Errorf("loading entries: %w", err)
	}
	changed, err := a.reconcileWith(ctx, entries)
	if err != nil {
		return err
	}
	// Subscribe to changes before loading, so nothing written in between is lost; a change
	// applied twice is harmless (Put is idempotent).
	stopWatch := a.store.Watch(func(c store.Change) { a.enqueue(func() { a.cache.apply(c) }) })
	defer stopWatch()
	if changed {
		if entries, err = a.store.ListEntries(ctx, store.Filter{}); err != nil {
			return fmt.Errorf("loading entries: %w", err)
		}
	}
	a.cache.load(entries)
	a.cache.setBundles([]*workload.Bundle{a.ca.Bundle()})

	pcLn, err := peercred.Listen(a.cfg.SocketPath, 0o666)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	apiLn := a.admission.Listener(pcLn) // closes connections over their uid's limits
	defer apiLn.Close()
	adminLn, err := peercred.Listen(a.cfg.AdminSocketPath, 0o600)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer adminLn.Close()
	owner := uint32(os.Geteuid())
	adminLn.Admit = func(p *peercred.Peer) bool {
		if p.UID == owner || p.UID == 0 {
			return true
		}
		a.log.Warn("refused admin connection from another user", "uid", p.UID, "pid", p.PID)
		return false
	}

	sdsSrv, err := sds.New(sds.Config{
		Watcher:               a,
		TrustDomain:           a.cfg.TrustDomain,
		DefaultSVIDName:       a.cfg.SDS.DefaultSVIDName,
		DefaultBundleName:     a.cfg.SDS.DefaultBundleName,
		DefaultAllBundlesName: a.cfg.SDS.DefaultAllBundlesName,
		Logger:                a.log,
		Metrics:               a.metrics.SDS(),
	})
	if err != nil {
		return err
	}
	wlSrv, err := workloadapi.New(workloadapi.Config{
		Watcher:     a,
		JWT:         a,
		TrustDomain: a.cfg.TrustDomain,
		Logger:      a.log,
		Metrics:     a.metrics.WorkloadAPI(),
	})
	if err != nil {
		return err
	}
	// Small, shared write buffers: a connection's buffers otherwise dominate the heap with
	// many connections (1,000 connections: heap 78 → 40 MiB, measured with test/load).
	gs := grpc.NewServer(append(a.admission.ServerOptions(),
		grpc.Creds(peercred.TransportCredentials()),
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(8<<10),
		grpc.WriteBufferSize(16<<10),
		// Fixed flow-control windows (gRPC's initial 64 KiB) turn off its bandwidth-delay
		// probing, which costs every connection a PING written on its first request and its ack
		// read back: there is no bandwidth to discover on a Unix socket carrying small requests.
		grpc.InitialWindowSize(65535),
		grpc.InitialConnWindowSize(65535),
		// SDS sends pre-encoded responses: each View's Secrets are encoded once and shared
		// by every stream holding it (pkg/wire).
		wire.ServerOption())...)
	sdsSrv.Register(gs)
	wlSrv.Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	adminSrv, err := admin.New(admin.Config{
		TrustDomain: a.cfg.TrustDomain,
		Store:       a.store,
		Bundle:      a.ca.Bundle,
		MaxSVIDTTL:  a.ca.MaxSVIDTTL(),
		Status:      a.status,
		CA:          caAdmin{a.ca},
		Ready:       a.ready,
		Logger:      a.log,
	})
	if err != nil {
		return err
	}

	var metricsLn, healthLn net.Listener
	if addr := a.cfg.Telemetry.PrometheusAddress; addr != "" {
		if metricsLn, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	if addr := a.cfg.Health.Address; addr != "" {
		if healthLn, err = net.Listen("tcp", addr); err != nil {
			if metricsLn != nil {
				metricsLn.Close()
			}
			return fmt.Errorf("health listener: %w", err)
		}
	}
	a.metrics.OnGather(a.gaugeMetrics)
	if metricsLn != nil {
		a.log.Info("metrics serving", "address", metricsLn.Addr().String(), "path", "/metrics")
	}
	if healthLn != nil {
		a.log.Info("health serving", "address", healthLn.Addr().String())
	}

	errc := make(chan error, 1)
	var wg sync.WaitGroup
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				select {
				case errc <- fmt.Errorf("%s: %w", name, err):
				default: // the first failure already stops the agent
				}
			}
		}()
	}
	run("updater", func() error { a.updater(ctx); return nil })
	run("ca", func() error { return a.ca.Run(ctx) })
	run("bundle watcher", func() error { a.watchBundle(ctx); return nil })
	run("admin", func() error { return adminSrv.Serve(ctx, adminLn) })
	run("api", func() error { return gs.Serve(preattestListener{Listener: apiLn, ctx: ctx, a: a}) })
	if metricsLn != nil {
		run("metrics", func() error { return telemetry.ServeMetrics(ctx, metricsLn, a.metrics.Handler()) })
	}
	if healthLn != nil {
		h := telemetry.HealthHandler(a.cfg.Health.LivePath, a.cfg.Health.ReadyPath, a.ready)
		run("health", func() error { return telemetry.Serve(ctx, healthLn, h) })
	}

	a.serving.Store(true)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	a.log.Info("svidd serving",
		"trust_domain", a.cfg.TrustDomain.Name(),
		"socket_path", a.cfg.SocketPath,
		"admin_socket_path", a.cfg.AdminSocketPath,
		"entries", len(entries))
	if a.cfg.OnReady != nil {
		a.cfg.OnReady()
	}

	select {
	case <-ctx.Done():
	case err = <-errc:
		a.log.Error("stopping after failure", "error", err)
	}
	a.serving.Store(false)
	hs.Shutdown()
	cancel()
	stopGRPC(gs, 5*time.Second)
	wg.Wait()
	a.log.Info("svidd stopped")
	return err
}

// stopGRPC drains in-flight calls for up to d, then cuts the rest (SDS streams never end on
// their own, so a graceful stop alone would wait forever).
func stopGRPC(gs *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		gs.Stop()
		<-done
	}
}

func (a *Agent) ready(ctx context.Context) error {
	if !a.serving.Load() {
		return errors.New("api socket not serving")
	}
	if a.ca.Bundle() == nil {
		return errors.New("CA not loaded")
	}
	if err := a.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Reload applies a new configuration without dropping streams: the entry blocks are
// reconciled and the log level changed. Settings that only take effect at start (sockets,
// data dir, trust domain, CA, listeners) are reported and left as they are.
func (a *Agent) Reload(ctx context.Context, cfg conf.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	old := a.cfg.Config
	for _, d := range []struct {
		name     string
		old, new any
	}{
		{"agent.trust_domain", old.TrustDomain, cfg.TrustDomain},
		{"agent.socket_path", old.SocketPath, cfg.SocketPath},
		{"agent.admin_socket_path", old.AdminSocketPath, cfg.AdminSocketPath},
		{"agent.data_dir", old.DataDir, cfg.DataDir},
		{"agent.log_format", old.LogFormat, cfg.LogFormat},
		{"ca", old.CA, cfg.CA},
		{"sds", old.SDS, cfg.SDS},
		{"telemetry", old.Telemetry, cfg.Telemetry},
		{"health", old.Health, cfg.Health},
		{"limits", old.Limits, cfg.Limits},
	} {
		if fmt.Sprint(d.old) != fmt.Sprint(d.new) {
			a.log.Warn("config change needs a restart to take effect; ignored until then", "setting", d.name)
		}
	}
	if a.cfg.Level != nil && cfg.LogLevel != old.LogLevel {
		a.cfg.Level.Set(cfg.LogLevel)
		a.cfg.LogLevel = cfg.LogLevel
		a.log.Info("log level changed", "level", cfg.LogLevel.String())
	}
	a.cfg.Entries = cfg.Entries
	if err := a.reconcile(ctx); err != nil {
		return err
	}
	a.log.Info("configuration reloaded", "entries_in_config", len(cfg.Entries))
	return nil
}

// reconcile makes the store's config-declared entries (those with a Name) equal to the
// config's entry blocks: created, updated or deleted, idempotently.
func (a *Agent) reconcile(ctx context.Context) error {
	existing, err := a.store.ListEntries(ctx, store.Filter{})
	if err != nil {
		return fmt.Errorf("reconciling config entries: %w", err)
	}
	_, err = a.reconcileWith(ctx, existing)
	return err
}

// reconcileWith is reconcile given the store's entries; it reports whether it wrote anything.
func (a *Agent) reconcileWith(ctx context.Context, existing []entry.Entry) (changed bool, err error) {
	byName := make(map[string]entry.Entry)
	for _, e := range existing {
		if e.Name != "" {
			byName[e.Name] = e
		}
	}
	for _, want := range a.cfg.Entries {
		have, ok := byName[want.Name]
		delete(byName, want.Name)
		switch {
		case !ok:
			if _, err := a.store.CreateEntry(ctx, want); err != nil {
				return changed, fmt.Errorf("registering config entry %q: %w", want.Name, err)
			}
			changed = true
			a.log.Info("config entry registered", "name", want.Name, "spiffe_id", want.SPIFFEID.String())
		case !sameSpec(have, want):
			want.ID = have.ID
			if _, err := a.store.UpdateEntry(ctx, want); err != nil {
				return changed, fmt.Errorf("updating config entry %q: %w", want.Name, err)
			}
			changed = true
			a.log.Info("config entry updated", "name", want.Name, "spiffe_id", want.SPIFFEID.String())
		}
	}
	for name, e := range byName {
		if _, err := a.store.DeleteEntry(ctx, e.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return changed, fmt.Errorf("removing config entry %q: %w", name, err)
		}
		changed = true
		a.log.Info("config entry removed (no longer in the config)", "name", name, "spiffe_id", e.SPIFFEID.String())
	}
	return changed, nil
}

func sameSpec(a, b entry.Entry) bool {
	return a.SPIFFEID == b.SPIFFEID &&
		entry.SelectorKey(entry.Normalize(a.Selectors)) == entry.SelectorKey(entry.Normalize(b.Selectors)) &&
		a.X509SVIDTTL == b.X509SVIDTTL &&
		fmt.Sprint(a.DNSNames) == fmt.Sprint(b.DNSNames)
}

// gaugeMetrics sets the state gauges at scrape time.
func (a *Agent) gaugeMetrics() {
	st := a.cache.stats()
	a.metrics.SetEntries(st.Entries)
	a.metrics.SetSVIDs(st.SVIDs)
	var soonest time.Time
	for _, h := range a.cache.identities() {
		if h.Streams > 0 && (soonest.IsZero() || h.SVID.NotAfter.Before(soonest)) {
			soonest = h.SVID.NotAfter
		}
	}
	a.metrics.SetSoonestSVIDNotAfter(soonest)
	a.metrics.SetCANotAfter(a.ca.NotAfter())
}

// enqueue hands work to the updater goroutine. It never blocks (store callbacks and timers
// call it).
func (a *Agent) enqueue(f func()) {
	t0 := time.Now()
	a.qmu.Lock()
	// Push latency: from the change being observed to every affected stream's View published.
	a.queue = append(a.queue, func() { f(); a.metrics.PushLatency(time.Since(t0)) })
	a.qmu.Unlock()
	select {
	case a.qready <- struct{}{}:
	default:
	}
}

// updater applies changes one at a time, in order, so two changes never interleave their
// view rebuilds.
func (a *Agent) updater(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.qready:
		}
		a.qmu.Lock()
		work := a.queue
		a.queue = nil
		a.qmu.Unlock()
		for _, f := range work {
			f()
		}
	}
}

func (a *Agent) scheduleRotation(entryID string, at time.Time) {
	time.AfterFunc(time.Until(at), func() { a.enqueue(func() { a.cache.rotate(entryID) }) })
}

func (a *Agent) watchBundle(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.ca.BundleChanged():
			b := a.ca.Bundle()
			a.metrics.BundleChanged()
			a.log.Info("trust bundle changed", "trust_domain", b.TrustDomain.Name(), "sequence", b.Sequence, "authorities", len(b.X509Authorities))
			a.enqueue(func() { a.cache.setBundles([]*workload.Bundle{b}) })
		}
	}
}
