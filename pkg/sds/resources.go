package sds

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/svidd/svidd/pkg/workload"
)

// spiffeValidatorName is the extension name of Envoy's SPIFFE certificate validator.
const spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

const spiffeScheme = "spiffe://"

// resource is one requested name resolved against a View: enough to decide whether it must be
// sent (its version) and to build its Secret when it is. Building is deferred because most
// View updates change nothing a given stream asked for.
type resource struct {
	name    string
	version string
	svid    *workload.SVID     // a TlsCertificate
	bundle  *workload.Bundle   // a trusted_ca validation context
	bundles []*workload.Bundle // the SPIFFE validator with every bundle (allName)
}

// resolve looks name up in the caller's own View; ok is false when the View has nothing by
// that name. Names are compared as strings, without parsing: a name that is not exactly a
// SPIFFE ID or trust domain ID the View holds simply matches nothing.
func (s *Server) resolve(v *workload.View, name string) (resource, bool) {
	if v == nil {
		return resource{}, false
	}
	switch name {
	case s.svidName:
		// A Partial View's first SVID is not necessarily the default identity: that is only
		// known once every SVID exists, in the complete View that follows.
		if len(v.SVIDs) == 0 || v.Partial {
			return resource{}, false
		}
		return svidResource(name, v.SVIDs[0]), true
	case s.rootName:
		b := v.BundleFor(s.td)
		if !hasRoots(b) {
			return resource{}, false
		}
		return bundleResource(name, b), true
	case s.allName:
		bs := withRoots(v.Bundles)
		if len(bs) == 0 {
			// The validator requires at least one trust domain.
			return resource{}, false
		}
		return resource{name: name, version: allVersion(bs), bundles: bs}, true
	}
	rest, ok := strings.CutPrefix(name, spiffeScheme)
	if !ok {
		return resource{}, false
	}
	if !strings.Contains(rest, "/") {
		for _, b := range v.Bundles {
			if b.TrustDomain.Name() == rest && hasRoots(b) {
				return bundleResource(name, b), true
			}
		}
		return resource{}, false
	}
	for _, sv := range v.SVIDs {
		if sv.ID.String() == name {
			return svidResource(name, sv), true
		}
	}
	return resource{}, false
}

func svidResource(name string, sv *workload.SVID) resource {
	return resource{name: name, version: sv.Serial, svid: sv}
}

func bundleResource(name string, b *workload.Bundle) resource {
	return resource{name: name, version: strconv.FormatUint(b.Sequence, 10), bundle: b}
}

// allVersion changes whenever a trust domain is added, dropped or rotates its bundle.
func allVersion(bundles []*workload.Bundle) string {
	var sb strings.Builder
	for i, b := range bundles {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(b.TrustDomain.Name())
		sb.WriteByte('=')
		sb.WriteString(strconv.FormatUint(b.Sequence, 10))
	}
	return sb.String()
}

// wildcardResources is everything the caller is entitled to, each under its own name. Of a
// Partial View only the bundles: its SVIDs are not everything, and the complete View follows.
func wildcardResources(v *workload.View, dst []resource) []resource {
	if v == nil {
		return dst
	}
	if !v.Partial {
		for _, sv := range v.SVIDs {
			dst = append(dst, svidResource(sv.ID.String(), sv))
		}
	}
	for _, b := range v.Bundles {
		if hasRoots(b) {
			dst = append(dst, bundleResource(b.TrustDomain.IDString(), b))
		}
	}
	return dst
}

// hasRoots reports whether b can be a validation context. A trust domain whose bundle holds
// no X.509 authority (only JWT keys, or none: revoked, SPIFFE Trust Domain and Bundle §4.1.3)
// is not sent at all: Envoy rejects an empty trusted_ca, and without roots nothing of that
// trust domain verifies anyway. A delta stream that held it gets it in removed_resources.
func hasRoots(b *workload.Bundle) bool { return b != nil && len(b.X509Authorities) > 0 }

// withRoots is the bundles that hasRoots, sharing bs when that is all of them.
func withRoots(bs []*workload.Bundle) []*workload.Bundle {
	for i, b := range bs {
		if !hasRoots(b) {
			out := slices.Clone(bs[:i])
			for _, b := range bs[i+1:] {
				if hasRoots(b) {
					out = append(out, b)
				}
			}
			return out
		}
	}
	return bs
}

// resolveAll resolves the names a stream asked for (deduplicated already) plus, for a
// wildcard stream, everything in the View. The result never holds a name twice: explicit
// names come first, in request order.
func (s *Server) resolveAll(v *workload.View, names []string, wildcard bool) []resource {
	out := make([]resource, 0, len(names))
	for _, n := range names {
		if r, ok := s.resolve(v, n); ok {
			out = append(out, r)
		}
	}
	if !wildcard {
		return out
	}
	if len(out) == 0 {
		return wildcardResources(v, out)
	}
	seen := make(map[string]struct{}, len(out))
	for _, r := range out {
		seen[r.name] = struct{}{}
	}
	for _, r := range wildcardResources(v, nil) {
		if _, dup := seen[r.name]; !dup {
			out = append(out, r)
		}
	}
	return out
}

// secret builds the Secret for r. The PEM slices are the View's own: no copy is made before
// marshalling.
func (r resource) secret() (*tlsv3.Secret, error) {
	switch {
	case r.svid != nil:
		return &tlsv3.Secret{
			Name: r.name,
			Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
				CertificateChain: inline(r.svid.CertChainPEM),
				PrivateKey:       inline(r.svid.KeyPEM),
			}},
		}, nil
	case r.bundle != nil:
		return &tlsv3.Secret{
			Name: r.name,
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: inline(r.bundle.PEM),
			}},
		}, nil
	case len(r.bundles) > 0:
		cfg := &tlsv3.SPIFFECertValidatorConfig{
			TrustDomains: make([]*tlsv3.SPIFFECertValidatorConfig_TrustDomain, 0, len(r.bundles)),
		}
		for _, b := range r.bundles {
			cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
				Name:        b.TrustDomain.Name(), // the validator wants no spiffe:// prefix
				TrustBundle: inline(b.PEM),
			})
		}
		typed, err := anypb.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("marshalling SPIFFE validator config: %w", err)
		}
		return &tlsv3.Secret{
			Name: r.name,
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CustomValidatorConfig: &corev3.TypedExtensionConfig{
					Name:        spiffeValidatorName,
					TypedConfig: typed,
				},
			}},
		}, nil
	}
	return nil, fmt.Errorf("resource %q resolves to nothing", r.name)
}

// marshal builds r's Secret and encodes it as an Any in protobuf wire format.
func (r resource) marshal() ([]byte, error) {
	sec, err := r.secret()
	if err != nil {
		return nil, err
	}
	b, err := proto.Marshal(sec)
	if err != nil {
		return nil, fmt.Errorf("marshalling secret %q: %w", r.name, err)
	}
	a := make([]byte, 0, len(SecretTypeURL)+len(b)+8)
	a = protowire.AppendTag(a, anyTypeURLField, protowire.BytesType)
	a = protowire.AppendString(a, SecretTypeURL)
	a = protowire.AppendTag(a, anyValueField, protowire.BytesType)
	a = protowire.AppendBytes(a, b)
	return a, nil
}

// Field numbers of the messages svidd encodes by hand (envoy/service/discovery/v3 and
// google/protobuf/any.proto); TestWireEncoding checks the result against the generated types.
const (
	anyTypeURLField = 1
	anyValueField   = 2

	respVersionInfoField = 1 // DiscoveryResponse.version_info
	respResourcesField   = 2 // DiscoveryResponse.resources (Any)
	respTypeURLField     = 4 // DiscoveryResponse.type_url
	respNonceField       = 5 // DiscoveryResponse.nonce

	deltaSystemVersionField = 1 // DeltaDiscoveryResponse.system_version_info
	deltaResourcesField     = 2 // DeltaDiscoveryResponse.resources (Resource)
	deltaTypeURLField       = 4 // DeltaDiscoveryResponse.type_url
	deltaNonceField         = 5 // DeltaDiscoveryResponse.nonce
	deltaRemovedField       = 6 // DeltaDiscoveryResponse.removed_resources

	resourceVersionField  = 1 // Resource.version
	resourceResourceField = 2 // Resource.resource (Any)
	resourceNameField     = 3 // Resource.name
)

// encoding says which response a resource's encoding is for.
type encoding uint8

const (
	anyEncoding   encoding = iota // the Secret as an Any, which the other two embed
	sotwEncoding                  // a DiscoveryResponse.resources element
	deltaEncoding                 // a DeltaDiscoveryResponse.resources element (a Resource)
)

// encodedKey names r's encoding in its View's memo: the name and version, and what they
// resolved to, determine the Secret completely (a name can resolve differently on servers
// configured with other special names, and ALL's bundles are the View's own).
type encodedKey struct {
	name, version string
	svid          *workload.SVID
	bundle        *workload.Bundle
	enc           encoding
}

// encodedValue is a memoized encoding.
type encodedValue struct {
	b   []byte
	err error
}

// encoded returns r as one repeated-field element of a response (tag, length and message),
// encoded once per View (r must have been resolved against v) and shared by every stream that
// holds v: a View goes to every stream of a caller group and only version and nonce differ
// between their responses. The bytes are read-only; gRPC sends them as they are (pkg/wire).
func (r resource) encoded(v *workload.View, enc encoding) ([]byte, error) {
	key := encodedKey{name: r.name, version: r.version, svid: r.svid, bundle: r.bundle, enc: enc}
	e := v.Memo(key, func() any {
		// The Secret itself is marshalled once per View whichever responses carry it.
		anyKey := key
		anyKey.enc = anyEncoding
		a := v.Memo(anyKey, func() any {
			b, err := r.marshal()
			return encodedValue{b, err}
		}).(encodedValue)
		if a.err != nil {
			return a
		}
		var b []byte
		switch enc {
		case sotwEncoding:
			b = protowire.AppendTag(make([]byte, 0, len(a.b)+4), respResourcesField, protowire.BytesType)
			b = protowire.AppendBytes(b, a.b)
		case deltaEncoding:
			res := make([]byte, 0, len(a.b)+len(r.name)+len(r.version)+12)
			res = protowire.AppendTag(res, resourceVersionField, protowire.BytesType)
			res = protowire.AppendString(res, r.version)
			res = protowire.AppendTag(res, resourceResourceField, protowire.BytesType)
			res = protowire.AppendBytes(res, a.b)
			res = protowire.AppendTag(res, resourceNameField, protowire.BytesType)
			res = protowire.AppendString(res, r.name)
			b = protowire.AppendTag(make([]byte, 0, len(res)+4), deltaResourcesField, protowire.BytesType)
			b = protowire.AppendBytes(b, res)
		}
		return encodedValue{b: b}
	}).(encodedValue)
	return e.b, e.err
}

// appendString appends a string field unless it is empty (proto3 omits empty strings).
func appendString(b []byte, field protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
