package conf

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Allowed labels of the store block.
const (
	StoreSQLite = "sqlite"
	StoreEtcd   = "etcd"
)

// DefaultEtcdPrefix is the key prefix of the registry in etcd when store "etcd" sets none.
const DefaultEtcdPrefix = "/svidd/"

// StoreConfig is the store "KIND" {} block: where entries live. SQLite in the data dir is the
// default and needs no block; store "etcd" is a registry a fleet shares.
type StoreConfig struct {
	Kind string // "" (SQLite, the default) or StoreEtcd
	Etcd EtcdConfig
}

// EtcdConfig is the body of store "etcd" {}.
type EtcdConfig struct {
	Endpoints []string // client URLs, http:// or https://
	Prefix    string   // key prefix, starting and ending with "/"
	// TLS: CAFile verifies the members (system roots when empty); CertFile and KeyFile are
	// this host's client certificate, whose CN etcd's authentication takes as the user.
	CAFile, CertFile, KeyFile string
}

type fileStore struct {
	Kind           string         `hcl:"kind,label"`
	KindRange      hcl.Range      `hcl:"kind,label_range"`
	DefRange       hcl.Range      `hcl:",def_range"`
	Endpoints      hcl.Expression `hcl:"endpoints,optional"`
	EndpointsRange hcl.Range      `hcl:"endpoints,attr_range"`
	Prefix         *string        `hcl:"prefix,optional"`
	PrefixRange    hcl.Range      `hcl:"prefix,attr_range"`
	TLS            *fileStoreTLS  `hcl:"tls,block"`
}

type fileStoreTLS struct {
	DefRange      hcl.Range `hcl:",def_range"`
	CAFile        *string   `hcl:"ca_file,optional"`
	CAFileRange   hcl.Range `hcl:"ca_file,attr_range"`
	CertFile      *string   `hcl:"cert_file,optional"`
	CertFileRange hcl.Range `hcl:"cert_file,attr_range"`
	KeyFile       *string   `hcl:"key_file,optional"`
	KeyFileRange  hcl.Range `hcl:"key_file,attr_range"`
}

func (l *loader) store(cfg *Config, f *fileStore) {
	if f == nil {
		return
	}
	l.src["store"] = where{rng: f.DefRange.Ptr()}
	if f.Kind != StoreSQLite && f.Kind != StoreEtcd {
		l.fail("store", where{rng: f.KindRange.Ptr()}, fmt.Sprintf("store %q is not one of sqlite, etcd", f.Kind))
		return
	}
	if f.Kind == StoreEtcd {
		// SQLite stays the zero value, so a file naming it equals one that does not.
		cfg.Store.Kind = StoreEtcd
		cfg.Store.Etcd.Prefix = DefaultEtcdPrefix
	}
	if eps, ok := l.stringList("store.endpoints", f.Endpoints, f.EndpointsRange); ok {
		cfg.Store.Etcd.Endpoints = eps
	}
	l.str("store.prefix", l.file("store.prefix", f.Prefix, f.PrefixRange), &cfg.Store.Etcd.Prefix)
	if t := f.TLS; t != nil {
		l.src["store.tls"] = where{rng: t.DefRange.Ptr()}
		l.str("store.tls.ca_file", l.file("store.tls.ca_file", t.CAFile, t.CAFileRange), &cfg.Store.Etcd.CAFile)
		l.str("store.tls.cert_file", l.file("store.tls.cert_file", t.CertFile, t.CertFileRange), &cfg.Store.Etcd.CertFile)
		l.str("store.tls.key_file", l.file("store.tls.key_file", t.KeyFile, t.KeyFileRange), &cfg.Store.Etcd.KeyFile)
	}
}

func (v *validator) store(s StoreConfig) {
	if v.bad("store") {
		return
	}
	e := s.Etcd
	tls := e.CAFile != "" || e.CertFile != "" || e.KeyFile != ""
	switch s.Kind {
	case "", StoreSQLite:
		if len(e.Endpoints) > 0 || e.Prefix != "" || tls {
			v.errf(v.sourced("store.endpoints", "store.prefix", "store.tls", "store"),
				`store "sqlite" takes no settings; endpoints, prefix and tls belong to store "etcd"`)
		}
		return
	case StoreEtcd:
	default:
		v.errf("store", "store %q is not one of sqlite, etcd", s.Kind)
		return
	}
	if len(e.Endpoints) == 0 && !v.badUnder("store.endpoints") {
		v.errf("store.endpoints", `store "etcd" needs endpoints, e.g. endpoints = ["https://etcd-1:2379"]`)
	}
	for i, ep := range e.Endpoints {
		key := fmt.Sprintf("store.endpoints.%d", i)
		u, err := url.Parse(ep)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https"):
			v.errf(key, "endpoint %q is not an http:// or https:// URL", ep)
		case u.Port() == "" || u.Hostname() == "":
			v.errf(key, "endpoint %q needs a host and a port, e.g. https://etcd-1:2379", ep)
		case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
			v.errf(key, "endpoint %q must be scheme://host:port only", ep)
		case u.Scheme == "http" && tls:
			v.errf(key, "endpoint %q is http:// but tls is set; use https://", ep)
		}
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") {
		v.errf("store.prefix", "prefix %q must start and end with /, e.g. %q", e.Prefix, DefaultEtcdPrefix)
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		v.errf(v.sourced("store.tls.cert_file", "store.tls.key_file", "store.tls"), "cert_file and key_file go together (the client certificate and its key)")
	}
}
