// Package sds serves Envoy's Secret Discovery Service (envoy.service.secret.v3) over a
// caller's View stream: StreamSecrets (state of the world), DeltaSecrets (incremental) and
// FetchSecrets (unary).
//
// The server never mints, attests or queries the store: each stream calls Watcher.Watch once
// and translates the Views it receives into Secrets. Names map to Secrets as follows:
//
//   - a SPIFFE ID in the View's SVIDs: a TlsCertificate (chain and PKCS#8 key, inline PEM);
//   - a trust domain ID ("spiffe://example.org") with a bundle in the View: a validation
//     context whose trusted_ca holds the bundle's roots;
//   - Config.DefaultSVIDName ("default"): the View's first SVID (the agent orders SVIDs by
//     SPIFFE ID, then entry ID), named "default";
//   - Config.DefaultBundleName ("ROOTCA"): the own trust domain's bundle;
//   - Config.DefaultAllBundlesName ("ALL"): a validation context using Envoy's SPIFFE
//     certificate validator with every trust domain's bundle;
//   - wildcard (no names on a stream's first request, or "*"): every SVID named by its SPIFFE
//     ID and every bundle named by its trust domain ID.
//
// Any other name yields nothing: the stream stays open and the name is remembered, so the
// Secret is pushed as soon as a View contains it (SPIRE instead fails the whole stream). Names
// are only ever looked up in the caller's own View, so a caller never receives another
// workload's SVID.
//
// What a stream keeps for its caller (the names it remembers, the versions a delta client
// says it holds) is charged to the caller's byte budget, the admission.Account in the
// stream's context; past it the stream ends with ResourceExhausted. A caller entitled to
// nothing (an empty View) has the smaller budget and also pays for the stream itself. Lines
// a client can make the server log at will (a NACK, a failed watch) go through the Account's
// log budget.
//
// Resource versions are the SVID's serial number and the bundle's sequence number (for "ALL",
// the trust domains and their sequences), so a View update that changes nothing a stream
// asked for sends nothing on that stream.
//
// Streams are cheap: one goroutine reading requests besides gRPC's own (started after the
// first request, so its stack stays small), no timers, no logger unless a record is written,
// and each Secret is marshalled once per View (View.Memo) and shared by every stream holding
// that View; only version_info and nonce are a stream's own.
package sds
