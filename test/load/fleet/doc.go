// Package fleet measures issue 14's fleet registry targets on real parts: a real etcd cluster
// (internal/etcdtest), real svidd processes with store "etcd", the tests' Envoy (test/envoy)
// holding SDS streams, and, for a thousand hosts, a thousand real registry followers
// (pkg/store/etcdstore + pkg/store/mirror, each with its own etcd client and SQLite copy) in
// one process. It is a test binary so that it can start etcd as the tests do:
//
//	go test ./test/load/fleet -count=1 -v -timeout 60m -args -fleet hop,watchers,join,outage
//
// Scenarios (-fleet, comma-separated):
//
//	hop       an entry created on host A reaches a waiting SDS stream on host B; baseline:
//	          created and streamed on the same host (-fleet.reps each, interleaved)
//	watchers  one entry change reaches -fleet.watchers simulated hosts and -fleet.svidds
//	          real svidd processes; memory of etcd, svidd and one simulated host
//	join      a host with a fresh data dir joins a registry of -fleet.entries entries: process
//	          start to first SVID; then a restart on the warm copy
//	outage    the whole etcd cluster stopped for -fleet.outage while both hosts serve
//	          -fleet.ids identities with -fleet.ttl SVIDs: lost identities, expired
//	          certificates held, rotation lateness
//	smoke     (the default, in make test) watchers at a tiny size on one etcd member, a few
//	          seconds, so the tool stays working
//
// Results are printed as "fleet:" lines (go test -v); docs/BENCHMARKS.md "Fleet registry
// (issue 14)" records them with the commands that produced them.
package fleet
