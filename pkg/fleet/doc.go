// Package fleet is what the hosts of one trust domain share through the fleet registry
// (etcd, store "etcd") besides the entries: each host's JWT-SVID public keys, so that a
// JWT-SVID minted on any host validates on every host, and the rule that keeps the
// spiffe_sequence of the bundle every host serves monotonic and equal across hosts.
//
// Keys live under Prefix + "hosts/<node>/jwtkeys/<kid>" (the layout is pkg/store/etcdstore's),
// one record per key (keyRecord: the JWK, its kid, its not-after), each under its own etcd
// lease that ends a margin after the key's NotAfter, so a host that disappears takes its keys
// with it when they expire and never earlier. A Publisher keeps what etcd holds under its own
// node equal to the host's current keys (re-publishing after etcd was away or a lease was
// lost); Keys follows every host's records (Follow: a watch from a revision, resumed after a
// disconnect, a full reload after a compaction), checks them, and keeps them in the host's
// SQLite so a restart with etcd unreachable still validates other hosts' unexpired tokens.
// Bundler assembles the served bundle: the host's CA bundle plus every other host's keys,
// with the sequence of NextSequence.
//
// SharedBundles (federation.Sharing) makes the hosts fetch each federated trust domain's
// bundle once: one fetcher per trust domain, elected under Prefix + "locks/federation/<td>"
// with a lease, writes it to Prefix + "bundles/<td>", and every host takes that copy.
//
// NodeRecord keeps each host's node record (Prefix + "hosts/<node>/node": what it runs and how
// far its copy follows the registry) and its alive key under a lease; List reads every host's
// and Judge says which are up, behind or gone (nodes.go).
package fleet
