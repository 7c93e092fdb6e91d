package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/svidd/svidd/attestor"
	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/admin"
	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/sds"
	"github.com/svidd/svidd/pkg/store"
	"github.com/svidd/svidd/pkg/store/mirror"
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

	// registry follows the fleet registry into the SQLite copy (store "etcd"), else nil.
	registry *mirror.Mirror

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
	if a.store, err = a.openStore(st); err != nil {
		st.Close()
		return nil, fmt.Errorf("opening store: %w", err)
	}
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

// Listeners are the sockets an agent serves on. Run opens them from the configuration
// (Listen); a test or another front-end may open its own and hand them to Serve.
type Listeners struct {
	// API serves SDS, the Workload API and gRPC health to workloads; Admin serves the
	// admin API. Both are required.
	API, Admin *peercred.Listener
	// Metrics and Health are optional: nil means not served.
	Metrics, Health net.Listener
}

// Close closes every listener that is set.
func (ls Listeners) Close() {
	if ls.API != nil {
		ls.API.Close()
	}
	if ls.Admin != nil {
		ls.Admin.Close()
	}
	for _, l := range []net.Listener{ls.Metrics, ls.Health} {
		if l != nil {
			l.Close()
		}
	}
}

// Listen opens the listeners the configuration names: the api socket (0666: any local
// process may ask; the kernel tells who asked), the admin socket (0600, and only its owner
// and root are admitted), and the metrics and health TCP listeners when configured.
func (a *Agent) Listen() (ls Listeners, err error) {
	defer func() {
		if err != nil {
			ls.Close()
		}
	}()
	if ls.API, err = peercred.Listen(a.cfg.SocketPath, 0o666); err != nil {
		return ls, fmt.Errorf("api socket: %w", err)
	}
	if ls.Admin, err = peercred.Listen(a.cfg.AdminSocketPath, 0o600); err != nil {
		return ls, fmt.Errorf("admin socket: %w", err)
	}
	if addr := a.cfg.Telemetry.PrometheusAddress; addr != "" {
		if ls.Metrics, err = net.Listen("tcp", addr); err != nil {
			return ls, fmt.Errorf("metrics listener: %w", err)
		}
	}
	if addr := a.cfg.Health.Address; addr != "" {
		if ls.Health, err = net.Listen("tcp", addr); err != nil {
			return ls, fmt.Errorf("health listener: %w", err)
		}
	}
	return ls, nil
}

// Run opens the configured listeners and serves until ctx is done. It returns nil after a
// clean stop.
func (a *Agent) Run(ctx context.Context) error {
	ls, err := a.Listen()
	if err != nil {
		a.closeResources()
		return err
	}
	return a.Serve(ctx, ls)
}

// Serve serves on ls until ctx is done, then closes them. It returns nil after a clean stop.
func (a *Agent) Serve(ctx context.Context, ls Listeners) (err error) {
	defer a.closeResources()
	defer a.cache.stop() // ends background minting before the CA and store go
	defer ls.Close()
	a.started = time.Now().UTC()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	nEntries, stopWatch, err := a.loadEntries(ctx)
	if err != nil {
		return err
	}
	defer stopWatch()
	a.cache.setBundles([]*workload.Bundle{a.ca.Bundle()})

	apiLn := a.admission.Listener(ls.API) // closes connections over their uid's limits
	ls.Admin.Admit = a.admitAdmin
	gs, err := a.apiServer()
	if err != nil {
		return err
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	adminSrv, err := a.adminServer()
	if err != nil {
		return err
	}
	a.metrics.OnGather(a.gaugeMetrics)

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
	run("admin", func() error { return adminSrv.Serve(ctx, ls.Admin) })
	if a.registry != nil {
		run("registry", func() error { return a.registry.Run(ctx) })
	}
	run("api", func() error { return gs.Serve(preattestListener{Listener: apiLn, ctx: ctx, a: a}) })
	if ls.Metrics != nil {
		a.log.Info("metrics serving", "address", ls.Metrics.Addr().String(), "path", "/metrics")
		run("metrics", func() error { return telemetry.ServeMetrics(ctx, ls.Metrics, a.metrics.Handler()) })
	}
	if ls.Health != nil {
		a.log.Info("health serving", "address", ls.Health.Addr().String())
		h := telemetry.HealthHandler(a.cfg.Health.LivePath, a.cfg.Health.ReadyPath, a.ready)
		run("health", func() error { return telemetry.Serve(ctx, ls.Health, h) })
	}

	a.serving.Store(true)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	a.log.Info("svidd serving",
		"trust_domain", a.cfg.TrustDomain.Name(),
		"socket_path", ls.API.Path(),
		"admin_socket_path", ls.Admin.Path(),
		"entries", nEntries)
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

// loadEntries reconciles the config's entry blocks, subscribes to the store's changes and
// loads every entry into the cache. It returns how many entries were loaded and the function
// that ends the subscription.
func (a *Agent) loadEntries(ctx context.Context) (n int, stop func(), err error) {
	// The store is this process's alone (flock) and nothing serves yet, so the only writes
	// before the cache is loaded are the config reconciliation's: one listing feeds both,
	// unless reconciling changed the store (listing 10,000 entries takes ~50 ms, a fifth of
	// a cold start's budget).
	entries, err := a.store.ListEntries(ctx, store.Filter{})
	if err != nil {
		return 0, nil, fmt.Errorf("loading entries: %w", err)
	}
	changed, err := a.reconcileWith(ctx, entries)
	if err != nil {
		return 0, nil, err
	}
	// Subscribe to changes before loading, so nothing written in between is lost; a change
	// applied twice is harmless (Put is idempotent).
	stop = a.store.Watch(func(c store.Change) { a.enqueue(func() { a.cache.apply(c) }) })
	if changed {
		if entries, err = a.store.ListEntries(ctx, store.Filter{}); err != nil {
			stop()
			return 0, nil, fmt.Errorf("loading entries: %w", err)
		}
	}
	a.cache.load(entries)
	return len(entries), stop, nil
}

// admitAdmin admits the admin socket's owner and root; the socket's mode says the same, this
// holds even if the mode is changed.
func (a *Agent) admitAdmin(p *peercred.Peer) bool {
	if p.UID == uint32(os.Geteuid()) || p.UID == 0 {
		return true
	}
	a.log.Warn("refused admin connection from another user", "uid", p.UID, "pid", p.PID)
	return false
}

// apiServer is the gRPC server of the api socket, with SDS and the Workload API registered.
func (a *Agent) apiServer() (*grpc.Server, error) {
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
		return nil, err
	}
	wlSrv, err := workloadapi.New(workloadapi.Config{
		Watcher:     a,
		JWT:         a,
		TrustDomain: a.cfg.TrustDomain,
		Logger:      a.log,
		Metrics:     a.metrics.WorkloadAPI(),
	})
	if err != nil {
		return nil, err
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
	return gs, nil
}

// adminServer is the admin API over the store and the CA.
func (a *Agent) adminServer() (*admin.Server, error) {
	return admin.New(admin.Config{
		TrustDomain: a.cfg.TrustDomain,
		Store:       a.store,
		Bundle:      a.ca.Bundle,
		MaxSVIDTTL:  a.ca.MaxSVIDTTL(),
		Status:      a.status,
		CA:          caAdmin{a.ca},
		Ready:       a.ready,
		Logger:      a.log,
	})
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
