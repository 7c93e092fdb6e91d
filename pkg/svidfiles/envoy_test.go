package svidfiles

import (
	"os"
	"path/filepath"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// TestSDSResourceFiles: the resource files decode as Envoy decodes a path_config_source file
// (YAML → JSON → DiscoveryResponse, unknown fields rejected), hold one valid Secret with the
// documented name, and name files that exist under DIR/current with DIR as watched_directory.
func TestSDSResourceFiles(t *testing.T) {
	w := newWriter(t, Config{})
	if _, err := w.Write(newSet(t, 1)); err != nil {
		t.Fatal(err)
	}
	dir := w.Dir()
	tests := []struct {
		file      string
		name      string
		filenames func(*tlsv3.Secret) []string
		watched   func(*tlsv3.Secret) string
	}{
		{
			CertSDSFile, CertSecretName,
			func(s *tlsv3.Secret) []string {
				c := s.GetTlsCertificate()
				return []string{c.GetCertificateChain().GetFilename(), c.GetPrivateKey().GetFilename()}
			},
			func(s *tlsv3.Secret) string { return s.GetTlsCertificate().GetWatchedDirectory().GetPath() },
		},
		{
			ValidationSDSFile, BundleSecretName,
			func(s *tlsv3.Secret) []string {
				return []string{s.GetValidationContext().GetTrustedCa().GetFilename()}
			},
			func(s *tlsv3.Secret) string { return s.GetValidationContext().GetWatchedDirectory().GetPath() },
		},
	}
	wantFiles := map[string][]string{
		CertSDSFile:       {filepath.Join(dir, CurrentLink, SVIDFile), filepath.Join(dir, CurrentLink, KeyFile)},
		ValidationSDSFile: {filepath.Join(dir, CurrentLink, BundleFile)},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(dir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			js, err := yaml.YAMLToJSON(src)
			if err != nil {
				t.Fatal(err)
			}
			resp := &discoveryv3.DiscoveryResponse{}
			if err := protojson.Unmarshal(js, resp); err != nil {
				t.Fatalf("decoding %s: %v", tt.file, err)
			}
			if err := resp.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			if len(resp.GetResources()) != 1 {
				t.Fatalf("%d resources, want 1", len(resp.GetResources()))
			}
			s := &tlsv3.Secret{}
			if err := resp.GetResources()[0].UnmarshalTo(s); err != nil {
				t.Fatalf("resource is not a Secret: %v", err)
			}
			if err := s.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			if s.GetName() != tt.name {
				t.Errorf("secret name %q, want %q", s.GetName(), tt.name)
			}
			got := tt.filenames(s)
			if len(got) != len(wantFiles[tt.file]) {
				t.Fatalf("filenames %v, want %v", got, wantFiles[tt.file])
			}
			for i, f := range got {
				if f != wantFiles[tt.file][i] {
					t.Errorf("filename %q, want %q", f, wantFiles[tt.file][i])
				}
				if _, err := os.ReadFile(f); err != nil {
					t.Errorf("Envoy could not read %s: %v", f, err)
				}
			}
			if got := tt.watched(s); got != dir {
				t.Errorf("watched_directory %q, want %q", got, dir)
			}
		})
	}
}

// TestSDSResourcesRelativeDir: a relative Dir still yields absolute paths, since Envoy's working
// directory is not the writer's.
func TestSDSResourcesRelativeDir(t *testing.T) {
	t.Chdir(t.TempDir())
	w := newWriter(t, Config{Dir: "certs"})
	if !filepath.IsAbs(w.Dir()) {
		t.Fatalf("Dir() = %q, want an absolute path", w.Dir())
	}
	res, err := sdsResources(w.Dir())
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(res[CertSDSFile])
	if err != nil {
		t.Fatal(err)
	}
	resp := &discoveryv3.DiscoveryResponse{}
	if err := protojson.Unmarshal(js, resp); err != nil {
		t.Fatal(err)
	}
	s := &tlsv3.Secret{}
	if err := resp.GetResources()[0].UnmarshalTo(s); err != nil {
		t.Fatal(err)
	}
	if f := s.GetTlsCertificate().GetCertificateChain().GetFilename(); !filepath.IsAbs(f) {
		t.Errorf("certificate_chain %q is relative", f)
	}
}
