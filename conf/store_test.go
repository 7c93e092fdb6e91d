package conf

import (
	"reflect"
	"testing"
)

func TestStoreEtcd(t *testing.T) {
	src := `store "etcd" {
  endpoints = ["https://10.0.0.1:2379", "https://etcd-2:2379"]
  prefix    = "/fleet/"
  tls {
    ca_file   = "/etc/svidd/etcd-ca.pem"
    cert_file = "/etc/svidd/etcd.pem"
    key_file  = "/etc/svidd/etcd-key.pem"
  }
}
`
	cfg, err := Load("store.hcl", []byte(src), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	want := StoreConfig{Kind: StoreEtcd, Etcd: EtcdConfig{
		Endpoints: []string{"https://10.0.0.1:2379", "https://etcd-2:2379"},
		Prefix:    "/fleet/",
		CAFile:    "/etc/svidd/etcd-ca.pem", CertFile: "/etc/svidd/etcd.pem", KeyFile: "/etc/svidd/etcd-key.pem",
	}}
	if !reflect.DeepEqual(cfg.Store, want) {
		t.Fatalf("Store = %+v, want %+v", cfg.Store, want)
	}

	cfg, err = Load("store.hcl", []byte("store \"etcd\" {\n  endpoints = [\"http://127.0.0.1:2379\"]\n}\n"), Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Etcd.Prefix != DefaultEtcdPrefix {
		t.Fatalf("default prefix = %q, want %q", cfg.Store.Etcd.Prefix, DefaultEtcdPrefix)
	}
	cfg, err = Load("store.hcl", []byte("agent {\n  registrar_only = true\n}\nstore \"etcd\" {\n  endpoints = [\"http://127.0.0.1:2379\"]\n}\n"), Overrides{})
	if err != nil || !cfg.RegistrarOnly {
		t.Fatalf("registrar_only = true: %+v, %v", cfg.RegistrarOnly, err)
	}
	if cfg, err := Load("store.hcl", []byte("store \"sqlite\" {}\n"), Overrides{}); err != nil || !reflect.DeepEqual(cfg.Store, Default().Store) {
		t.Fatalf("store \"sqlite\" {} = %+v, %v; want the default", cfg.Store, err)
	}
}

// The store block's mistakes join conf_test.go's table (TestLoadErrors: positioned, one
// diagnostic each).
func init() {
	badConfigs = append(badConfigs, []struct {
		name string
		src  string
		want string
		line int
	}{
		{"unknown kind", "store \"consul\" {\n}", `store "consul" is not one of sqlite, etcd`, 1},
		{"two stores", "store \"etcd\" {\n  endpoints = [\"http://a:1\"]\n}\nstore \"sqlite\" {}\n", "Duplicate store block", 4},
		{"no endpoints", "store \"etcd\" {\n}", `store "etcd" needs endpoints`, 1},
		{"endpoints not a list", "store \"etcd\" {\n  endpoints = \"http://a:1\"\n}", "list of string required", 2},
		{"endpoint without scheme", "store \"etcd\" {\n  endpoints = [\n    \"http://a:1\",\n    \"etcd-1:2379\",\n  ]\n}", `endpoint "etcd-1:2379" is not an http:// or https:// URL`, 4},
		{"endpoint without port", "store \"etcd\" {\n  endpoints = [\"https://etcd-1\"]\n}", "needs a host and a port", 2},
		{"endpoint with path", "store \"etcd\" {\n  endpoints = [\"https://etcd-1:2379/v3\"]\n}", "must be scheme://host:port only", 2},
		{"http with tls", "store \"etcd\" {\n  endpoints = [\"http://etcd-1:2379\"]\n  tls {\n    ca_file = \"/ca.pem\"\n  }\n}", "is http:// but tls is set", 2},
		{"prefix without slash", "store \"etcd\" {\n  endpoints = [\"http://a:1\"]\n  prefix = \"svidd\"\n}", `prefix "svidd" must start and end with /`, 3},
		{"cert without key", "store \"etcd\" {\n  endpoints = [\"https://a:1\"]\n  tls {\n    cert_file = \"/c.pem\"\n  }\n}", "cert_file and key_file go together", 4},
		{"sqlite with endpoints", "store \"sqlite\" {\n  endpoints = [\"http://a:1\"]\n}", `store "sqlite" takes no settings`, 2},
		{"registrar without etcd", "agent {\n  registrar_only = true\n}", `registrar_only needs store "etcd"`, 2},
		{"registrar with entries", "agent {\n  registrar_only = true\n}\nstore \"etcd\" {\n  endpoints = [\"http://a:1\"]\n}\nentry \"x\" {\n  spiffe_id = \"spiffe://example.org/x\"\n  selectors = [\"unix:uid:1\"]\n}", "registrar_only serves no workloads", 2},
		{"registrar not a bool", "agent {\n  registrar_only = \"yes\"\n}", "a bool is required", 2},
		{"unknown tls key", "store \"etcd\" {\n  endpoints = [\"https://a:1\"]\n  tls {\n    ca = \"/c.pem\"\n  }\n}", `An argument named "ca"`, 4},
	}...)
}
