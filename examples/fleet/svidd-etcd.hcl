# One host of a fleet that shares its registration entries through etcd. Every host runs
# svidd with this store block; entries registered with svidctl on any host reach all of them.
# The host keeps a copy in its data dir and serves from it while etcd is unreachable.
agent {
  trust_domain = "example.org"
  data_dir     = "/var/lib/svidd"
  # Every caller here also has node:name:web-1, node:group:web and node:group:eu: an entry
  # with -selector node:group:web is served (and copied) on the web hosts only.
  node_name   = "web-1"
  node_groups = ["web", "eu"]
}

store "etcd" {
  endpoints = [
    "https://etcd-1.example.org:2379",
    "https://etcd-2.example.org:2379",
    "https://etcd-3.example.org:2379",
  ]
  prefix = "/svidd/"
  tls {
    ca_file   = "/etc/svidd/etcd-ca.pem"
    cert_file = "/etc/svidd/etcd-client.pem" # CN = this host's etcd user
    key_file  = "/etc/svidd/etcd-client-key.pem"
  }
}
