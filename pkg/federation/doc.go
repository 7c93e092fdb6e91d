// Package federation implements SPIFFE Federation (spiffe/spiffe standards/SPIFFE_Federation.md)
// for svidd: the bundle endpoint that publishes this trust domain's bundle (profiles
// https_spiffe and https_web), and the Manager that fetches foreign trust domains' bundles from
// theirs, keeps the last good one of each in the store, and tells the agent which bundles
// exist so that callers whose entries federate with a trust domain receive its bundle.
//
// Bundles of different trust domains are never merged: each foreign trust domain is one
// stored row and one workload.Bundle.
//
// go-spiffe does the SPIFFE parts: spiffebundle parses and encodes bundle documents,
// tlsconfig authenticates an https_spiffe endpoint by its SPIFFE ID, and federation.NewHandler
// answers GET requests at the endpoint. The fetch loop is ours: go-spiffe's WatchBundle polls
// at a fixed cadence with a fresh HTTP transport per fetch and no bound on the answer's size,
// status or rate of retries, and svidd needs all four.
package federation
