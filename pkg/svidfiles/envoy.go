package svidfiles

import (
	"fmt"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// Secret names in the Envoy resource files. Envoy rejects a file whose secret name differs from
// the name in the SdsSecretConfig that points at it, so bootstraps must use these.
const (
	CertSecretName   = "svid"
	BundleSecretName = "bundle"
)

const sdsHeader = `# Written by svidctl (pkg/svidfiles) for the SVID files in this directory; do not edit.
# An Envoy SDS resource for sds_config.path_config_source. watched_directory makes Envoy
# reload when the "current" symlink is swapped.
`

// sdsResources returns the content of the two Envoy resource files for dir (absolute).
func sdsResources(dir string) (map[string][]byte, error) {
	watched := &corev3.WatchedDirectory{Path: dir}
	file := func(name string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{
			Filename: filepath.Join(dir, CurrentLink, name),
		}}
	}
	secrets := map[string]*tlsv3.Secret{
		CertSDSFile: {
			Name: CertSecretName,
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: file(SVIDFile),
				PrivateKey:       file(KeyFile),
				WatchedDirectory: watched,
			}},
		},
		ValidationSDSFile: {
			Name: BundleSecretName,
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:        file(BundleFile),
				WatchedDirectory: watched,
			}},
		},
	}
	out := map[string][]byte{}
	for name, s := range secrets {
		y, err := resourceYAML(s)
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", name, err)
		}
		out[name] = y
	}
	return out, nil
}

// resourceYAML encodes m as Envoy reads a path_config_source file: a DiscoveryResponse
// holding one resource. protojson gets the field names right; the YAML round trip makes the
// output stable (protojson's is deliberately not), so unchanged content compares equal.
func resourceYAML(m proto.Message) ([]byte, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&discoveryv3.DiscoveryResponse{
		Resources: []*anypb.Any{a},
	})
	if err != nil {
		return nil, err
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, err
	}
	return append([]byte(sdsHeader), y...), nil
}
