# svidd default configuration. Every key below is optional and shows its default, so this
# file, an empty file and no file at all (`svidd run` without -config) behave the same.
# Flags given to `svidd run` override what is written here.

agent {
  # The trust domain this agent's CA issues SVIDs for ("example.org" or "spiffe://example.org").
  trust_domain = "example.org"

  # Envoy connects here for SDS (and workloads for the SPIFFE Workload API). Absolute path,
  # at most 107 bytes (the kernel's sun_path limit). svidd creates the directory (0755), or
  # refuses to start if it exists and belongs to another user or is writable by others.
  socket_path = "/tmp/agent/api.sock"

  # svidctl connects here; only the agent's owner may use it.
  admin_socket_path = "/tmp/agent/admin.sock"

  # CA keys and the entry store live here (relative to the working directory if relative).
  # Created 0700; an existing one must be svidd's user's and writable by nobody else.
  data_dir = "./.svidd"

  log_level  = "info" # debug | info | warn | error
  log_format = "text" # text | json

  # This host's name, in the subject of the CA certificates it asks an upstream for (so the
  # upstream's logs say which host asked). Default: the hostname. Every caller on this host
  # also has the selector node:name:<node_name>, and node:group:<g> for each of node_groups,
  # so an entry can be scoped to one host or a group of hosts (no "/" in a name; no
  # whitespace in either). Both take effect at start only.
  # node_name   = "web-1"
  # node_groups = ["web", "eu"]

  # A registrar and nothing else (needs store "etcd"): serves the admin socket, whose entry
  # writes go straight to the fleet registry; no Workload API socket, CA or attestation.
  # registrar_only = false
}

ca {
  key_type = "ec-p256" # ec-p256 | ec-p384 | rsa-2048
  ca_ttl   = "24h" # at least 30s
  # Default X509-SVID lifetime; SVIDs are re-minted at half of it. At most a sixth of ca_ttl,
  # so a new CA can be published and activated with overlap before the old one expires; at
  # least 5s, so an SVID is replaced well before it expires.
  svid_ttl = "1h"
  # Default JWT-SVID lifetime (Workload API FetchJWTSVID). JWT-SVIDs are bearer tokens that
  # cannot be revoked, so keep it short; also at most a sixth of ca_ttl, at least 5s.
  jwt_svid_ttl = "5m"

  # With an upstream, this host's CA is an intermediate signed by a PKI the fleet shares, and
  # every host serves the upstream's roots as the bundle (README "Running a fleet"). ca_ttl
  # then defaults to 6h. One of:
  #
  # upstream "disk" {
  #   cert_file   = "/etc/svidd/upstream.pem" # the upstream CA (then its intermediates)
  #   key_file    = "/etc/svidd/upstream.key"
  #   bundle_file = "/etc/svidd/roots.pem"    # optional if cert_file is a root
  # }
  #
  # upstream "step_ca" {
  #   url                  = "https://ca.example.org:9000"
  #   root_file            = "/etc/svidd/step-root.pem"
  #   provisioner          = "svidd-web-1"
  #   provisioner_key_file = "/etc/svidd/provisioner.key"
  #   password_file        = "/etc/svidd/provisioner.pass"
  # }
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

# What one local user (uid, as the kernel reports it: forking or more connections do not
# escape a limit) may ask of socket_path, so that no process can starve svidd for the others.
# Over a limit a connection is closed as soon as it is accepted, and a stream fails at once
# with RESOURCE_EXHAUSTED, before any attestation work; other uids are served as usual.
# Root is limited too. The defaults are far above what one Envoy needs (dozens of streams,
# all reopened on a restart) and fit the benchmarks (10,000 streams on one connection, 1,000
# connections, each opened at once); on a small host, lower them.
limits {
  connections_per_second       = 200   # new connections per second, per uid, steady
  connection_burst             = 2048  # new connections a uid may make at once
  max_open_connections_per_uid = 2048
  streams_per_second           = 2000  # new streams and calls per second, per uid, steady
  stream_burst                 = 20000 # new streams a uid may open at once
  # Also the HTTP/2 MAX_CONCURRENT_STREAMS of each connection.
  max_open_streams_per_uid     = 20000
  # Largest request message, in bytes. Names per request (1024) and name length (2048 bytes)
  # are bounded on their own.
  max_message_bytes            = 262144
  # What one uid's open streams may make svidd hold, in bytes: the names they subscribe to
  # and the state kept for them. A refusal is RESOURCE_EXHAUSTED.
  max_bytes_per_uid            = 67108864 # 64 MiB
  # The same for streams whose caller no entry matches (waiting for one); each such stream
  # is also charged 16 KiB for itself.
  max_unentitled_bytes_per_uid = 4194304 # 4 MiB
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

# Federation with other trust domains (SPIFFE Federation; see README "Running a fleet" and
# examples/federation/svidd.hcl). Nothing is federated by default. For example:
#
# federation {
#   min_refresh_interval = "1m"   # a foreign endpoint is polled at its refresh hint, not faster
#   bundle_endpoint {             # publish this trust domain's bundle to peers
#     address      = "0.0.0.0:8443"
#     profile      = "https_spiffe" # served with spiffe://TRUST_DOMAIN/svidd/bundle-endpoint
#     # profile = "https_web", cert_file = "/etc/svidd/web.pem", key_file = "/etc/svidd/web.key"
#     refresh_hint = "5m"           # default: ca_ttl/15, at most 5m
#   }
# }
#
# federates_with "other.org" {
#   bundle_endpoint_url = "https://svidd.other.org:8443"
#   profile             = "https_spiffe"  # or https_web (system roots, SSL_CERT_FILE)
#   endpoint_spiffe_id  = "spiffe://other.org/svidd/bundle-endpoint"
#   bundle_file         = "/etc/svidd/other.org.json" # first bundle (SPIFFE JSON or PEM)
#   to_all_workloads    = false       # true: every caller gets this bundle
# }
#
# An entry's federates_with lists the trust domains whose bundles its callers receive:
#   federates_with = ["other.org"]
