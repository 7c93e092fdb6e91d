package conf

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/svidd/svidd/pkg/entry"
)

// badConfigs is the table of broken snippets: each must fail with a diagnostic whose
// "summary; detail" contains want, positioned at line (0: no position, e.g. a flag).
var badConfigs = []struct {
	name string
	src  string
	want string
	line int
}{
	{"unknown key", "agent {\n  trust_domian = \"x.org\"\n}", `Unsupported argument; An argument named "trust_domian"`, 2},
	{"unknown block", "agent {}\nagnet {\n}", "Unsupported block type", 2},
	{"unknown nested block", "telemetry {\n  statsd {}\n}", "Unsupported block type", 2},
	{"duplicate block", "ca {}\nca {}", "Duplicate ca block", 2},
	{"syntax error", "agent {\n  socket_path = \n}", "Invalid expression", 2},
	{"wrong type", "agent {\n  socket_path = [\"/a\"]\n}", "Unsuitable value type; Unsuitable value: string required", 2},
	{"wrong type selectors", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = \"unix:uid:1\"\n}", "list of string required", 3},
	{"wrong type selector element", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = [\n    \"unix:uid:1\",\n    [\"x\"],\n  ]\n}", "string required", 5},
	{"variable", "agent {\n  data_dir = var.dir\n}", "Variables not allowed", 2},
	{"bad duration", "ca {\n  svid_ttl = \"1x\"\n}", `Invalid ca.svid_ttl; invalid duration "1x": use units like 30s, 5m, 1h`, 2},
	{"negative duration", "ca {\n\n  ca_ttl = \"-1h\"\n}", "ca_ttl must be positive, got -1h", 3},
	{"zero svid ttl", "ca { svid_ttl = \"0s\" }", "svid_ttl must be positive", 1},
	{"bundle endpoint profile", "federation {\n  bundle_endpoint {\n    address = \"0.0.0.0:8443\"\n    profile = \"https\"\n  }\n}", `profile "https" is not one of https_spiffe, https_web`, 4},
	{"bundle endpoint without address", "federation {\n  bundle_endpoint {\n    profile = \"https_spiffe\"\n  }\n}", "needs an address", 2},
	{"https_web without certificate", "federation {\n  bundle_endpoint {\n    address = \"0.0.0.0:8443\"\n    profile = \"https_web\"\n  }\n}", "needs cert_file and key_file", 4},
	{"https_spiffe with certificate", "federation {\n  bundle_endpoint {\n    address = \"0.0.0.0:8443\"\n    profile = \"https_spiffe\"\n    cert_file = \"/c.pem\"\n  }\n}", "cert_file and key_file are for https_web", 5},
	{"refresh hint too long", "federation {\n  bundle_endpoint {\n    address = \"0.0.0.0:8443\"\n    profile = \"https_spiffe\"\n    refresh_hint = \"3h\"\n  }\n}", "longer than a ninth of ca_ttl", 5},
	{"min refresh too short", "federation {\n  min_refresh_interval = \"100ms\"\n}", "min_refresh_interval must be at least 1s", 2},
	{"federates with own trust domain", "federates_with \"example.org\" {}", "this agent's own trust domain", 1},
	{"federates_with bad trust domain", "federates_with \"Not A Domain\" {}", "trust domain", 1},
	{"federates_with twice", "federates_with \"other.org\" {}\nfederates_with \"spiffe://other.org\" {}", "already has a federates_with block", 2},
	{"https_spiffe without endpoint ID", "federates_with \"other.org\" {\n  bundle_endpoint_url = \"https://other.org:8443\"\n  profile = \"https_spiffe\"\n}", "https_spiffe needs endpoint_spiffe_id", 1},
	{"bundle endpoint URL not https", "federates_with \"other.org\" {\n  bundle_endpoint_url = \"http://other.org\"\n  profile = \"https_web\"\n}", "is not an https:// URL", 2},
	{"federates_with without profile", "federates_with \"other.org\" {\n  bundle_endpoint_url = \"https://other.org\"\n}", "needs profile", 1},
	{"endpoint ID for https_web", "federates_with \"other.org\" {\n  bundle_endpoint_url = \"https://other.org\"\n  profile = \"https_web\"\n  endpoint_spiffe_id = \"spiffe://other.org/x\"\n}", "endpoint_spiffe_id is for https_spiffe", 4},
	{"entry federates with a workload ID", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = [\"unix:uid:1\"]\n  federates_with = [\"spiffe://other.org/x\"]\n}", "has a path", 4},
	{"entry federates with own trust domain", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = [\"unix:uid:1\"]\n  federates_with = [\"example.org\"]\n}", "its own trust domain", 1},
	{"svid ttl below minimum", "ca { svid_ttl = \"500ms\" }", "svid_ttl 500ms is shorter than the minimum 5s", 1},
	{"svid ttl too short to rotate", "ca { svid_ttl = \"4s\" }", "svid_ttl 4s is shorter than the minimum 5s: an SVID is replaced at about half its life", 1},
	{"ca ttl below minimum", "ca {\n  ca_ttl = \"29s\"\n}", "ca_ttl 29s is shorter than the minimum 30s", 2},
	{"entry ttl too short to rotate", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = [\"unix:uid:1\"]\n  x509_svid_ttl = \"1s\"\n}", "x509_svid_ttl 1s is shorter than the minimum 5s", 4},
	{"bad jwt duration", "ca {\n  jwt_svid_ttl = \"5\"\n}", `Invalid ca.jwt_svid_ttl; invalid duration "5"`, 2},
	{"node name with a space", "agent {\n  node_name = \"web 1\"\n}", `Invalid agent.node_name; node name "web 1" contains whitespace or a control character`, 2},
	{"node name with a slash", "agent {\n  node_name = \"eu/web-1\"\n}", `node name "eu/web-1" contains "/"`, 2},
	{"node groups not a list", "agent {\n  node_groups = \"web\"\n}", "list of string required", 2},
	{"empty node group", "agent {\n  node_groups = [\n    \"web\",\n    \"\",\n  ]\n}", "Invalid agent.node_groups; node group is empty", 4},
	{"node group with a newline", "agent {\n  node_groups = [\"web\", \"e\\nu\"]\n}", `node group "e\nu" contains whitespace or a control character`, 2},
	{"node group too long", "agent {\n  node_groups = [\"" + strings.Repeat("g", 254) + "\"]\n}", "longer than 253 bytes", 2},
	{"node group twice", "agent {\n  node_groups = [\n    \"web\",\n    \"eu\",\n    \"web\",\n  ]\n}", `node group "web" is listed twice (elements 1 and 3)`, 5},
	{"malformed node selector", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/a\"\n  selectors = [\"node:web-1\"]\n}", "node selectors are node:name:NAME or node:group:GROUP", 3},
	{"zero jwt svid ttl", "ca {\n\n  jwt_svid_ttl = \"0s\"\n}", "jwt_svid_ttl must be positive, got 0s", 3},
	{"jwt svid ttl below minimum", "ca { jwt_svid_ttl = \"10ms\" }", "jwt_svid_ttl 10ms is shorter than the minimum 5s", 1},
	{"jwt ttl rule", "ca {\n  svid_ttl     = \"1h\"\n  jwt_svid_ttl = \"4h1s\"\n}", "jwt_svid_ttl 4h0m1s is longer than a sixth of ca_ttl 24h (4h): the CA could not rotate with overlap", 3},
	{"jwt ttl rule from ca_ttl", "ca {\n  ca_ttl   = \"24m\"\n  svid_ttl = \"4m\"\n  jwt_svid_ttl = \"5m\"\n}", "jwt_svid_ttl 5m is longer than a sixth of ca_ttl 24m (4m)", 4},
	{"bad trust domain", "agent {\n  trust_domain = \"Example Org\"\n}", "Invalid agent.trust_domain; trust domain \"Example Org\"", 2},
	{"trust domain with path", "agent {\n  trust_domain = \"spiffe://example.org/web\"\n}", `has a path; write just the name, e.g. "example.org"`, 2},
	{"empty trust domain", "agent { trust_domain = \"\" }", "Invalid agent.trust_domain", 1},
	{"ttl rule", "ca {\n  ca_ttl   = \"24h\"\n  svid_ttl = \"5h\"\n}", "svid_ttl 5h is longer than a sixth of ca_ttl 24h (4h): the CA could not rotate with overlap", 3},
	{"socket path too long", "agent {\n  socket_path = \"/tmp/" + strings.Repeat("s", 110) + ".sock\"\n}", "longer than the kernel's limit of 107", 2},
	{"admin socket path relative", "agent {\n  admin_socket_path = \"admin.sock\"\n}", `socket path "admin.sock" must be absolute`, 2},
	{"same sockets", "agent {\n  socket_path = \"/tmp/a.sock\"\n  admin_socket_path = \"/tmp/a.sock\"\n}", "admin socket must be separate", 3},
	{"empty data dir", "agent {\n  data_dir = \"\"\n}", "data_dir must not be empty", 2},
	{"bad log level", "agent {\n  log_level = \"verbose\"\n}", `log level "verbose" is not one of debug, info, warn, error`, 2},
	{"bad log format", "agent {\n  log_format = \"xml\"\n}", `log format "xml" is not one of text, json`, 2},
	{"bad key type", "ca {\n  key_type = \"ed25519\"\n}", `key type "ed25519" is not one of`, 2},
	{"sds names equal", "sds {\n  default_svid_name = \"x\"\n  default_bundle_name = \"x\"\n}", `"x" is also sds.default_svid_name`, 3},
	{"sds name spiffe", "sds {\n  default_all_bundles_name = \"spiffe://example.org\"\n}", "starts with spiffe://", 2},
	{"sds name empty", "sds {\n  default_svid_name = \"\"\n}", "the name must not be empty", 2},
	{"bad prometheus address", "telemetry {\n  prometheus {\n    address = \"localhost\"\n  }\n}", `address "localhost" is not host:port`, 3},
	{"health equals prometheus", "health {\n  address = \"127.0.0.1:9988\"\n}", "also the prometheus address", 2},
	{"health paths equal", "health {\n  live_path = \"/ready\"\n}", `live_path and ready_path are both "/ready"`, 2},
	{"health path relative", "health {\n  live_path = \"live\"\n}", `HTTP path "live" must start with /`, 2},
	{"zero stream rate", "limits {\n  streams_per_second = 0\n}", "Invalid limits.streams_per_second; streams_per_second must be positive, got 0", 2},
	{"negative open streams", "limits {\n\n  max_open_streams_per_uid = -1\n}", "max_open_streams_per_uid must be positive, got -1", 3},
	{"fractional burst", "limits {\n  stream_burst = 1.5\n}", "Unsuitable value type", 2},
	{"tiny fractional rate", "limits {\n  streams_per_second = 0.000001\n}", "Unsuitable value type", 2},
	{"string limit", "limits {\n  connection_burst = \"many\"\n}", "Unsuitable value type", 2},
	{"tiny message bound", "limits {\n  max_message_bytes = 100\n}", "max_message_bytes must be at least 4096, got 100", 2},
	{"tiny byte budget", "limits {\n  max_bytes_per_uid = 1000\n}", "max_bytes_per_uid must be at least 65536, got 1000", 2},
	{"zero unentitled budget", "limits {\n  max_unentitled_bytes_per_uid = 0\n}", "max_unentitled_bytes_per_uid must be at least 65536, got 0", 2},
	{"huge connection cap", "limits {\n  max_open_connections_per_uid = 4294967296\n}", "max_open_connections_per_uid must be at most 2147483647", 2},
	{"unknown limit", "limits {\n  streams_per_minute = 5\n}", `An argument named "streams_per_minute" is not expected here`, 2},
	{"bad selector at its line", "entry \"backend\" {\n  spiffe_id = \"spiffe://example.org/backend\"\n  selectors = [\n    \"unix:uid:1000\",\n    \"unix:uid:abc\",\n  ]\n}",
		`Invalid selectors in entry "backend"; selector "unix:uid:abc": "abc" is not a numeric id`, 5},
	{"unknown selector", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"k8s:ns:default\"]\n}", `unknown selector "k8s:ns"`, 3},
	{"no selectors", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = []\n}", "at least one selector is required", 3},
	{"missing selectors", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n}", "at least one selector is required", 1},
	{"missing spiffe id", "\nentry \"b\" {\n  selectors = [\"unix:uid:1\"]\n}", `Invalid spiffe_id in entry "b"; spiffe ID is required`, 2},
	{"spiffe id unparsable", "entry \"b\" {\n  spiffe_id = \"http://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n}", `spiffe ID "http://example.org/b"`, 2},
	{"spiffe id other trust domain", "entry \"b\" {\n  selectors = [\"unix:uid:1\"]\n  spiffe_id = \"spiffe://other.org/b\"\n}", `is not in trust domain "example.org"`, 3},
	{"spiffe id without path", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org\"\n  selectors = [\"unix:uid:1\"]\n}", "has no path", 2},
	{"bad dns name", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n  dns_names = [\n    \"ok.local\",\n    \"bad_name.local\",\n  ]\n}", `DNS name "bad_name.local" has invalid character`, 6},
	{"entry ttl bad", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n  x509_svid_ttl = \"30\"\n}", `invalid duration "30"`, 4},
	{"entry ttl zero", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n  x509_svid_ttl = \"0s\"\n}", "x509_svid_ttl must be positive", 4},
	{"entry ttl rule", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n  x509_svid_ttl = \"5h\"\n}", "x509_svid_ttl 5h is longer than a sixth of ca_ttl 24h (4h)", 4},
	{"duplicate entry label", "entry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n}\nentry \"b\" {\n  spiffe_id = \"spiffe://example.org/c\"\n  selectors = [\"unix:uid:2\"]\n}",
		`Duplicate entry "b"; an entry block named "b" is already defined at test.hcl:1:7`, 5},
	{"duplicate registration", "entry \"a\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\", \"unix:gid:2\"]\n}\n\nentry \"b\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:gid:2\", \"unix:uid:1\", \"unix:uid:1\"]\n}",
		`Duplicate registration in entry "b"; entry "b" has the same spiffe_id and selectors as entry "a" at test.hcl:1:1`, 6},
	{"empty entry name", "entry \"\" {\n  spiffe_id = \"spiffe://example.org/b\"\n  selectors = [\"unix:uid:1\"]\n}", "an entry needs a name", 1},
}

// findDiag returns the diagnostic whose "summary; detail" contains want.
func findDiag(diags hcl.Diagnostics, want string) *hcl.Diagnostic {
	for _, d := range diags {
		if strings.Contains(d.Summary+"; "+d.Detail, want) {
			return d
		}
	}
	return nil
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range badConfigs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("test.hcl", []byte(tc.src), Overrides{})
			var de *DiagError
			if !errors.As(err, &de) {
				t.Fatalf("Load error = %v (%T), want *DiagError", err, err)
			}
			d := findDiag(de.Diags, tc.want)
			if d == nil {
				t.Fatalf("no diagnostic contains %q; got:\n%s", tc.want, err)
			}
			if d.Severity != hcl.DiagError {
				t.Errorf("severity = %v, want error", d.Severity)
			}
			if d.Subject == nil {
				t.Fatalf("diagnostic %q has no position, want line %d", d.Summary, tc.line)
			}
			if d.Subject.Filename != "test.hcl" || d.Subject.Start.Line != tc.line {
				t.Errorf("diagnostic at %s:%d, want test.hcl:%d\n%s", d.Subject.Filename, d.Subject.Start.Line, tc.line, err)
			}
			// One mistake, one diagnostic: a conversion failure is not reported again by
			// validation. (gohcl itself reports a variable twice.)
			want := 1
			if tc.name == "variable" {
				want = 2
			}
			if n := len(de.Diags); n != want {
				t.Errorf("got %d diagnostics, want %d:\n%s", n, want, err)
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	_, err := Load("dir/svidd.hcl", []byte("ca {\n  svid_ttl = \"1x\"\n}\n"), Overrides{})
	want := `dir/svidd.hcl:2:3: Invalid ca.svid_ttl; invalid duration "1x": use units like 30s, 5m, 1h`
	if err == nil || err.Error() != want {
		t.Fatalf("Error() = %q\nwant      %q", err, want)
	}
}

func TestMultipleErrorsAllReported(t *testing.T) {
	src := `agent {
  trust_domain = "Bad Domain"
  log_level    = "loud"
  colour       = "red"
}
ca {
  svid_ttl = "forever"
}
entry "web" {
  spiffe_id = "spiffe://example.org/web"
  selectors = ["unix:uid:x"]
}
`
	_, err := Load("m.hcl", []byte(src), Overrides{})
	var de *DiagError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want *DiagError", err)
	}
	wantLines := map[string]int{
		"agent.trust_domain": 2,
		"agent.log_level":    3,
		`"colour"`:           4,
		"ca.svid_ttl":        7,
		`selectors in entry`: 11,
	}
	for want, line := range wantLines {
		d := findDiag(de.Diags, want)
		if d == nil || d.Subject == nil || d.Subject.Start.Line != line {
			t.Errorf("want a diagnostic with %q at line %d; got:\n%s", want, line, err)
		}
	}
	if len(de.Diags) != len(wantLines) {
		t.Errorf("got %d diagnostics, want %d:\n%s", len(de.Diags), len(wantLines), err)
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != len(de.Diags) {
		t.Errorf("Error() has %d lines for %d diagnostics", got, len(de.Diags))
	}
}

func TestDefaults(t *testing.T) {
	def := Default()
	if err := def.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if def.TrustDomain.Name() != "example.org" || def.CA.SVIDTTL != time.Hour || def.CA.JWTSVIDTTL != 5*time.Minute ||
		def.LogLevel != slog.LevelInfo || def.Health.Address != "" {
		t.Errorf("Default() = %+v, does not match DESIGN.md", def)
	}
	for _, tc := range []struct {
		name string
		load func() (Config, error)
	}{
		{"no file", func() (Config, error) { return LoadFile("", Overrides{}) }},
		{"empty file", func() (Config, error) { return Load("empty.hcl", nil, Overrides{}) }},
		{"empty blocks", func() (Config, error) {
			return Load("blocks.hcl", []byte("agent {}\nca {}\nsds {}\ntelemetry {\n prometheus {}\n}\nhealth {}\nlimits {}\n"), Overrides{})
		}},
		{"default file", func() (Config, error) { return Load("svidd.hcl", DefaultFile, Overrides{}) }},
		{"default file on disk", func() (Config, error) { return LoadFile("svidd.hcl", Overrides{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.load()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg, def) {
				t.Errorf("got  %+v\nwant %+v", cfg, def)
			}
		})
	}
}

func TestFileValues(t *testing.T) {
	src := `
agent {
  trust_domain      = "spiffe://prod.example.com"
  socket_path       = "/run/svidd/api.sock"
  admin_socket_path = "/run/svidd/admin.sock"
  data_dir          = "/var/lib/svidd"
  log_level         = "debug"
  log_format        = "json"
  node_name         = "web-1"
  node_groups       = ["web", "eu"]
}
ca {
  key_type = "ec-p384"
  ca_ttl   = "168h"
  svid_ttl = "90m"
  jwt_svid_ttl = "2m"
}
sds {
  default_svid_name        = "svid"
  default_bundle_name      = "bundle"
  default_all_bundles_name = "all"
}
telemetry {
  prometheus {
    address = ""
  }
}
health {
  address    = "127.0.0.1:0"
  live_path  = "/healthz/live"
  ready_path = "/healthz/ready"
}
limits {
  connections_per_second       = 10
  connection_burst             = 20
  max_open_connections_per_uid = 30
  streams_per_second           = 40
  stream_burst                 = 50
  max_open_streams_per_uid     = 60
  max_message_bytes            = 65536
  max_bytes_per_uid            = 8388608
  max_unentitled_bytes_per_uid = 1048576
}
entry "backend" {
  spiffe_id     = "spiffe://prod.example.com/backend"
  selectors     = ["unix:uid:1000", "unix:path:/usr/bin/envoy", "unix:uid:1000"]
  x509_svid_ttl = "30m"
  dns_names     = ["backend.local"]
}
entry "frontend" {
  spiffe_id = "spiffe://prod.example.com/frontend"
  selectors = ["systemd:unit:front.service"]
}
`
	got, err := Load("full.hcl", []byte(src), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("prod.example.com")
	want := Config{
		TrustDomain:     td,
		SocketPath:      "/run/svidd/api.sock",
		AdminSocketPath: "/run/svidd/admin.sock",
		DataDir:         "/var/lib/svidd",
		LogLevel:        slog.LevelDebug,
		LogFormat:       LogFormatJSON,
		NodeName:        "web-1",
		NodeGroups:      []string{"web", "eu"},
		CA:              CAConfig{KeyType: KeyTypeECP384, CATTL: 168 * time.Hour, SVIDTTL: 90 * time.Minute, JWTSVIDTTL: 2 * time.Minute},
		SDS:             SDSConfig{DefaultSVIDName: "svid", DefaultBundleName: "bundle", DefaultAllBundlesName: "all"},
		Telemetry:       TelemetryConfig{PrometheusAddress: ""},
		Health:          HealthConfig{Address: "127.0.0.1:0", LivePath: "/healthz/live", ReadyPath: "/healthz/ready"},
		Limits: LimitsConfig{ConnectionsPerSecond: 10, ConnectionBurst: 20, MaxOpenConnectionsPerUID: 30,
			StreamsPerSecond: 40, StreamBurst: 50, MaxOpenStreamsPerUID: 60, MaxMessageBytes: 65536,
			MaxBytesPerUID: 8 << 20, MaxUnentitledBytesPerUID: 1 << 20},
		Federation: FederationConfig{MinRefreshInterval: time.Minute},
		Entries: []entry.Entry{
			{
				Name:     "backend",
				SPIFFEID: spiffeid.RequireFromPath(td, "/backend"),
				// Normalized: sorted, duplicates dropped.
				Selectors:   []entry.Selector{{Type: "unix", Value: "path:/usr/bin/envoy"}, {Type: "unix", Value: "uid:1000"}},
				X509SVIDTTL: 30 * time.Minute,
				DNSNames:    []string{"backend.local"},
			},
			{
				Name:      "frontend",
				SPIFFEID:  spiffeid.RequireFromPath(td, "/frontend"),
				Selectors: []entry.Selector{{Type: "systemd", Value: "unit:front.service"}},
			},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("loaded config does not validate: %v", err)
	}
}

func TestJSONSyntax(t *testing.T) {
	src := `{
  "agent": {"trust_domain": "example.org"},
  "entry": {"web": {"spiffe_id": "spiffe://example.org/web", "selectors": ["unix:uid:1", "unix:uid:nope"]}}
}`
	_, err := Load("svidd.hcl.json", []byte(src), Overrides{})
	var de *DiagError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want *DiagError", err)
	}
	d := findDiag(de.Diags, `"nope" is not a numeric id`)
	if d == nil || d.Subject == nil || d.Subject.Start.Line != 3 {
		t.Fatalf("want the bad selector at line 3, got:\n%s", err)
	}
	ok := strings.Replace(src, "unix:uid:nope", "unix:gid:2", 1)
	cfg, err := Load("svidd.hcl.json", []byte(ok), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Entries) != 1 || len(cfg.Entries[0].Selectors) != 2 {
		t.Errorf("entries = %+v", cfg.Entries)
	}
}

func ptr(s string) *string { return &s }

func TestOverrides(t *testing.T) {
	file := `agent {
  trust_domain = "file.org"
  socket_path  = "/file/api.sock"
  log_level    = "error"
  data_dir     = "/file/data"
}
`
	o := Overrides{
		TrustDomain:     ptr("spiffe://flag.org"),
		SocketPath:      ptr("/flag/api.sock"),
		AdminSocketPath: ptr("/flag/admin.sock"),
		LogLevel:        ptr("debug"),
	}
	cfg, err := Load("o.hcl", []byte(file), o)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain.Name() != "flag.org" || cfg.SocketPath != "/flag/api.sock" || cfg.AdminSocketPath != "/flag/admin.sock" || cfg.LogLevel != slog.LevelDebug {
		t.Errorf("flags did not beat the file: %+v", cfg)
	}
	if cfg.DataDir != "/file/data" {
		t.Errorf("DataDir = %q: the file's value should stay when no flag is given", cfg.DataDir)
	}

	cfg, err = LoadFile("", Overrides{DataDir: ptr("/flag/data")})
	if err != nil {
		t.Fatal(err)
	}
	if want := Default(); cfg.DataDir != "/flag/data" || cfg.SocketPath != want.SocketPath {
		t.Errorf("flags over defaults: %+v", cfg)
	}
}

func TestBadOverrides(t *testing.T) {
	// An entry in file.org: a flag moving the trust domain makes it invalid, and the
	// diagnostic still points at the entry in the file.
	file := "agent { trust_domain = \"file.org\" }\nentry \"e\" {\n  spiffe_id = \"spiffe://file.org/e\"\n  selectors = [\"unix:uid:1\"]\n}\n"
	for _, tc := range []struct {
		name string
		o    Overrides
		want string
		line int // 0: the flag itself, no position
	}{
		{"trust domain", Overrides{TrustDomain: ptr("Not Valid")}, "flag -trustDomain: invalid agent.trust_domain; trust domain \"Not Valid\"", 0},
		{"trust domain empty", Overrides{TrustDomain: ptr("")}, "flag -trustDomain:", 0},
		{"socket path", Overrides{SocketPath: ptr("rel.sock")}, "flag -socketPath: invalid agent.socket_path; socket path \"rel.sock\" must be absolute", 0},
		{"admin socket path long", Overrides{AdminSocketPath: ptr("/" + strings.Repeat("a", 120))}, "flag -adminSocketPath:", 0},
		{"data dir", Overrides{DataDir: ptr("")}, "flag -dataDir:", 0},
		{"log level", Overrides{LogLevel: ptr("trace")}, `flag -logLevel: invalid agent.log_level; log level "trace"`, 0},
		{"flag trust domain vs file entry", Overrides{TrustDomain: ptr("flag.org")}, `is not in trust domain "flag.org"`, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("o.hcl", []byte(file), tc.o)
			var de *DiagError
			if !errors.As(err, &de) {
				t.Fatalf("err = %v, want *DiagError", err)
			}
			d := findDiag(de.Diags, tc.want)
			if d == nil {
				t.Fatalf("no diagnostic contains %q:\n%s", tc.want, err)
			}
			switch {
			case tc.line == 0 && d.Subject != nil:
				t.Errorf("flag diagnostic has a file position %s", d.Subject)
			case tc.line != 0 && (d.Subject == nil || d.Subject.Start.Line != tc.line):
				t.Errorf("diagnostic position %v, want line %d", d.Subject, tc.line)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Error() = %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestValidateProgrammatic(t *testing.T) {
	c := Default()
	c.CA.SVIDTTL = 5 * time.Hour
	c.Entries = []entry.Entry{{Name: "x", SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/x"), Selectors: []entry.Selector{{Type: "unix", Value: "uid:1"}}}}
	err := c.Validate()
	var de *DiagError
	if !errors.As(err, &de) {
		t.Fatalf("Validate() = %v, want *DiagError", err)
	}
	for _, want := range []string{"svid_ttl 5h is longer than a sixth of ca_ttl 24h (4h)", `Invalid spiffe_id in entry "x"; spiffe ID "spiffe://other.org/x" is not in trust domain`} {
		if d := findDiag(de.Diags, want); d == nil || d.Subject != nil {
			t.Errorf("want a position-less diagnostic with %q, got:\n%s", want, err)
		}
	}
	if (Config{}).Validate() == nil {
		t.Error("the zero Config validated")
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "svidd.hcl")
	if err := os.WriteFile(path, []byte("agent {\n  log_level = \"warn\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadFile(path, Overrides{})
	if err != nil || cfg.LogLevel != slog.LevelWarn {
		t.Fatalf("LoadFile = %+v, %v", cfg, err)
	}
	_, err = LoadFile(filepath.Join(dir, "missing.hcl"), Overrides{})
	var de *DiagError
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &de) {
		t.Errorf("missing file: err = %v, want a wrapped fs.ErrNotExist", err)
	}
	if err := os.WriteFile(path, []byte("ca {\n  key_type = \"dsa\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadFile(path, Overrides{})
	if !errors.As(err, &de) || !strings.HasPrefix(err.Error(), path+":2:3: ") {
		t.Errorf("err = %v, want a diagnostic at %s:2:3", err, path)
	}
}

func TestDiagErrorWrite(t *testing.T) {
	src := "agent {\n  log_level = \"verbose\"\n}\n"
	_, err := Load("w.hcl", []byte(src), Overrides{SocketPath: ptr("x")})
	var de *DiagError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v", err)
	}
	for _, color := range []bool{false, true} {
		var b bytes.Buffer
		if err := de.Write(&b, color); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for _, want := range []string{"Error", "Invalid agent.log_level", "on w.hcl line 2", `log_level = "verbose"`, "flag -socketPath"} {
			if !strings.Contains(out, want) {
				t.Errorf("color=%v: output lacks %q:\n%s", color, want, out)
			}
		}
		if hasEsc := strings.Contains(out, "\x1b["); hasEsc != color {
			t.Errorf("color=%v but escape codes present=%v", color, hasEsc)
		}
	}
}

// TestExamples loads every *.hcl under ../examples so the examples never rot. The folder
// may not exist yet, or hold no config; every file that exists must load.
func TestExamples(t *testing.T) {
	files, err := hclFiles("../examples")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d example config(s)", len(files))
	for _, path := range files {
		t.Run(path, func(t *testing.T) {
			cfg, err := LoadFile(path, Overrides{})
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// hclFiles lists the *.hcl files under root, recursively; none if root does not exist.
func hclFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".hcl") {
			files = append(files, path)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return files, err
}

func TestHCLFiles(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.hcl", "envoy/b.yaml", "entries/c.hcl", "entries/deep/d.hcl"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := hclFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "a.hcl"), filepath.Join(dir, "entries/c.hcl"), filepath.Join(dir, "entries/deep/d.hcl")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hclFiles = %v, want %v", got, want)
	}
	if got, err := hclFiles(filepath.Join(dir, "missing")); err != nil || len(got) != 0 {
		t.Errorf("missing root: %v, %v", got, err)
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Hour:           "5h",
		90 * time.Minute:        "1h30m",
		30 * time.Minute:        "30m",
		time.Hour + time.Second: "1h0m1s",
		1500 * time.Millisecond: "1.5s",
		-time.Hour:              "-1h",
		0:                       "0s",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestShortCATTLShrinksDefaults: setting only ca_ttl shrinks the default SVID lifetimes to a
// sixth of it instead of failing on keys the operator never wrote; explicit ones still fail.
func TestShortCATTLShrinksDefaults(t *testing.T) {
	cfg, err := Load("t.hcl", []byte("ca {\n  ca_ttl = \"1h\"\n}\n"), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CA.SVIDTTL != 10*time.Minute || cfg.CA.JWTSVIDTTL != 5*time.Minute {
		t.Fatalf("svid_ttl %s, jwt_svid_ttl %s; want 10m and 5m", cfg.CA.SVIDTTL, cfg.CA.JWTSVIDTTL)
	}
	cfg, err = Load("t.hcl", []byte("ca {\n  ca_ttl = \"30s\"\n}\n"), Overrides{})
	if err != nil || cfg.CA.SVIDTTL != 5*time.Second || cfg.CA.JWTSVIDTTL != 5*time.Second {
		t.Fatalf("30s CA: %+v, %v", cfg.CA, err)
	}
	// Below the shortest CA lifetime only ca_ttl is reported, not the defaults derived from it.
	_, err = Load("t.hcl", []byte("ca {\n  ca_ttl = \"12s\"\n}\n"), Overrides{})
	if err == nil || !strings.Contains(err.Error(), "ca_ttl 12s is shorter than the minimum 30s") || strings.Contains(err.Error(), "svid_ttl") {
		t.Fatalf("12s CA: %v; want one error, about ca_ttl", err)
	}
	if _, err := Load("t.hcl", []byte("ca {\n  ca_ttl = \"1h\"\n  svid_ttl = \"1h\"\n}\n"), Overrides{}); err == nil || !strings.Contains(err.Error(), "t.hcl:3:") {
		t.Fatalf("explicit svid_ttl over the limit: %v, want an error at line 3", err)
	}
}
