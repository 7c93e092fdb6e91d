package conf

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/svidd/svidd/pkg/entry"
)

// Validate checks a Config built in code (tests, embedders) by the same rules Load applies
// to a file. The error is a *DiagError whose diagnostics carry no positions.
func (c Config) Validate() error {
	if diags := c.validate(nil, nil); diags.HasErrors() {
		return &DiagError{Diags: diags}
	}
	return nil
}

// validate checks the typed config. src says where each setting came from (keys like
// "ca.svid_ttl", "entry.3.selectors.1") so diagnostics point at it; skip holds settings whose
// conversion already failed and were reported.
func (c Config) validate(src map[string]where, skip map[string]bool) hcl.Diagnostics {
	v := &validator{src: src, skip: skip}
	for _, e := range c.Entries {
		v.names = append(v.names, e.Name)
	}

	if !v.bad("agent.trust_domain") && c.TrustDomain.IsZero() {
		v.errf("agent.trust_domain", "a trust domain is required, e.g. example.org")
	}
	v.socketPath("agent.socket_path", c.SocketPath)
	v.socketPath("agent.admin_socket_path", c.AdminSocketPath)
	if c.SocketPath != "" && filepath.Clean(c.SocketPath) == filepath.Clean(c.AdminSocketPath) {
		v.errf(v.sourced("agent.admin_socket_path", "agent.socket_path"),
			"admin_socket_path and socket_path are both %q; the admin socket must be separate (owner only)", c.SocketPath)
	}
	if c.DataDir == "" {
		v.errf("agent.data_dir", "data_dir must not be empty")
	}
	if c.LogFormat != LogFormatText && c.LogFormat != LogFormatJSON {
		v.errf("agent.log_format", "log format %q is not one of text, json", c.LogFormat)
	}

	switch c.CA.KeyType {
	case KeyTypeECP256, KeyTypeECP384, KeyTypeRSA2048:
	default:
		v.errf("ca.key_type", "key type %q is not one of ec-p256, ec-p384, rsa-2048", c.CA.KeyType)
	}
	caOK := v.positive("ca.ca_ttl", "ca_ttl", c.CA.CATTL)
	if caOK {
		if err := entry.CheckCATTL(c.CA.CATTL); err != nil {
			v.errf("ca.ca_ttl", "ca_ttl %s", err)
			caOK = false
		}
	}
	v.svidTTL(c, "ca.svid_ttl", "svid_ttl", c.CA.SVIDTTL, caOK)
	v.svidTTL(c, "ca.jwt_svid_ttl", "jwt_svid_ttl", c.CA.JWTSVIDTTL, caOK)

	v.node(c)
	v.validateUpstream(c.CA.Upstream)

	sdsNames := []struct{ key, value string }{
		{"sds.default_svid_name", c.SDS.DefaultSVIDName},
		{"sds.default_bundle_name", c.SDS.DefaultBundleName},
		{"sds.default_all_bundles_name", c.SDS.DefaultAllBundlesName},
	}
	for i, n := range sdsNames {
		switch {
		case n.value == "":
			v.errf(n.key, "the name must not be empty")
		case strings.HasPrefix(n.value, "spiffe://"):
			v.errf(n.key, "%q starts with spiffe://; SPIFFE IDs already name SVIDs and bundles in SDS requests", n.value)
		default:
			for _, o := range sdsNames[:i] {
				if o.value == n.value {
					v.errf(n.key, "%q is also %s; the three SDS names must differ", n.value, o.key)
				}
			}
		}
	}

	v.address("telemetry.prometheus.address", c.Telemetry.PrometheusAddress)
	v.store(c.Store)
	if c.RegistrarOnly && c.Store.Kind != StoreEtcd {
		v.errf("agent.registrar_only", `registrar_only needs store "etcd": a registrar writes the fleet registry, and without it there is nothing to register into`)
	}
	if c.RegistrarOnly && len(c.Entries) > 0 {
		v.errf("agent.registrar_only", "registrar_only serves no workloads, so entry blocks would match nothing here; register fleet entries with svidctl")
	}
	v.address("health.address", c.Health.Address)
	// Port 0 asks the kernel for a free port, so two ":0" listeners never collide.
	if c.Health.Address != "" && c.Health.Address == c.Telemetry.PrometheusAddress && !strings.HasSuffix(c.Health.Address, ":0") {
		v.errf(v.sourced("health.address", "telemetry.prometheus.address"),
			"health address %q is also the prometheus address; each listener needs its own", c.Health.Address)
	}
	v.httpPath("health.live_path", c.Health.LivePath)
	v.httpPath("health.ready_path", c.Health.ReadyPath)
	if c.Health.LivePath == c.Health.ReadyPath {
		v.errf(v.sourced("health.ready_path", "health.live_path"), "live_path and ready_path are both %q; they must differ", c.Health.LivePath)
	}

	v.limits(c.Limits)
	v.entries(c)
	v.federation(c)
	return v.diags
}

// MinMessageBytes is the smallest limits.max_message_bytes accepted: below it even a plain
// SDS request with Envoy's node would be refused.
const MinMessageBytes = 4096

// MinBytesPerUID is the smallest byte budget accepted (limits.max_bytes_per_uid and
// limits.max_unentitled_bytes_per_uid): below it a caller entitled to nothing could not
// hold even one stream waiting for its entry (a stream of such a caller is charged 16 KiB).
const MinBytesPerUID = 64 << 10

// maxLimit keeps every limit within gRPC's 32-bit settings.
const maxLimit = 1<<31 - 1

func (v *validator) limits(l LimitsConfig) {
	for _, n := range []struct {
		key      string
		val, min int
	}{
		{"limits.connections_per_second", l.ConnectionsPerSecond, 1},
		{"limits.connection_burst", l.ConnectionBurst, 1},
		{"limits.max_open_connections_per_uid", l.MaxOpenConnectionsPerUID, 1},
		{"limits.streams_per_second", l.StreamsPerSecond, 1},
		{"limits.stream_burst", l.StreamBurst, 1},
		{"limits.max_open_streams_per_uid", l.MaxOpenStreamsPerUID, 1},
		{"limits.max_message_bytes", l.MaxMessageBytes, MinMessageBytes},
		{"limits.max_bytes_per_uid", l.MaxBytesPerUID, MinBytesPerUID},
		{"limits.max_unentitled_bytes_per_uid", l.MaxUnentitledBytesPerUID, MinBytesPerUID},
	} {
		name := strings.TrimPrefix(n.key, "limits.")
		switch {
		case v.bad(n.key):
		case n.val < n.min && n.min == 1:
			v.errf(n.key, "%s must be positive, got %d", name, n.val)
		case n.val < n.min:
			v.errf(n.key, "%s must be at least %d, got %d", name, n.min, n.val)
		case n.val > maxLimit:
			v.errf(n.key, "%s must be at most %d, got %d", name, maxLimit, n.val)
		}
	}
}

// probeSelector is a selector known to be valid, used to validate one field of an entry at a
// time with entry.Entry.Validate (so the diagnostic can point at that field) without
// duplicating entry's rules here.
var probeSelector = []entry.Selector{{Type: entry.TypeUnix, Value: "uid:0"}}

func (v *validator) entries(c Config) {
	tdOK := !v.bad("agent.trust_domain") && !c.TrustDomain.IsZero()
	probeTD := c.TrustDomain
	if !tdOK {
		probeTD = spiffeid.RequireTrustDomainFromString("example.org")
	}
	probeID := spiffeid.RequireFromSegments(probeTD, "probe")
	caTTL := c.CA.CATTL
	if v.bad("ca.ca_ttl") || caTTL <= 0 {
		caTTL = 0 // reported already; check the minimum only
	}

	type firstSeen struct {
		index int
		name  string
	}
	seen := map[string]firstSeen{}
	for i, e := range c.Entries {
		key := entryKey(i)
		if v.bad(key) {
			continue // e.g. a duplicate label, already reported
		}
		before := len(v.diags)
		if e.Name == "" {
			v.errf(key, "an entry needs a name: entry \"backend\" { ... }")
		}

		idKey, selKey, dnsKey, ttlKey := key+".spiffe_id", key+".selectors", key+".dns_names", key+".x509_svid_ttl"
		idOK := !v.bad(idKey)
		if idOK && (tdOK || e.SPIFFEID.IsZero()) {
			if err := (entry.Entry{SPIFFEID: e.SPIFFEID, Selectors: probeSelector}).Validate(probeTD); err != nil {
				v.errf(idKey, "%s", trimInvalid(err))
				idOK = false
			}
		}
		selOK := !v.badUnder(selKey)
		if selOK {
			if err := (entry.Entry{SPIFFEID: probeID, Selectors: e.Selectors}).Validate(probeTD); err != nil {
				v.errf(selKey, "%s", trimInvalid(err))
				selOK = false
			}
		}
		if !v.badUnder(dnsKey) {
			for j, d := range e.DNSNames {
				if err := (entry.Entry{SPIFFEID: probeID, Selectors: probeSelector, DNSNames: []string{d}}).Validate(probeTD); err != nil {
					v.errf(fmt.Sprintf("%s.%d", dnsKey, j), "%s", trimInvalid(err))
				}
			}
		}
		if !v.bad(ttlKey) {
			_, written := v.src[ttlKey]
			switch {
			case e.X509SVIDTTL < 0 || written && e.X509SVIDTTL == 0:
				v.errf(ttlKey, "x509_svid_ttl must be positive, got %s", fmtDuration(e.X509SVIDTTL))
			case e.X509SVIDTTL == 0:
				// The agent's svid_ttl applies.
			default:
				if err := entry.CheckSVIDTTL(e.X509SVIDTTL, caTTL); err != nil {
					v.errf(ttlKey, "x509_svid_ttl %s", err)
				}
			}
		}
		// The whole entry, by the one definition every entry (file, svidctl) must meet; it
		// catches any rule the per-field probes above do not single out.
		if len(v.diags) == before && tdOK && !v.badUnder(key) {
			if err := e.Validate(c.TrustDomain); err != nil {
				v.errf(key, "%s", trimInvalid(err))
			}
		}

		if idOK && selOK && !e.SPIFFEID.IsZero() {
			k := e.SPIFFEID.String() + "\x00" + entry.SelectorKey(entry.Normalize(e.Selectors))
			if first, dup := seen[k]; dup {
				detail := fmt.Sprintf("entry %q has the same spiffe_id and selectors as entry %q", e.Name, first.name)
				if w := v.at(entryKey(first.index)); w.rng != nil {
					detail += " at " + rangeString(*w.rng)
				}
				v.diags = append(v.diags, newDiagSummary(fmt.Sprintf("Duplicate registration in entry %q", e.Name), v.at(key), detail))
			} else {
				seen[k] = firstSeen{i, e.Name}
			}
		}
	}
}

type validator struct {
	src   map[string]where
	skip  map[string]bool
	names []string
	diags hcl.Diagnostics
}

// at finds where a setting came from, falling back to its enclosing setting ("entry.3.selectors.1"
// → "entry.3.selectors" → "entry.3") so a missing attribute is reported at its block.
func (v *validator) at(key string) where {
	for {
		if w, ok := v.src[key]; ok {
			return w
		}
		i := strings.LastIndexByte(key, '.')
		if i < 0 {
			return where{}
		}
		key = key[:i]
	}
}

func (v *validator) bad(key string) bool { return v.skip[key] }

// badUnder reports whether key or any setting inside it ("entry.3.selectors.1" is inside
// "entry.3.selectors") failed to convert.
func (v *validator) badUnder(key string) bool {
	for k := range v.skip {
		if k == key || strings.HasPrefix(k, key+".") {
			return true
		}
	}
	return false
}

// sourced picks the first key that was set explicitly (file or flag), so a rule between two
// settings is reported at the one the operator wrote; else the first key.
func (v *validator) sourced(keys ...string) string {
	for _, k := range keys {
		if _, ok := v.src[k]; ok {
			return k
		}
	}
	return keys[0]
}

func (v *validator) errf(key, format string, args ...any) {
	v.diags = append(v.diags, newDiag(describe(key, v.names), v.at(key), fmt.Sprintf(format, args...)))
}

func (v *validator) positive(key, name string, d time.Duration) bool {
	if v.bad(key) {
		return false
	}
	if d <= 0 {
		v.errf(key, "%s must be positive, got %s", name, fmtDuration(d))
		return false
	}
	return true
}

// svidTTL checks a default SVID lifetime (ca.svid_ttl, ca.jwt_svid_ttl) by entry.CheckSVIDTTL;
// the bound from ca_ttl only when ca_ttl itself is valid (caOK). A rule between two settings
// is reported at the one the operator wrote.
func (v *validator) svidTTL(c Config, key, name string, d time.Duration, caOK bool) {
	if !v.positive(key, name, d) {
		return
	}
	caTTL := c.CA.CATTL
	if !caOK {
		if _, written := v.src[key]; !written {
			return // derived from the bad ca_ttl, which is reported
		}
		caTTL = 0
	}
	if err := entry.CheckSVIDTTL(d, caTTL); err != nil {
		at := key
		if errors.Is(err, entry.ErrTTLTooLong) {
			at = v.sourced(key, "ca.ca_ttl")
		}
		v.errf(at, "%s %s", name, err)
	}
}

func (v *validator) socketPath(key, p string) {
	switch {
	case !filepath.IsAbs(p):
		v.errf(key, "socket path %q must be absolute", p)
	case len(p) > MaxSocketPathLen:
		v.errf(key, "socket path is %d bytes, longer than the kernel's limit of %d (sun_path); choose a shorter path", len(p), MaxSocketPathLen)
	case strings.ContainsRune(p, 0):
		v.errf(key, "socket path contains a NUL byte")
	}
}

func (v *validator) address(key, addr string) {
	if addr == "" {
		return // disabled
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		v.errf(key, "address %q is not host:port (e.g. 127.0.0.1:9988); use \"\" to disable", addr)
	}
}

func (v *validator) httpPath(key, p string) {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, " ?#") {
		v.errf(key, "HTTP path %q must start with / and hold no space, ? or #", p)
	}
}

// describe names a setting for a diagnostic summary: "ca.svid_ttl", or
// `selectors in entry "backend"` for entry keys.
func describe(key string, names []string) string {
	if rest, ok := strings.CutPrefix(key, "federates_with."); ok {
		idx, attr, _ := strings.Cut(rest, ".")
		n, _ := strconv.Atoi(idx)
		if attr == "" {
			return fmt.Sprintf("federates_with block #%d", n+1)
		}
		return fmt.Sprintf("%s in federates_with block #%d", attr, n+1)
	}
	rest, ok := strings.CutPrefix(key, "entry.")
	if !ok {
		return key
	}
	idx, attr, _ := strings.Cut(rest, ".")
	attr, _, _ = strings.Cut(attr, ".") // drop a list element index
	name := ""
	if i, err := strconv.Atoi(idx); err == nil && i >= 0 && i < len(names) {
		name = names[i]
	}
	if attr == "" {
		return fmt.Sprintf("entry %q", name)
	}
	return fmt.Sprintf("%s in entry %q", attr, name)
}

func newDiag(what string, at where, detail string) *hcl.Diagnostic {
	summary := "Invalid " + what
	if at.flag != "" {
		summary = "flag -" + at.flag + ": invalid " + what
	}
	return newDiagSummary(summary, at, detail)
}

func newDiagSummary(summary string, at where, detail string) *hcl.Diagnostic {
	if at.flag != "" && !strings.HasPrefix(summary, "flag -") {
		summary = "flag -" + at.flag + ": " + summary
	}
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: at.rng}
}

// fmtDuration prints 5h rather than Go's 5h0m0s.
func fmtDuration(d time.Duration) string { return entry.FormatDuration(d) }
