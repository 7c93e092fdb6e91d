# Federation between two trust domains, as host "a" of a.example runs it: a.example publishes
# its bundle on an https_spiffe endpoint, and trusts b.example (whose svidd serves https_web
# with a Web PKI certificate) and partner.example (a SPIRE server). See README "Running a
# fleet". Loaded by conf's tests, so it stays valid.

agent {
  trust_domain = "a.example"
  data_dir     = "/var/lib/svidd"
}

federation {
  # This trust domain's bundle, for the peers that federate with us. An https_spiffe endpoint
  # serves with the SVID spiffe://a.example/svidd/bundle-endpoint, minted by svidd's CA and
  # renewed at half its life: peers configure that ID as their endpoint_spiffe_id.
  bundle_endpoint {
    address = "0.0.0.0:8443"
    profile = "https_spiffe"
    # refresh_hint defaults to a fifteenth of ca_ttl, at most 5m.
  }
}

# b.example's svidd serves https_web: its certificate is checked with the system's roots
# (SSL_CERT_FILE / SSL_CERT_DIR for a private web CA).
federates_with "b.example" {
  bundle_endpoint_url = "https://svidd.b.example:8443"
  profile             = "https_web"
}

# A SPIRE server's bundle endpoint (https_spiffe). The first bundle comes from a file copied
# over out of band (`spire-server bundle show -format spiffe`); after that each fetched
# bundle authenticates the next fetch. Its bundle reaches every workload, without listing it
# in each entry.
federates_with "partner.example" {
  bundle_endpoint_url = "https://spire.partner.example:8443"
  profile             = "https_spiffe"
  endpoint_spiffe_id  = "spiffe://partner.example/spire/server"
  bundle_file         = "/etc/svidd/partner.example.bundle.json"
  to_all_workloads    = true
}

# Only callers of this entry receive b.example's bundle (over SDS as spiffe://b.example and
# inside ALL, over the Workload API as a federated bundle, in svidctl svid watch files).
entry "billing" {
  spiffe_id      = "spiffe://a.example/billing"
  selectors      = ["unix:uid:1000"]
  federates_with = ["b.example"]
}
