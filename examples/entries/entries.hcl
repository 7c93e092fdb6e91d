# Sample registration entries for the Envoy examples in ../envoy/.
#
# entry blocks belong in svidd's config file; every other key has a default, so this file works
# on its own:  svidd run -config examples/entries/entries.hcl
# svidd reconciles config-declared entries with its store at start.
# The same entries can be made at run time with svidctl:
#   svidctl entry create -spiffeID spiffe://example.org/frontend \
#     -selector unix:uid:1000 -selector unix:path:/usr/bin/envoy
#
# A caller gets an entry's SPIFFE ID only if it has ALL of the entry's selectors. svidd learns
# them from the kernel (SO_PEERCRED, /proc), never from what the caller says, so pin the Envoy
# binary as well as the uid: another process of the same user must not get the frontend's SVID.

agent {
  trust_domain = "example.org"
}

# frontend-listener.yaml, spiffe-validator.yaml and delta.yaml: the server certificate.
entry "frontend" {
  spiffe_id = "spiffe://example.org/frontend"
  selectors = ["unix:uid:1000", "unix:path:/usr/bin/envoy"]
  # Also a DNS SAN, for clients that check the host name as well as the SPIFFE ID.
  dns_names = ["frontend.example.internal"]
}

# backend-upstream.yaml: the client certificate Envoy presents to the backend.
entry "backend-client" {
  spiffe_id = "spiffe://example.org/backend-client"
  selectors = ["unix:uid:1000", "unix:path:/usr/bin/envoy"]
}

# The backend's own Envoy, run by systemd as its own user: its SPIFFE ID is what
# backend-upstream.yaml requires in match_typed_subject_alt_names.
entry "backend" {
  spiffe_id = "spiffe://example.org/backend"
  selectors = ["unix:user:envoy", "systemd:unit:envoy-backend.service"]
  # Shorter than the default hour: rotation is cheap and a leaked key is useful for less time.
  x509_svid_ttl = "30m"
}
