// Package agent assembles svidd: it owns the store, the CA, the attestor and the identity
// cache, serves SDS, the Workload API and the admin API on their sockets, and turns every
// change (entry written, SVID due, bundle rotated) into new Views for the affected streams.
//
// One file per concern:
//
//   - agent.go: Config, New (data dir, lock, store, CA, attestor, limits), Listen (the
//     sockets and TCP listeners), Run and Serve (the short list of what runs), ready.
//   - attest.go: per-connection attestation: started at accept (preattest), confirmed at the
//     first RPC, shared by every RPC of the connection, bound to the binary the connection's
//     process ran then; the binary's digest only when an entry could need it.
//   - watch.go: the front-ends' entry points, Watch (a caller's View subscription) and
//     FetchJWTSVIDs.
//   - reconcile.go: the config's entry blocks kept equal to the store's config-owned entries;
//     Reload (SIGHUP).
//   - updater.go: the update queue (one goroutine applies store changes, rotations and bundle
//     changes in order), rotation timers and the bundle watcher.
//   - cache.go: the identity cache: entries indexed for matching, callers grouped by selector
//     set, one View per group rebuilt and published on change.
//   - mint.go: minting SVIDs, in the foreground for what a caller waits for and in the
//     background for the rest of a Partial group.
//   - rotate.go: when an SVID is re-minted (a pure function of its lifetime) and the
//     re-minting itself.
//   - fleet.go: with store "etcd", the fleet's JWT keys: this host's published, every host's
//     followed and kept in the data dir, and the bundle served with all of them (pkg/fleet).
//   - nodes.go: this host's node record in the fleet registry (store "etcd") and the
//     fleet's host list for svidctl node.
//   - status.go: the operator's status (admin API) and the gauges set at scrape time.
package agent
