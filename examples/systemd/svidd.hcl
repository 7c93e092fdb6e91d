# /etc/svidd/svidd.hcl for the systemd unit in this folder: state in the unit's
# StateDirectory, sockets in its RuntimeDirectory. Reload with `systemctl reload svidd`.
agent {
  trust_domain      = "example.org"
  socket_path       = "/run/svidd/api.sock"
  admin_socket_path = "/run/svidd/admin.sock"
  data_dir          = "/var/lib/svidd"
  log_level         = "info"
  log_format        = "json" # journald keeps the fields
}

ca {
  ca_ttl   = "24h"
  svid_ttl = "1h"
}

telemetry {
  prometheus {
    address = "127.0.0.1:9988"
  }
}

health {
  address = "127.0.0.1:9989"
}

entry "envoy" {
  spiffe_id = "spiffe://example.org/envoy"
  selectors = ["systemd:unit:envoy.service", "unix:path:/usr/local/bin/envoy"]
}
