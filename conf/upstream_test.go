package conf

import (
	"testing"
	"time"
)

// The upstream rows of the bad-config table, run by TestLoadErrors (kept here so the
// upstream's schema and its tests live together).
func init() {
	badConfigs = append(badConfigs, []struct {
		name string
		src  string
		want string
		line int
	}{
		{"unknown upstream", "ca {\n  upstream \"vault\" {\n  }\n}", `upstream "vault" is not one of "disk", "step_ca"`, 2},
		{"disk without key", "ca {\n  upstream \"disk\" {\n    cert_file = \"/etc/up.pem\"\n  }\n}", `upstream "disk" needs key_file`, 2},
		{"disk with url", "ca {\n  upstream \"disk\" {\n    cert_file = \"/a\"\n    key_file = \"/b\"\n    url = \"https://ca:9000\"\n  }\n}", `url is not a setting of upstream "disk"`, 5},
		{"step_ca http url", "ca {\n  upstream \"step_ca\" {\n    url = \"http://ca:9000\"\n    root_file = \"/r\"\n    provisioner = \"p\"\n    provisioner_key_file = \"/k\"\n    password_file = \"/pw\"\n  }\n}", `url "http://ca:9000" is not an https:// URL`, 3},
		{"step_ca missing password", "ca {\n  upstream \"step_ca\" {\n    url = \"https://ca:9000\"\n    root_file = \"/r\"\n    provisioner = \"p\"\n    provisioner_key_file = \"/k\"\n  }\n}", `upstream "step_ca" needs password_file`, 2},
		{"two upstreams", "ca {\n  upstream \"disk\" {\n    cert_file = \"/a\"\n    key_file = \"/b\"\n  }\n  upstream \"disk\" {\n  }\n}", "Duplicate upstream block", 6},
		{"unknown upstream key", "ca {\n  upstream \"disk\" {\n    cert_file = \"/a\"\n    key_file = \"/b\"\n    bundlefile = \"/c\"\n  }\n}", `An argument named "bundlefile" is not expected here`, 5},
		{"empty node name", "agent {\n  node_name = \"\"\n}", "node_name must not be empty", 2},
	}...)
}

func TestUpstreamConfig(t *testing.T) {
	disk, err := Load("d.hcl", []byte(`
agent {
  node_name = "web-1"
}
ca {
  upstream "disk" {
    cert_file   = "/etc/svidd/upstream.pem"
    key_file    = "/etc/svidd/upstream.key"
    bundle_file = "/etc/svidd/roots.pem"
  }
}
`), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	want := UpstreamConfig{Kind: UpstreamDisk, CertFile: "/etc/svidd/upstream.pem", KeyFile: "/etc/svidd/upstream.key", BundleFile: "/etc/svidd/roots.pem"}
	if disk.CA.Upstream != want || disk.NodeName != "web-1" {
		t.Fatalf("got %+v node %q", disk.CA.Upstream, disk.NodeName)
	}
	// Under an upstream ca_ttl defaults to hours, not the self-signed day.
	if disk.CA.CATTL != DefaultUpstreamCATTL {
		t.Fatalf("ca_ttl %s, want %s by default under an upstream", disk.CA.CATTL, DefaultUpstreamCATTL)
	}
	step, err := Load("s.hcl", []byte(`
ca {
  ca_ttl = "2h"
  svid_ttl = "10m"
  upstream "step_ca" {
    url                  = "https://ca.example.org:9000"
    root_file            = "/etc/svidd/step-root.pem"
    provisioner          = "svidd"
    provisioner_key_file = "/etc/svidd/provisioner.key"
    password_file        = "/etc/svidd/provisioner.pass"
  }
}
`), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if step.CA.Upstream.Kind != UpstreamStepCA || step.CA.Upstream.Provisioner != "svidd" || step.CA.CATTL != 2*time.Hour {
		t.Fatalf("got %+v", step.CA)
	}
	if def := Default(); def.NodeName == "" || def.CA.Upstream.Kind != "" {
		t.Fatalf("default node name %q, upstream %+v", def.NodeName, def.CA.Upstream)
	}
}
