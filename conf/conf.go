package conf

import (
	_ "embed"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/svidd/svidd/pkg/entry"
)

// Allowed values of ca.key_type.
const (
	KeyTypeECP256  = "ec-p256"
	KeyTypeECP384  = "ec-p384"
	KeyTypeRSA2048 = "rsa-2048"
)

// Allowed values of agent.log_format.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// MaxSocketPathLen is the longest Unix socket path the kernel accepts: sun_path is 108 bytes
// including the terminating NUL.
const MaxSocketPathLen = 107

// Config is the validated runtime configuration. Load and LoadFile only return a Config that
// passes Validate.
type Config struct {
	TrustDomain     spiffeid.TrustDomain
	SocketPath      string // the SDS / Workload API socket Envoy connects to
	AdminSocketPath string // the svidctl socket
	DataDir         string // CA keys and the SQLite store; may be relative
	LogLevel        slog.Level
	LogFormat       string // LogFormatText or LogFormatJSON
	// NodeName names this host: in the subject of the CA certificates it asks an upstream
	// for (so the upstream's logs say which host asked). Default: the hostname.
	NodeName string
	// NodeGroups are the host's groups (agent.node_groups), in file order, without
	// duplicates. Every caller on the host has node:name:NodeName and node:group:G for each
	// (entry.NodeSelectors), so an entry can be scoped to a host or a group of hosts.
	NodeGroups []string
	// RegistrarOnly makes this host a registrar and nothing else: it serves the admin
	// socket, whose entry and bundle writes go straight to the fleet registry (store "etcd",
	// required), and no Workload API, CA or attestation. Operators register there with
	// svidctl; the hosts that serve workloads may then hold read-only etcd credentials.
	RegistrarOnly bool

	CA        CAConfig
	SDS       SDSConfig
	Telemetry TelemetryConfig
	Health    HealthConfig
	Limits    LimitsConfig
	// Federation is the federation {} block and the federates_with blocks (federation.go).
	Federation FederationConfig
	Store      StoreConfig // the zero value is SQLite in the data dir

	// Entries are the config-declared registration entries, in file order. Name is the
	// block label; Selectors are normalized; ID, Revision and timestamps are zero (the store
	// assigns them when the agent reconciles).
	Entries []entry.Entry
}

// CAConfig is the ca {} block.
type CAConfig struct {
	KeyType string        // KeyTypeECP256, KeyTypeECP384 or KeyTypeRSA2048
	CATTL   time.Duration // lifetime of each CA certificate
	SVIDTTL time.Duration // default X509-SVID lifetime; within entry.CheckSVIDTTL's bounds
	// JWTSVIDTTL is the default JWT-SVID lifetime; within the same bounds.
	JWTSVIDTTL time.Duration
	// Upstream signs the host's CA when set (Kind != ""); else the CA is self-signed.
	Upstream UpstreamConfig
}

// SDSConfig is the sds {} block: the special resource names of DESIGN.md "Protocol rules".
type SDSConfig struct {
	DefaultSVIDName       string
	DefaultBundleName     string
	DefaultAllBundlesName string
}

// TelemetryConfig is the telemetry {} block.
type TelemetryConfig struct {
	PrometheusAddress string // host:port; "" disables the metrics listener
}

// HealthConfig is the health {} block.
type HealthConfig struct {
	Address   string // host:port; "" disables the health listener
	LivePath  string
	ReadyPath string
}

// LimitsConfig is the limits {} block: what one uid may ask of the api socket (see
// pkg/admission), and the size of one message. Every value is positive.
type LimitsConfig struct {
	ConnectionsPerSecond     int // steady rate of new connections per uid
	ConnectionBurst          int // new connections a uid may make at once
	MaxOpenConnectionsPerUID int
	StreamsPerSecond         int // steady rate of new streams and calls per uid
	StreamBurst              int // new streams a uid may open at once
	MaxOpenStreamsPerUID     int // also each connection's HTTP/2 MAX_CONCURRENT_STREAMS
	MaxMessageBytes          int // largest gRPC message a client may send
	// MaxBytesPerUID bounds the bytes a uid's open streams make svidd hold (names and
	// stream state); MaxUnentitledBytesPerUID those of streams whose caller is entitled to
	// nothing, which then also pay for the stream itself (see pkg/admission.Account).
	MaxBytesPerUID           int
	MaxUnentitledBytesPerUID int
}

// Overrides carries svidd's command-line flags; a nil field was not set. Each field names
// the flag it comes from in diagnostics.
type Overrides struct {
	TrustDomain     *string // -trustDomain
	SocketPath      *string // -socketPath
	AdminSocketPath *string // -adminSocketPath
	DataDir         *string // -dataDir
	LogLevel        *string // -logLevel: debug, info, warn or error
}

// DefaultFile is the documented default configuration; loading it yields Default().
//
//go:embed svidd.hcl
var DefaultFile []byte

// Default returns the configuration used when no file and no flags are given.
func Default() Config {
	return Config{
		TrustDomain:     spiffeid.RequireTrustDomainFromString("example.org"),
		SocketPath:      "/tmp/agent/api.sock",
		AdminSocketPath: "/tmp/agent/admin.sock",
		DataDir:         "./.svidd",
		LogLevel:        slog.LevelInfo,
		LogFormat:       LogFormatText,
		NodeName:        defaultNodeName(),
		CA: CAConfig{
			KeyType:    KeyTypeECP256,
			CATTL:      24 * time.Hour,
			SVIDTTL:    time.Hour,
			JWTSVIDTTL: 5 * time.Minute,
		},
		SDS: SDSConfig{
			DefaultSVIDName:       "default",
			DefaultBundleName:     "ROOTCA",
			DefaultAllBundlesName: "ALL",
		},
		Telemetry: TelemetryConfig{PrometheusAddress: "127.0.0.1:9988"},
		Health:    HealthConfig{LivePath: "/live", ReadyPath: "/ready"},
		// Sized so nothing legitimate meets them: an Envoy reopening dozens of streams, and
		// the benchmarks' 10,000 streams on one connection and 1,000 connections from one
		// uid, each opened at once (so each burst equals its cap).
		Limits: LimitsConfig{
			ConnectionsPerSecond:     200,
			ConnectionBurst:          2048,
			MaxOpenConnectionsPerUID: 2048,
			StreamsPerSecond:         2000,
			StreamBurst:              20000,
			MaxOpenStreamsPerUID:     20000,
			MaxMessageBytes:          256 << 10,
			MaxBytesPerUID:           64 << 20,
			MaxUnentitledBytesPerUID: 4 << 20,
		},
		Federation: FederationConfig{MinRefreshInterval: time.Minute},
	}
}
