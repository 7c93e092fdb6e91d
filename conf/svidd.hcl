# svidd default configuration. Every key below is optional and shows its default, so this
# file, an empty file and no file at all (`svidd run` without -config) behave the same.
# Flags given to `svidd run` override what is written here.

agent {
  # The trust domain this agent's CA issues SVIDs for ("example.org" or "spiffe://example.org").
  trust_domain = "example.org"

  # Envoy connects here for SDS (and workloads for the SPIFFE Workload API). Absolute path,
  # at most 107 bytes (the kernel's sun_path limit).
  socket_path = "/tmp/agent/api.sock"

  # svidctl connects here; only the agent's owner may use it.
  admin_socket_path = "/tmp/agent/admin.sock"

  # CA keys and the entry store live here (relative to the working directory if relative).
  data_dir = "./.svidd"

  log_level  = "info" # debug | info | warn | error
  log_format = "text" # text | json
}

ca {
  key_type = "ec-p256" # ec-p256 | ec-p384 | rsa-2048
  ca_ttl   = "24h"
  # Default X509-SVID lifetime; SVIDs are re-minted at half of it. At most a sixth of ca_ttl,
  # so a new CA can be published and activated with overlap before the old one expires.
  svid_ttl = "1h"
  # Default JWT-SVID lifetime (Workload API FetchJWTSVID). JWT-SVIDs are bearer tokens that
  # cannot be revoked, so keep it short; also at most a sixth of ca_ttl.
  jwt_svid_ttl = "5m"
}

# The special SDS resource names Envoy may ask for (see DESIGN.md "Protocol rules").
sds {
  default_svid_name        = "default" # the caller's first SVID
  default_bundle_name      = "ROOTCA"  # own trust domain's bundle
  default_all_bundles_name = "ALL"     # every trust domain, via Envoy's SPIFFE validator
}

telemetry {
  prometheus {
    address = "127.0.0.1:9988" # "" disables the metrics listener
  }
}

health {
  address    = "" # e.g. "127.0.0.1:9989"; "" disables the health listener
  live_path  = "/live"
  ready_path = "/ready"
}

# Registration entries can also be declared here; they are reconciled into the store at
# start. The label names the entry. For example:
#
# entry "backend" {
#   spiffe_id     = "spiffe://example.org/backend"
#   selectors     = ["unix:uid:1000", "unix:path:/usr/bin/envoy"]
#   x509_svid_ttl = "30m"            # optional, default ca.svid_ttl
#   dns_names     = ["backend.local"] # optional
# }
