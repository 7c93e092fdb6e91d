package conf

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/svidd/svidd/pkg/entry"
)

// The file schema. Every attribute is a pointer so "not written" (keep the default) differs
// from "written empty"; each has an attr_range twin so semantic diagnostics point at it.
// gohcl rejects unknown blocks and attributes and wrong types with their own ranges.

type fileRoot struct {
	Agent     *fileAgent     `hcl:"agent,block"`
	CA        *fileCA        `hcl:"ca,block"`
	SDS       *fileSDS       `hcl:"sds,block"`
	Telemetry *fileTelemetry `hcl:"telemetry,block"`
	Health    *fileHealth    `hcl:"health,block"`
	Limits    *fileLimits    `hcl:"limits,block"`
	Store     *fileStore     `hcl:"store,block"`
	Entries   []fileEntry    `hcl:"entry,block"`
	// Federation: see federation.go.
	Federation    *fileFederation     `hcl:"federation,block"`
	FederatesWith []fileFederatesWith `hcl:"federates_with,block"`
}

type fileAgent struct {
	TrustDomain          *string        `hcl:"trust_domain,optional"`
	TrustDomainRange     hcl.Range      `hcl:"trust_domain,attr_range"`
	SocketPath           *string        `hcl:"socket_path,optional"`
	SocketPathRange      hcl.Range      `hcl:"socket_path,attr_range"`
	AdminSocketPath      *string        `hcl:"admin_socket_path,optional"`
	AdminSocketPathRange hcl.Range      `hcl:"admin_socket_path,attr_range"`
	DataDir              *string        `hcl:"data_dir,optional"`
	DataDirRange         hcl.Range      `hcl:"data_dir,attr_range"`
	LogLevel             *string        `hcl:"log_level,optional"`
	LogLevelRange        hcl.Range      `hcl:"log_level,attr_range"`
	LogFormat            *string        `hcl:"log_format,optional"`
	LogFormatRange       hcl.Range      `hcl:"log_format,attr_range"`
	NodeName             *string        `hcl:"node_name,optional"`
	NodeNameRange        hcl.Range      `hcl:"node_name,attr_range"`
	NodeGroups           hcl.Expression `hcl:"node_groups,optional"`
	NodeGroupsRange      hcl.Range      `hcl:"node_groups,attr_range"`
	RegistrarOnly        *bool          `hcl:"registrar_only,optional"`
	RegistrarOnlyRange   hcl.Range      `hcl:"registrar_only,attr_range"`
}

type fileCA struct {
	KeyType         *string        `hcl:"key_type,optional"`
	KeyTypeRange    hcl.Range      `hcl:"key_type,attr_range"`
	CATTL           *string        `hcl:"ca_ttl,optional"`
	CATTLRange      hcl.Range      `hcl:"ca_ttl,attr_range"`
	SVIDTTL         *string        `hcl:"svid_ttl,optional"`
	SVIDTTLRange    hcl.Range      `hcl:"svid_ttl,attr_range"`
	JWTSVIDTTL      *string        `hcl:"jwt_svid_ttl,optional"`
	JWTSVIDTTLRange hcl.Range      `hcl:"jwt_svid_ttl,attr_range"`
	Upstream        []fileUpstream `hcl:"upstream,block"`
}

type fileSDS struct {
	DefaultSVIDName            *string   `hcl:"default_svid_name,optional"`
	DefaultSVIDNameRange       hcl.Range `hcl:"default_svid_name,attr_range"`
	DefaultBundleName          *string   `hcl:"default_bundle_name,optional"`
	DefaultBundleNameRange     hcl.Range `hcl:"default_bundle_name,attr_range"`
	DefaultAllBundlesName      *string   `hcl:"default_all_bundles_name,optional"`
	DefaultAllBundlesNameRange hcl.Range `hcl:"default_all_bundles_name,attr_range"`
}

type fileTelemetry struct {
	Prometheus *filePrometheus `hcl:"prometheus,block"`
}

type filePrometheus struct {
	Address      *string   `hcl:"address,optional"`
	AddressRange hcl.Range `hcl:"address,attr_range"`
}

type fileHealth struct {
	Address        *string   `hcl:"address,optional"`
	AddressRange   hcl.Range `hcl:"address,attr_range"`
	LivePath       *string   `hcl:"live_path,optional"`
	LivePathRange  hcl.Range `hcl:"live_path,attr_range"`
	ReadyPath      *string   `hcl:"ready_path,optional"`
	ReadyPathRange hcl.Range `hcl:"ready_path,attr_range"`
}

type fileLimits struct {
	ConnectionsPerSecond          *int      `hcl:"connections_per_second,optional"`
	ConnectionsPerSecondRange     hcl.Range `hcl:"connections_per_second,attr_range"`
	ConnectionBurst               *int      `hcl:"connection_burst,optional"`
	ConnectionBurstRange          hcl.Range `hcl:"connection_burst,attr_range"`
	MaxOpenConnectionsPerUID      *int      `hcl:"max_open_connections_per_uid,optional"`
	MaxOpenConnectionsPerUIDRange hcl.Range `hcl:"max_open_connections_per_uid,attr_range"`
	StreamsPerSecond              *int      `hcl:"streams_per_second,optional"`
	StreamsPerSecondRange         hcl.Range `hcl:"streams_per_second,attr_range"`
	StreamBurst                   *int      `hcl:"stream_burst,optional"`
	StreamBurstRange              hcl.Range `hcl:"stream_burst,attr_range"`
	MaxOpenStreamsPerUID          *int      `hcl:"max_open_streams_per_uid,optional"`
	MaxOpenStreamsPerUIDRange     hcl.Range `hcl:"max_open_streams_per_uid,attr_range"`
	MaxMessageBytes               *int      `hcl:"max_message_bytes,optional"`
	MaxMessageBytesRange          hcl.Range `hcl:"max_message_bytes,attr_range"`
	MaxBytesPerUID                *int      `hcl:"max_bytes_per_uid,optional"`
	MaxBytesPerUIDRange           hcl.Range `hcl:"max_bytes_per_uid,attr_range"`
	MaxUnentitledBytesPerUID      *int      `hcl:"max_unentitled_bytes_per_uid,optional"`
	MaxUnentitledBytesPerUIDRange hcl.Range `hcl:"max_unentitled_bytes_per_uid,attr_range"`
}

type fileEntry struct {
	Name       string    `hcl:"name,label"`
	NameRange  hcl.Range `hcl:"name,label_range"`
	DefRange   hcl.Range `hcl:",def_range"`
	SPIFFEID   *string   `hcl:"spiffe_id,optional"`
	SPIFFERng  hcl.Range `hcl:"spiffe_id,attr_range"`
	X509TTL    *string   `hcl:"x509_svid_ttl,optional"`
	X509TTLRng hcl.Range `hcl:"x509_svid_ttl,attr_range"`
	// Lists are kept as expressions so a bad element is reported at its own position.
	Selectors    hcl.Expression `hcl:"selectors,optional"`
	SelectorsRng hcl.Range      `hcl:"selectors,attr_range"`
	DNSNames     hcl.Expression `hcl:"dns_names,optional"`
	DNSNamesRng  hcl.Range      `hcl:"dns_names,attr_range"`
	FedWith      hcl.Expression `hcl:"federates_with,optional"`
	FedWithRng   hcl.Range      `hcl:"federates_with,attr_range"`
}

// LoadFile reads and loads the config file at path; path "" means no file: the defaults with
// the overrides applied. A bad config is a *DiagError; failing to read the file is a plain
// wrapped error.
func LoadFile(path string, o Overrides) (Config, error) {
	if path == "" {
		return load("", nil, o)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading config: %w", err)
	}
	return Load(path, src, o)
}

// Load parses src (HCL native syntax, or HCL JSON when filename ends in ".json"), applies
// the overrides and validates the result. filename is used in diagnostics only. On failure
// the error is a *DiagError holding every problem found.
func Load(filename string, src []byte, o Overrides) (Config, error) {
	return load(filename, src, o)
}

func load(filename string, src []byte, o Overrides) (Config, error) {
	l := &loader{src: map[string]where{}, failed: map[string]bool{}}
	cfg := Default()
	parser := hclparse.NewParser()
	if src != nil || filename != "" {
		var (
			file  *hcl.File
			diags hcl.Diagnostics
		)
		if strings.HasSuffix(filename, ".json") {
			file, diags = parser.ParseJSON(src, filename)
		} else {
			file, diags = parser.ParseHCL(src, filename)
		}
		if diags.HasErrors() {
			// Decoding a body that did not parse only repeats the syntax error in other words.
			return Config{}, &DiagError{Diags: diags, Files: parser.Files()}
		}
		l.diags = append(l.diags, diags...)
		var root fileRoot
		l.diags = append(l.diags, gohcl.DecodeBody(file.Body, nil, &root)...)
		l.applyFile(&cfg, &root)
	}
	l.applyOverrides(&cfg, o)
	l.diags = append(l.diags, cfg.validate(l.src, l.failed)...)
	if l.diags.HasErrors() {
		sortDiags(l.diags)
		return Config{}, &DiagError{Diags: l.diags, Files: parser.Files()}
	}
	return cfg, nil
}

// where says where a setting came from: a file range or a flag. The zero value is "default".
type where struct {
	rng  *hcl.Range
	flag string
}

// value is one setting as written, before conversion.
type value struct {
	s  string
	at where
}

// file returns the attribute's value as written, or nil when it is absent or gohcl already
// reported it (wrong type, variables): such a field may hold a half-decoded value.
func (l *loader) file(key string, p *string, r hcl.Range) *value {
	if r == (hcl.Range{}) {
		return nil // absent
	}
	for _, d := range l.diags {
		if d.Severity == hcl.DiagError && d.Subject != nil && d.Subject.Overlaps(r) {
			l.src[key] = where{rng: r.Ptr()}
			l.failed[key] = true
			return nil
		}
	}
	if p == nil {
		return nil
	}
	return &value{s: *p, at: where{rng: r.Ptr()}}
}

func fromFlag(p *string, flag string) *value {
	if p == nil {
		return nil
	}
	return &value{s: *p, at: where{flag: flag}}
}

// loader converts written settings into typed values, remembering where each came from so
// validation can point at it. A setting that failed to convert is marked failed and not
// validated again (one mistake, one diagnostic).
type loader struct {
	diags  hcl.Diagnostics
	src    map[string]where
	failed map[string]bool
	names  []string // entry labels by index, for messages
}

func (l *loader) fail(key string, at where, detail string) {
	l.failed[key] = true
	l.diags = append(l.diags, newDiag(describe(key, l.names), at, detail))
}

func (l *loader) str(key string, v *value, dst *string) {
	if v == nil {
		return
	}
	l.src[key] = v.at
	*dst = v.s
}

func (l *loader) duration(key string, v *value, dst *time.Duration) {
	if v == nil {
		return
	}
	l.src[key] = v.at
	d, err := parseDuration(v.s)
	if err != nil {
		l.fail(key, v.at, err.Error())
		return
	}
	*dst = d
}

// integer takes a whole-number attribute (gohcl has already refused other values and
// reported them; l.file notices that from the range).
func (l *loader) integer(key string, p *int, r hcl.Range, dst *int) {
	if r == (hcl.Range{}) {
		return // absent
	}
	var s string
	if l.file(key, &s, r) == nil || p == nil {
		return
	}
	l.src[key] = where{rng: r.Ptr()}
	*dst = *p
}

func (l *loader) trustDomain(key string, v *value, dst *spiffeid.TrustDomain) {
	if v == nil {
		return
	}
	l.src[key] = v.at
	td, err := parseTrustDomain(v.s)
	if err != nil {
		l.fail(key, v.at, err.Error())
		return
	}
	*dst = td
}

func (l *loader) logLevel(key string, v *value, dst *slog.Level) {
	if v == nil {
		return
	}
	l.src[key] = v.at
	lvl, ok := logLevels[v.s]
	if !ok {
		l.fail(key, v.at, fmt.Sprintf("log level %q is not one of debug, info, warn, error", v.s))
		return
	}
	*dst = lvl
}

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

func (l *loader) applyFile(cfg *Config, f *fileRoot) {
	if a := f.Agent; a != nil {
		l.trustDomain("agent.trust_domain", l.file("agent.trust_domain", a.TrustDomain, a.TrustDomainRange), &cfg.TrustDomain)
		l.str("agent.socket_path", l.file("agent.socket_path", a.SocketPath, a.SocketPathRange), &cfg.SocketPath)
		l.str("agent.admin_socket_path", l.file("agent.admin_socket_path", a.AdminSocketPath, a.AdminSocketPathRange), &cfg.AdminSocketPath)
		l.str("agent.data_dir", l.file("agent.data_dir", a.DataDir, a.DataDirRange), &cfg.DataDir)
		l.logLevel("agent.log_level", l.file("agent.log_level", a.LogLevel, a.LogLevelRange), &cfg.LogLevel)
		l.str("agent.log_format", l.file("agent.log_format", a.LogFormat, a.LogFormatRange), &cfg.LogFormat)
		l.str("agent.node_name", l.file("agent.node_name", a.NodeName, a.NodeNameRange), &cfg.NodeName)
		if groups, ok := l.stringList("agent.node_groups", a.NodeGroups, a.NodeGroupsRange); ok {
			cfg.NodeGroups = groups
		}
		if a.RegistrarOnly != nil {
			l.src["agent.registrar_only"] = where{rng: a.RegistrarOnlyRange.Ptr()}
			cfg.RegistrarOnly = *a.RegistrarOnly
		}
	}
	if c := f.CA; c != nil {
		l.str("ca.key_type", l.file("ca.key_type", c.KeyType, c.KeyTypeRange), &cfg.CA.KeyType)
		l.duration("ca.ca_ttl", l.file("ca.ca_ttl", c.CATTL, c.CATTLRange), &cfg.CA.CATTL)
		l.duration("ca.svid_ttl", l.file("ca.svid_ttl", c.SVIDTTL, c.SVIDTTLRange), &cfg.CA.SVIDTTL)
		l.duration("ca.jwt_svid_ttl", l.file("ca.jwt_svid_ttl", c.JWTSVIDTTL, c.JWTSVIDTTLRange), &cfg.CA.JWTSVIDTTL)
		l.applyUpstream(cfg, c.Upstream, c.CATTL != nil)
		// A default SVID lifetime follows a shortened ca_ttl down to a sixth of it (as the CA
		// does), so setting only ca_ttl is never an error about a key the operator did not
		// write; explicit values are held to the rule by validate.
		if cfg.CA.CATTL > 0 {
			if c.SVIDTTL == nil {
				cfg.CA.SVIDTTL = min(cfg.CA.SVIDTTL, entry.MaxSVIDTTL(cfg.CA.CATTL))
			}
			if c.JWTSVIDTTL == nil {
				cfg.CA.JWTSVIDTTL = min(cfg.CA.JWTSVIDTTL, entry.MaxSVIDTTL(cfg.CA.CATTL))
			}
		}
	}
	if s := f.SDS; s != nil {
		l.str("sds.default_svid_name", l.file("sds.default_svid_name", s.DefaultSVIDName, s.DefaultSVIDNameRange), &cfg.SDS.DefaultSVIDName)
		l.str("sds.default_bundle_name", l.file("sds.default_bundle_name", s.DefaultBundleName, s.DefaultBundleNameRange), &cfg.SDS.DefaultBundleName)
		l.str("sds.default_all_bundles_name", l.file("sds.default_all_bundles_name", s.DefaultAllBundlesName, s.DefaultAllBundlesNameRange), &cfg.SDS.DefaultAllBundlesName)
	}
	if t := f.Telemetry; t != nil && t.Prometheus != nil {
		p := t.Prometheus
		l.str("telemetry.prometheus.address", l.file("telemetry.prometheus.address", p.Address, p.AddressRange), &cfg.Telemetry.PrometheusAddress)
	}
	l.store(cfg, f.Store)
	if h := f.Health; h != nil {
		l.str("health.address", l.file("health.address", h.Address, h.AddressRange), &cfg.Health.Address)
		l.str("health.live_path", l.file("health.live_path", h.LivePath, h.LivePathRange), &cfg.Health.LivePath)
		l.str("health.ready_path", l.file("health.ready_path", h.ReadyPath, h.ReadyPathRange), &cfg.Health.ReadyPath)
	}
	if lim := f.Limits; lim != nil {
		for _, n := range []struct {
			key string
			p   *int
			r   hcl.Range
			dst *int
		}{
			{"limits.connections_per_second", lim.ConnectionsPerSecond, lim.ConnectionsPerSecondRange, &cfg.Limits.ConnectionsPerSecond},
			{"limits.connection_burst", lim.ConnectionBurst, lim.ConnectionBurstRange, &cfg.Limits.ConnectionBurst},
			{"limits.max_open_connections_per_uid", lim.MaxOpenConnectionsPerUID, lim.MaxOpenConnectionsPerUIDRange, &cfg.Limits.MaxOpenConnectionsPerUID},
			{"limits.streams_per_second", lim.StreamsPerSecond, lim.StreamsPerSecondRange, &cfg.Limits.StreamsPerSecond},
			{"limits.stream_burst", lim.StreamBurst, lim.StreamBurstRange, &cfg.Limits.StreamBurst},
			{"limits.max_open_streams_per_uid", lim.MaxOpenStreamsPerUID, lim.MaxOpenStreamsPerUIDRange, &cfg.Limits.MaxOpenStreamsPerUID},
			{"limits.max_message_bytes", lim.MaxMessageBytes, lim.MaxMessageBytesRange, &cfg.Limits.MaxMessageBytes},
			{"limits.max_bytes_per_uid", lim.MaxBytesPerUID, lim.MaxBytesPerUIDRange, &cfg.Limits.MaxBytesPerUID},
			{"limits.max_unentitled_bytes_per_uid", lim.MaxUnentitledBytesPerUID, lim.MaxUnentitledBytesPerUIDRange, &cfg.Limits.MaxUnentitledBytesPerUID},
		} {
			l.integer(n.key, n.p, n.r, n.dst)
		}
	}
	seen := map[string]hcl.Range{}
	for i, fe := range f.Entries {
		key := entryKey(i)
		l.src[key] = where{rng: fe.DefRange.Ptr()}
		l.names = append(l.names, fe.Name)
		if first, dup := seen[fe.Name]; dup {
			l.failed[key] = true
			l.diags = append(l.diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  fmt.Sprintf("Duplicate entry %q", fe.Name),
				Detail:   fmt.Sprintf("an entry block named %q is already defined at %s; entry names must be unique", fe.Name, rangeString(first)),
				Subject:  fe.NameRange.Ptr(),
			})
		} else {
			seen[fe.Name] = fe.NameRange
		}
		cfg.Entries = append(cfg.Entries, l.entry(i, fe))
	}
	l.applyFederation(cfg, f)
}

func entryKey(i int) string { return fmt.Sprintf("entry.%d", i) }

func (l *loader) entry(i int, fe fileEntry) entry.Entry {
	key := entryKey(i)
	e := entry.Entry{Name: fe.Name}
	if v := l.file(key+".spiffe_id", fe.SPIFFEID, fe.SPIFFERng); v != nil {
		k := key + ".spiffe_id"
		l.src[k] = v.at
		id, err := spiffeid.FromString(v.s)
		if err != nil {
			l.fail(k, v.at, fmt.Sprintf("spiffe ID %q: %v", v.s, err))
		} else {
			e.SPIFFEID = id
		}
	}
	l.duration(key+".x509_svid_ttl", l.file(key+".x509_svid_ttl", fe.X509TTL, fe.X509TTLRng), &e.X509SVIDTTL)

	sels, ok := l.stringList(key+".selectors", fe.Selectors, fe.SelectorsRng)
	if ok {
		parsed := make([]entry.Selector, 0, len(sels))
		for j, s := range sels {
			k := fmt.Sprintf("%s.selectors.%d", key, j)
			sel, err := entry.ParseSelector(s)
			if err != nil {
				l.fail(k, l.src[k], trimInvalid(err))
				continue
			}
			parsed = append(parsed, sel)
		}
		e.Selectors = entry.Normalize(parsed)
	}
	if names, ok := l.stringList(key+".dns_names", fe.DNSNames, fe.DNSNamesRng); ok {
		e.DNSNames = names
	}
	e.FederatesWith = l.entryFederatesWith(key, fe)
	return e
}

// stringList decodes a list-of-strings attribute, recording each element's own range under
// key.N. ok is false when the attribute is absent or not a list of strings (reported).
func (l *loader) stringList(key string, expr hcl.Expression, attrRange hcl.Range) ([]string, bool) {
	if expr == nil {
		return nil, false
	}
	// An absent attribute is decoded by gohcl as a static null expression.
	if v, diags := expr.Value(nil); !diags.HasErrors() && v.IsNull() {
		return nil, false
	}
	l.src[key] = where{rng: attrRange.Ptr()}
	elems, diags := hcl.ExprList(expr)
	if diags.HasErrors() {
		// Not a literal list (e.g. a single string): let gohcl say why with its range.
		var out []string
		if diags := gohcl.DecodeExpression(expr, nil, &out); diags.HasErrors() {
			l.failed[key] = true
			l.diags = append(l.diags, diags...)
			return nil, false
		}
		for j := range out {
			l.src[fmt.Sprintf("%s.%d", key, j)] = where{rng: attrRange.Ptr()}
		}
		return out, true
	}
	out := make([]string, 0, len(elems))
	ok := true
	for _, el := range elems {
		var s string
		if diags := gohcl.DecodeExpression(el, nil, &s); diags.HasErrors() {
			l.diags = append(l.diags, diags...)
			ok = false
			continue
		}
		l.src[fmt.Sprintf("%s.%d", key, len(out))] = where{rng: el.Range().Ptr()}
		out = append(out, s)
	}
	if !ok {
		l.failed[key] = true
		return nil, false
	}
	return out, true
}

func (l *loader) applyOverrides(cfg *Config, o Overrides) {
	l.trustDomain("agent.trust_domain", fromFlag(o.TrustDomain, "trustDomain"), &cfg.TrustDomain)
	l.str("agent.socket_path", fromFlag(o.SocketPath, "socketPath"), &cfg.SocketPath)
	l.str("agent.admin_socket_path", fromFlag(o.AdminSocketPath, "adminSocketPath"), &cfg.AdminSocketPath)
	l.str("agent.data_dir", fromFlag(o.DataDir, "dataDir"), &cfg.DataDir)
	l.logLevel("agent.log_level", fromFlag(o.LogLevel, "logLevel"), &cfg.LogLevel)
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: use units like 30s, 5m, 1h", s)
	}
	return d, nil
}

// parseTrustDomain accepts "example.org" and "spiffe://example.org", but not a SPIFFE ID
// with a path: that is almost certainly a workload ID pasted in the wrong place.
func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	td, err := entry.ParseTrustDomain(s)
	if err != nil {
		return td, errors.New(trimInvalid(err))
	}
	return td, nil
}

// trimInvalid drops the "invalid entry: " prefix entry's errors carry; the diagnostic's
// summary already says what is invalid.
func trimInvalid(err error) string {
	msg := err.Error()
	if errors.Is(err, entry.ErrInvalid) {
		msg = strings.TrimPrefix(msg, entry.ErrInvalid.Error()+": ")
	}
	return msg
}

// sortDiags orders diagnostics as an operator reads the file: by position, then those
// without one (flags).
func sortDiags(diags hcl.Diagnostics) {
	slices.SortStableFunc(diags, func(a, b *hcl.Diagnostic) int {
		switch {
		case a.Subject == nil || b.Subject == nil:
			return cmp.Compare(boolInt(a.Subject == nil), boolInt(b.Subject == nil))
		case a.Subject.Filename != b.Subject.Filename:
			return strings.Compare(a.Subject.Filename, b.Subject.Filename)
		default:
			return cmp.Compare(a.Subject.Start.Byte, b.Subject.Start.Byte)
		}
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func rangeString(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}
