package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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
	"github.com/svidd/svidd/pkg/federation"
	"github.com/svidd/svidd/pkg/fleet"
	"github.com/svidd/svidd/pkg/ownership"
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
	// Fresh lets New start when the data dir holds the CA but no store, or a store but no
	// CA (`svidd run -fresh`): the missing one is created, an empty store or a new CA (which
	// changes the trust bundle). Without it New refuses such a data dir (see checkState).
	Fresh bool
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
	// fed owns the federated bundles (federation.go).
	fed *federation.Manager

	// registry follows the fleet registry into the SQLite copy (store "etcd"), else nil.
	registry *mirror.Mirror
	// etcd is the host's one connection to the fleet registry (store "etcd"), else nil.
	etcd *clientv3.Client
	// node is the host's node selectors (entry.NodeSelectors of agent.node_name and
	// node_groups), added to every caller's selectors (record).
	node []entry.Selector
	// fleet shares the JWT keys across the fleet (store "etcd", fleet.go), else nil.
	fleet *fleetKeys
	// sharedBundles fetches federated bundles once per fleet (store "etcd"), else nil.
	sharedBundles *fleet.SharedBundles
	// nodeRecord publishes this host's node record (store "etcd"), else nil; set while
	// Serve starts, read by the admin API.
	nodeRecord atomic.Pointer[fleet.NodeRecord]
	// reg is a registrar-only host's store (registrar.go), else nil: then nothing but the
	// admin API runs.
	reg *registrarStore

	serving atomic.Bool
	started time.Time
	// callers remembers the last callers, for svidctl callers and the "no identity" log.
	callers callerLog

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
	if cfg.RegistrarOnly {
		return newRegistrar(cfg)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, qready: make(chan struct{}, 1), node: entry.NodeSelectors(cfg.NodeName, cfg.NodeGroups)}
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
	if err := checkState(cfg.DataDir, cfg.Fresh, a.log); err != nil {
		return nil, err
	}

	a.metrics = telemetry.New(telemetry.Config{Logger: a.log})
	st, err := store.OpenSQLite(context.Background(), filepath.Join(cfg.DataDir, storeFileName))
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	if a.store, err = a.openStore(st); err != nil {
		st.Close()
		return nil, fmt.Errorf("opening store: %w", err)
	}
	upstream, err := newUpstream(cfg.CA.Upstream, a.log)
	if err != nil {
		return nil, err
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
		// With an upstream configured the CA never self-signs (README "Running a fleet").
		Upstream:        upstream,
		NodeName:        cfg.NodeName,
		OnUpstreamError: func(error) { a.metrics.UpstreamFailed() },
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
		MaxBytesPerUID:           lim.MaxBytesPerUID,
		MaxUnentitledBytesPerUID: lim.MaxUnentitledBytesPerUID,
		Logger:                   a.log.With("component", "admission"),
		OnReject:                 a.metrics.AdmissionRefused,
		OnLogSuppressed:          a.metrics.LogLineSuppressed,
	})
	if err != nil {
		return nil, err
	}
	a.cache = newCache(a.log.With("component", "cache"), a.ca, time.Now)
	a.cache.scheduleRotation = a.scheduleRotation
	a.cache.onMint = a.metrics.SVIDMinted
	a.cache.onRotate = a.metrics.SVIDRotated
	if err := a.newFleet(st); err != nil {
		return nil, err
	}
	if err := a.newFederation(); err != nil {
		return nil, err
	}
	ok = true
	return a, nil
}

// Files of the data dir.
const (
	storeFileName = "svidd.db"
	lockFileName  = "svidd.lock"
)

// trustedFiles are the files of the data dir svidd opens and believes, with what errors call
// them: whoever could replace one could swap the store (and be served another workload's
// SPIFFE ID after a restart) or the CA.
var trustedFiles = []struct{ name, what string }{
	{storeFileName, "store"},
	{storeFileName + "-wal", "store write-ahead log"},
	{storeFileName + "-shm", "store shared-memory file"},
	{storeFileName + "-journal", "store rollback journal"},
	{ca.StateFileName, "CA state file"},
	{lockFileName, "lock file"},
}

// prepareDataDir creates dir 0700, owned by svidd, or checks that an existing one is svidd's
// (owned by its user or root, writable by nobody else, not renameable by another user through
// a parent: pkg/ownership), then checks each file svidd trusts in it the same way, before
// anything is opened.
func prepareDataDir(dir string) error {
	if err := ownership.Dir("data dir", dir, 0o700); err != nil {
		return err
	}
	for _, f := range trustedFiles {
		if err := ownership.File(f.what, filepath.Join(dir, f.name)); err != nil {
			return fmt.Errorf("data dir %s: %w", dir, err)
		}
	}
	return nil
}

// checkState refuses a data dir that holds the CA without the store, or the store without
// the CA, unless fresh: the missing half is not something to recreate without a word. A new
// CA changes the trust bundle every workload and peer holds; a new store forgets every
// registration entry. A fresh data dir (neither) is the first start. A store file of zero
// bytes counts as missing: SQLite would take it for a new, empty database.
func checkState(dir string, fresh bool, log *slog.Logger) error {
	present := func(name string, nonEmpty bool) (bool, error) {
		fi, err := os.Stat(filepath.Join(dir, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("data dir %s: %w", dir, err)
		}
		return !nonEmpty || fi.Size() > 0, nil
	}
	haveStore, err := present(storeFileName, true)
	if err != nil {
		return err
	}
	haveCA, err := present(ca.StateFileName, false)
	if err != nil {
		return err
	}
	switch {
	case haveStore == haveCA:
		return nil
	case fresh && haveCA:
		log.Warn("starting with a new, empty store beside the existing CA (-fresh)", "data_dir", dir)
		return nil
	case fresh:
		log.Warn("starting with a new CA beside the existing store (-fresh): the trust bundle changes", "data_dir", dir)
		return nil
	case haveCA:
		return fmt.Errorf("data dir %s holds the CA (%s) but no store (%s is missing or empty): the registration entries are gone, and svidd would start with none. "+
			"Restore %s from a backup; or, to start with no entries on purpose (keeping the CA), run svidd with -fresh once",
			dir, ca.StateFileName, storeFileName, storeFileName)
	default:
		return fmt.Errorf("data dir %s holds a store (%s) but no CA (%s is missing): svidd would create a new CA, and every workload and peer holding the current trust bundle would reject what it signs. "+
			"Restore %s from a backup; or, to create a new CA on purpose, run svidd with -fresh once",
			dir, storeFileName, ca.StateFileName, ca.StateFileName)
	}
}

// lockDataDir takes an exclusive, non-blocking flock on DIR/svidd.lock (never through a
// symbolic link: prepareDataDir checked the file, O_NOFOLLOW keeps it that way).
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
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
	if a.etcd != nil {
		a.etcd.Close()
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
	// BundleEndpoint serves the trust domain's bundle to federated peers; nil: not served.
	BundleEndpoint net.Listener
}

// Close closes every listener that is set.
func (ls Listeners) Close() {
	if ls.API != nil {
		ls.API.Close()
	}
	if ls.Admin != nil {
		ls.Admin.Close()
	}
	for _, l := range []net.Listener{ls.Metrics, ls.Health, ls.BundleEndpoint} {
		if l != nil {
			l.Close()
		}
	}
}

// Listen opens the listeners the configuration names: the api socket (0666: any local
// process may ask; the kernel tells who asked), the admin socket (0600, and only its owner
// and root are admitted), the metrics and health TCP listeners and the federation bundle
// endpoint when configured.
func (a *Agent) Listen() (Listeners, error) { return Listen(a.cfg.Config) }

// Listen opens the listeners cfg names, as (*Agent).Listen does. svidd opens them before New,
// so that a start that cannot listen (a socket or port in use) fails before it creates the
// data dir, the store or a CA.
func Listen(cfg conf.Config) (ls Listeners, err error) {
	defer func() {
		if err != nil {
			ls.Close()
		}
	}()
	if !cfg.RegistrarOnly { // a registrar serves no workload (registrar.go)
		if ls.API, err = peercred.Listen(cfg.SocketPath, 0o666); err != nil {
			return ls, fmt.Errorf("api socket: %w", err)
		}
	}
	if ls.Admin, err = peercred.Listen(cfg.AdminSocketPath, 0o600); err != nil {
		return ls, fmt.Errorf("admin socket: %w", err)
	}
	if cfg.RegistrarOnly {
		return ls, nil
	}
	if addr := cfg.Telemetry.PrometheusAddress; addr != "" {
		if ls.Metrics, err = net.Listen("tcp", addr); err != nil {
			return ls, fmt.Errorf("metrics listener: %w", err)
		}
	}
	if addr := cfg.Health.Address; addr != "" {
		if ls.Health, err = net.Listen("tcp", addr); err != nil {
			return ls, fmt.Errorf("health listener: %w", err)
		}
	}
	if ls.BundleEndpoint, err = listenBundleEndpoint(cfg); err != nil {
		return ls, err
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
	if a.reg != nil {
		return a.serveRegistrar(ctx, ls)
	}
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
	a.warnConfigEntries(a.cfg.Entries)
	a.cache.setBundles([]*workload.Bundle{a.ownBundle()})

	apiLn := a.admission.Listener(ls.API) // closes connections over their uid's limits
	ls.Admin.Admit = a.admitAdmin
	calls := &callTracker{}
	gs, err := a.apiServer(calls.serverOptions()...)
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
	a.startFleet(ctx, run)
	if err := a.startFederation(ctx, ls.BundleEndpoint, run); err != nil {
		cancel()
		wg.Wait()
		return err
	}
	run("admin", func() error { return adminSrv.Serve(ctx, ls.Admin) })
	if a.registry != nil {
		run("registry", func() error { return a.registry.Run(ctx) })
	}
	if err := a.runNodeRecord(ctx, run); err != nil {
		cancel()
		wg.Wait()
		return err
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
	a.stopAPI(gs, calls, 5*time.Second)
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
func (a *Agent) apiServer(extra ...grpc.ServerOption) (*grpc.Server, error) {
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
	opts := append(a.admission.ServerOptions(),
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
		wire.ServerOption())
	gs := grpc.NewServer(append(opts, extra...)...)
	sdsSrv.Register(gs)
	wlSrv.Register(gs)
	return gs, nil
}

// adminServer is the admin API over the store and the CA.
func (a *Agent) adminServer() (*admin.Server, error) {
	return admin.New(admin.Config{
		TrustDomain: a.cfg.TrustDomain,
		Store:       a.adminStore(),
		Bundle:      a.ownBundle,
		CATTL:       a.ca.CATTL(),
		Status:      a.status,
		CA:          caAdmin{a.ca},
		Federation:  admin.NewFederation(a.fed),
		Ready:       a.ready,
		Explainer:   a,
		Nodes:       a.nodesAdmin(),
		Logger:      a.log,
	})
}

func (a *Agent) ready(ctx context.Context) error {
	if !a.serving.Load() {
		return errors.New("api socket not serving")
	}
	if a.ca.Bundle() == nil {
		return errors.New("CA not loaded")
	}
	// Only an expired CA makes the agent unready: an upstream that is down is not, while
	// the active CA still signs (/live never looks at either).
	if na := a.ca.NotAfter(); !time.Now().Before(na) {
		return fmt.Errorf("active CA expired at %s and no successor could be obtained", na.UTC().Format(time.RFC3339))
	}
	if err := a.store.Ping(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}
