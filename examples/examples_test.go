// Package examples_test keeps the example files honest: every Envoy bootstrap parses into
// go-control-plane's Bootstrap, passes the generated validation (including every typed_config
// hidden in an Any), and really points its SDS configs at svidd's socket with names svidd
// answers; the sample entries load with svidd's own config loader.
package examples_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/svidd/svidd/conf"
	"github.com/svidd/svidd/pkg/svidfiles"

	// typed_config Anys resolve through protoregistry.GlobalTypes: link in every type the
	// examples name, or protojson cannot decode them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

const (
	socketPath   = "/tmp/agent/api.sock"
	sdsCluster   = "svidd"
	trustDomain  = "example.org"
	allBundles   = "ALL"
	rootCABundle = "ROOTCA"
)

// want is what each example must configure.
type want struct {
	apiType    corev3.ApiConfigSource_ApiType
	certs      []string // tls_certificate SDS names
	validation []string // validation context SDS names
	// uriSANs the combined validation context must require (exact or prefix), if any.
	uriSANs []string
}

var examples = map[string]want{
	"frontend-listener.yaml": {
		apiType: corev3.ApiConfigSource_GRPC, certs: []string{"spiffe://example.org/frontend"}, validation: []string{"spiffe://example.org"},
	},
	"backend-upstream.yaml": {
		apiType: corev3.ApiConfigSource_GRPC, certs: []string{"spiffe://example.org/backend-client"}, validation: []string{"spiffe://example.org"},
		uriSANs: []string{"spiffe://example.org/backend"},
	},
	"spiffe-validator.yaml": {
		apiType: corev3.ApiConfigSource_GRPC, certs: []string{"spiffe://example.org/frontend"}, validation: []string{allBundles},
		uriSANs: []string{"spiffe://example.org/", "spiffe://partner.example/checkout"},
	},
	"delta.yaml": {
		apiType: corev3.ApiConfigSource_DELTA_GRPC, certs: []string{"spiffe://example.org/frontend"}, validation: []string{"spiffe://example.org"},
	},
}

func TestEnvoyExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("envoy", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for name := range examples {
		if !slices.Contains(names, name) {
			t.Errorf("example %s is missing", name)
		}
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			w, ok := examples[filepath.Base(f)]
			if !ok {
				t.Fatalf("no expectations for %s: add it to the examples table", f)
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b, err := parseBootstrap(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkBootstrap(b, w); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCheckerRejects proves the checks can fail: each mutation of a good example must be caught.
func TestCheckerRejects(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("envoy", "backend-upstream.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		old, new    string
		wantInError string
	}{
		{"unknown field", "connect_timeout: 2s", "connect_timeout: 2s\n    conect_timeout: 2s", "unknown field"},
		{"validation failure", "port_value: 8443", "port_value: 70000", "PortValue"},
		{"validation failure inside typed_config", "stat_prefix: egress_backend", `stat_prefix: ""`, "StatPrefix"},
		{"wrong socket", "path: /tmp/agent/api.sock", "path: /var/run/other.sock", "socket"},
		{"sds at another cluster", "- envoy_grpc: { cluster_name: svidd }", "- envoy_grpc: { cluster_name: backend }", "cluster"},
		{"certificate named by trust domain", "- name: spiffe://example.org/backend-client", "- name: spiffe://example.org", "workload"},
		{"validation named by workload", "  name: spiffe://example.org\n", "  name: spiffe://example.org/backend\n", "trust domain"},
		{"SAN check dropped", "exact: spiffe://example.org/backend", "exact: spiffe://example.org/other", "URI SAN"},
		{"svidd over HTTP/1", "http2_protocol_options: {}", "http_protocol_options: {}", "HTTP/2"},
		{"state of the world expected", "api_type: GRPC", "api_type: DELTA_GRPC", "api_type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(string(good), tt.old) {
				t.Fatalf("example no longer contains %q: update this test", tt.old)
			}
			src := strings.Replace(string(good), tt.old, tt.new, 1)
			b, err := parseBootstrap([]byte(src))
			if err == nil {
				err = checkBootstrap(b, examples["backend-upstream.yaml"])
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantInError) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantInError)
			}
		})
	}
}

func TestSampleEntries(t *testing.T) {
	cfg, err := conf.LoadFile(filepath.Join("entries", "entries.hcl"), conf.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	got := map[string]string{}
	for _, e := range cfg.Entries {
		if err := e.Validate(td); err != nil {
			t.Errorf("entry %q: %v", e.Name, err)
		}
		got[e.Name] = e.SPIFFEID.String()
	}
	// Every SVID the Envoy examples ask for has an entry.
	for file, w := range examples {
		for _, id := range w.certs {
			if !slices.Contains(slices.Collect(maps.Values(got)), id) {
				t.Errorf("%s asks for %s but entries.hcl has no entry for it", file, id)
			}
		}
	}
	if got["frontend"] != "spiffe://example.org/frontend" {
		t.Errorf("entries = %v, want entry \"frontend\"", got)
	}
}

// parseBootstrap decodes YAML as Envoy does (YAML → JSON → proto3 JSON), rejecting unknown
// fields, and validates the bootstrap and every message packed in an Any inside it.
func parseBootstrap(src []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(src)
	if err != nil {
		return nil, fmt.Errorf("converting YAML: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("decoding bootstrap: %w", err)
	}
	if err := validateDeep(b); err != nil {
		return nil, err
	}
	return b, nil
}

type validator interface{ ValidateAll() error }

// validateDeep runs ValidateAll on m and on every Any below it: the generated validation does
// not look inside typed_config, where the TLS contexts and filters live.
func validateDeep(m proto.Message) error {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("validating %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	var errs []error
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("unpacking %s: %w", a.GetTypeUrl(), err))
				return
			}
			if err := validateDeep(inner); err != nil {
				errs = append(errs, err)
			}
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return errors.Join(errs...)
}

// checkBootstrap asserts that the bootstrap gets its secrets from svidd as w says.
func checkBootstrap(b *bootstrapv3.Bootstrap, w want) error {
	var svidd *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == sdsCluster {
			svidd = c
		}
	}
	if err := checkSviddCluster(svidd); err != nil {
		return err
	}

	var contexts []*tlsv3.CommonTlsContext
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			if ts := fc.GetTransportSocket(); ts != nil {
				d := &tlsv3.DownstreamTlsContext{}
				if err := ts.GetTypedConfig().UnmarshalTo(d); err != nil {
					return fmt.Errorf("listener %s: transport socket is not a DownstreamTlsContext: %w", l.GetName(), err)
				}
				if !d.GetRequireClientCertificate().GetValue() {
					return fmt.Errorf("listener %s: require_client_certificate is not set: SPIFFE mTLS needs the client's SVID", l.GetName())
				}
				contexts = append(contexts, d.GetCommonTlsContext())
			}
		}
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		if ts := c.GetTransportSocket(); ts != nil {
			u := &tlsv3.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(u); err != nil {
				return fmt.Errorf("cluster %s: transport socket is not an UpstreamTlsContext: %w", c.GetName(), err)
			}
			contexts = append(contexts, u.GetCommonTlsContext())
		}
	}
	if len(contexts) == 0 {
		return errors.New("no TLS context in the bootstrap")
	}

	var certs, validation, sans []string
	for _, ctx := range contexts {
		var sds []*tlsv3.SdsSecretConfig
		for _, c := range ctx.GetTlsCertificateSdsSecretConfigs() {
			if err := checkWorkloadName(c.GetName()); err != nil {
				return err
			}
			certs = append(certs, c.GetName())
			sds = append(sds, c)
		}
		vc := ctx.GetValidationContextSdsSecretConfig()
		if cvc := ctx.GetCombinedValidationContext(); cvc != nil {
			vc = cvc.GetValidationContextSdsSecretConfig()
			for _, m := range cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
				if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
					return fmt.Errorf("SAN matcher of type %s: the SPIFFE validator only matches URI SANs", m.GetSanType())
				}
				sans = append(sans, m.GetMatcher().GetExact()+m.GetMatcher().GetPrefix())
			}
		}
		if vc == nil {
			return errors.New("a TLS context has no validation context from SDS: peers would not be verified against svidd's bundle")
		}
		if err := checkBundleName(vc.GetName()); err != nil {
			return err
		}
		validation = append(validation, vc.GetName())
		sds = append(sds, vc)
		for _, c := range sds {
			if err := checkSDSConfig(c, w.apiType); err != nil {
				return err
			}
		}
	}
	if !slices.Equal(certs, w.certs) {
		return fmt.Errorf("tls_certificate SDS names %v, want %v", certs, w.certs)
	}
	if !slices.Equal(validation, w.validation) {
		return fmt.Errorf("validation SDS names %v, want %v", validation, w.validation)
	}
	if !slices.Equal(sans, w.uriSANs) {
		return fmt.Errorf("required URI SANs %v, want %v", sans, w.uriSANs)
	}
	return nil
}

func checkSviddCluster(c *clusterv3.Cluster) error {
	if c == nil {
		return fmt.Errorf("no static cluster %q", sdsCluster)
	}
	if c.GetType() != clusterv3.Cluster_STATIC {
		return fmt.Errorf("cluster %s is %s, want STATIC", sdsCluster, c.GetType())
	}
	var paths []string
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			paths = append(paths, lb.GetEndpoint().GetAddress().GetPipe().GetPath())
		}
	}
	if !slices.Equal(paths, []string{socketPath}) {
		return fmt.Errorf("cluster %s reaches socket %q, want exactly %s", sdsCluster, paths, socketPath)
	}
	opts := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	hpo := &httpv3.HttpProtocolOptions{}
	if opts == nil || opts.UnmarshalTo(hpo) != nil || hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		return fmt.Errorf("cluster %s does not speak HTTP/2 (explicit_http_config.http2_protocol_options): gRPC needs it", sdsCluster)
	}
	return nil
}

func checkSDSConfig(c *tlsv3.SdsSecretConfig, apiType corev3.ApiConfigSource_ApiType) error {
	src := c.GetSdsConfig()
	if src.GetResourceApiVersion() != corev3.ApiVersion_V3 {
		return fmt.Errorf("secret %s: resource_api_version %s, want V3", c.GetName(), src.GetResourceApiVersion())
	}
	api := src.GetApiConfigSource()
	if api.GetApiType() != apiType {
		return fmt.Errorf("secret %s: api_type %s, want %s", c.GetName(), api.GetApiType(), apiType)
	}
	if api.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		return fmt.Errorf("secret %s: transport_api_version %s, want V3", c.GetName(), api.GetTransportApiVersion())
	}
	gs := api.GetGrpcServices()
	if len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() != sdsCluster {
		return fmt.Errorf("secret %s: SDS grpc_services %v, want envoy_grpc cluster %s", c.GetName(), gs, sdsCluster)
	}
	return nil
}

// checkWorkloadName: a certificate is asked for by its SPIFFE ID (or svidd's "default").
func checkWorkloadName(name string) error {
	id, err := spiffeid.FromString(name)
	if err != nil || id.Path() == "" || id.TrustDomain().Name() != trustDomain {
		return fmt.Errorf("tls_certificate secret %q is not a workload SPIFFE ID in %s", name, trustDomain)
	}
	return nil
}

// checkBundleName: a validation context is asked for by trust domain ID, ROOTCA or ALL.
func checkBundleName(name string) error {
	if name == allBundles || name == rootCABundle {
		return nil
	}
	if id, err := spiffeid.FromString(name); err == nil && id.Path() == "" {
		return nil
	}
	return fmt.Errorf("validation secret %q is not a trust domain ID (spiffe://domain), %s or %s", name, rootCABundle, allBundles)
}

// filesDir is where the envoy-files bootstraps expect `svidctl svid watch -dir` to write.
const filesDir = "/run/svid/envoy"

// filesExamples: the bootstraps in envoy-files/ and the cluster whose TLS comes from files.
var filesExamples = map[string]struct {
	xdsCluster string
	uriSANs    []string
}{
	"ads-bootstrap.yaml": {xdsCluster: "xds", uriSANs: []string{"spiffe://example.org/xds"}},
}

// TestEnvoyFilesExamples: each bootstrap in envoy-files/ parses and validates like the others,
// gets its ADS cluster's certificate and trust from the resource files `svidctl svid watch`
// writes, and — checked against files really written by pkg/svidfiles — asks for secret names
// those files hold (Envoy rejects a mismatch) naming certificate files that exist.
func TestEnvoyFilesExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("envoy-files", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(filesExamples) {
		t.Errorf("envoy-files holds %v, the table %d examples: keep them in step", files, len(filesExamples))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, ok := filesExamples[filepath.Base(f)]; !ok {
				t.Fatalf("no expectations for %s: add it to filesExamples", f)
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkFilesExample(t, filepath.Base(f), src); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFilesCheckerRejects proves checkFilesExample can fail.
func TestFilesCheckerRejects(t *testing.T) {
	const name = "ads-bootstrap.yaml"
	good, err := os.ReadFile(filepath.Join("envoy-files", name))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		old, new    string
		wantInError string
	}{
		{"secret name svidctl does not write", "- name: svid\n", "- name: spiffe://example.org/edge-proxy\n", "secret"},
		{"resource file swapped", "path: /run/svid/envoy/tls_certificate_sds_secret.yaml", "path: /run/svid/envoy/validation_context_sds_secret.yaml", "secret"},
		{"no watched directory", "                watched_directory: { path: /run/svid/envoy }\n", "", "watched_directory"},
		{"another directory", "path: /run/svid/envoy/validation_context_sds_secret.yaml", "path: /etc/envoy/validation_context_sds_secret.yaml", "/run/svid/envoy"},
		{"SAN check dropped", "exact: spiffe://example.org/xds", "exact: spiffe://example.org/other", "URI SAN"},
		{"ADS at another cluster", "- envoy_grpc: { cluster_name: xds }", "- envoy_grpc: { cluster_name: other }", "cluster"},
		{"unknown field", "connect_timeout: 2s", "connect_timeout: 2s\n    conect_timeout: 2s", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(string(good), tt.old) {
				t.Fatalf("example no longer contains %q: update this test", tt.old)
			}
			err := checkFilesExample(t, name, []byte(strings.Replace(string(good), tt.old, tt.new, 1)))
			if err == nil || !strings.Contains(err.Error(), tt.wantInError) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantInError)
			}
		})
	}
}

// checkFilesExample validates one envoy-files bootstrap. It writes a real generation with
// pkg/svidfiles into a temporary directory and reads every path_config_source from there, as
// Envoy would read it from filesDir.
func checkFilesExample(t *testing.T, name string, src []byte) error {
	w := filesExamples[name]
	b, err := parseBootstrap(src)
	if err != nil {
		return err
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if gs := ads.GetGrpcServices(); len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() != w.xdsCluster {
		return fmt.Errorf("ads_config reaches %v, want cluster %s", gs, w.xdsCluster)
	}
	var xds *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == w.xdsCluster {
			xds = c
		}
	}
	if xds == nil {
		return fmt.Errorf("no static cluster %s", w.xdsCluster)
	}
	u := &tlsv3.UpstreamTlsContext{}
	if err := xds.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
		return fmt.Errorf("cluster %s: no UpstreamTlsContext: %w", w.xdsCluster, err)
	}
	ctx := u.GetCommonTlsContext()
	certs := ctx.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 {
		return fmt.Errorf("cluster %s: %d tls_certificate SDS configs, want 1", w.xdsCluster, len(certs))
	}
	cvc := ctx.GetCombinedValidationContext()
	var sans []string
	for _, m := range cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		sans = append(sans, m.GetMatcher().GetExact()+m.GetMatcher().GetPrefix())
	}
	if !slices.Equal(sans, w.uriSANs) {
		return fmt.Errorf("required URI SANs %v, want %v", sans, w.uriSANs)
	}

	// The files svidctl writes, in a temporary stand-in for filesDir.
	dir := t.TempDir()
	writer, err := svidfiles.NewWriter(svidfiles.Config{Dir: dir})
	if err != nil {
		return err
	}
	if _, err := writer.Write(selfSignedFileSet(t)); err != nil {
		return err
	}
	for _, c := range []*tlsv3.SdsSecretConfig{certs[0], cvc.GetValidationContextSdsSecretConfig()} {
		secret, err := secretFromFiles(c, dir)
		if err != nil {
			return err
		}
		if secret.GetName() != c.GetName() {
			return fmt.Errorf("SDS config asks for secret %q, but %s holds secret %q (Envoy would reject it)",
				c.GetName(), c.GetSdsConfig().GetPathConfigSource().GetPath(), secret.GetName())
		}
		var paths []string
		if tc := secret.GetTlsCertificate(); tc != nil {
			paths = []string{tc.GetCertificateChain().GetFilename(), tc.GetPrivateKey().GetFilename()}
		} else if vc := secret.GetValidationContext(); vc != nil {
			paths = []string{vc.GetTrustedCa().GetFilename()}
		}
		if c == certs[0] && secret.GetTlsCertificate() == nil {
			return fmt.Errorf("secret %q for the client certificate is not a tls_certificate", secret.GetName())
		}
		if c != certs[0] && secret.GetValidationContext() == nil {
			return fmt.Errorf("secret %q for validation is not a validation_context", secret.GetName())
		}
		for _, p := range paths {
			if _, err := os.ReadFile(p); err != nil {
				return fmt.Errorf("secret %q names %s: %w", secret.GetName(), p, err)
			}
		}
	}
	return nil
}

// secretFromFiles reads the Secret that SDS config c points at, with filesDir mapped to dir.
func secretFromFiles(c *tlsv3.SdsSecretConfig, dir string) (*tlsv3.Secret, error) {
	pcs := c.GetSdsConfig().GetPathConfigSource()
	if pcs == nil {
		return nil, fmt.Errorf("secret %q: sds_config is not a path_config_source", c.GetName())
	}
	if c.GetSdsConfig().GetResourceApiVersion() != corev3.ApiVersion_V3 {
		return nil, fmt.Errorf("secret %q: resource_api_version is not V3", c.GetName())
	}
	if pcs.GetWatchedDirectory().GetPath() != filesDir {
		return nil, fmt.Errorf("secret %q: watched_directory %q, want %s (Envoy would miss the swap of current)",
			c.GetName(), pcs.GetWatchedDirectory().GetPath(), filesDir)
	}
	rel, ok := strings.CutPrefix(pcs.GetPath(), filesDir+"/")
	if !ok || strings.Contains(rel, "/") {
		return nil, fmt.Errorf("secret %q: path %s is not a resource file in %s", c.GetName(), pcs.GetPath(), filesDir)
	}
	src, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		return nil, fmt.Errorf("secret %q: svidctl writes no %s: %w", c.GetName(), rel, err)
	}
	js, err := yaml.YAMLToJSON(src)
	if err != nil {
		return nil, err
	}
	resp := &discoveryv3.DiscoveryResponse{}
	if err := protojson.Unmarshal(js, resp); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", rel, err)
	}
	if len(resp.GetResources()) != 1 {
		return nil, fmt.Errorf("%s holds %d resources, want 1", rel, len(resp.GetResources()))
	}
	s := &tlsv3.Secret{}
	if err := resp.GetResources()[0].UnmarshalTo(s); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if err := s.ValidateAll(); err != nil {
		return nil, err
	}
	return s, nil
}

// selfSignedFileSet is a minimal valid generation: a fresh key and a certificate for it.
func selfSignedFileSet(t *testing.T) svidfiles.FileSet {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return svidfiles.FileSet{SVID: cert, Key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), Bundle: cert}
}
