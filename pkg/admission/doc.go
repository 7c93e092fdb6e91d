// Package admission keeps one local user from starving svidd for everyone else. It limits,
// per uid as the kernel reports it (SO_PEERCRED; forking or opening more connections does not
// escape a limit), the rate of new connections and of new streams and the number of each held
// open, and it bounds what a connection may send (message size, header size, concurrent
// streams, ping rate).
//
// Every check happens before any attestation work and costs a map lookup under one mutex:
//   - a connection over its uid's limits is closed right after accept (Listener), before the
//     HTTP/2 handshake;
//   - a stream over the stream rate is refused by the gRPC tap handle, in the transport's
//     reader, before a handler goroutine exists;
//   - a stream over the open-stream cap is refused by the interceptors before the handler.
//
// It also bounds, in bytes, what one uid's streams make svidd hold (Account): every stream
// carries an Account in its context, the front-ends charge to it the names and state they
// keep for the caller, and a charge past the uid's budget (MaxBytesPerUID, or the smaller
// MaxUnentitledBytesPerUID while the caller is entitled to nothing, which then also pays
// UnentitledStreamBytes for the stream itself) is refused; the Account gives everything back
// when the stream ends. The same Account holds the stream's and the uid's log budgets
// (Account.Log): a client cannot make svidd log faster than a few lines a second.
//
// Refusals are codes.ResourceExhausted with a message naming the uid and the limit; closed
// connections show up as Unavailable in gRPC clients, which reconnect with backoff.
//
// Root is limited like any uid: the defaults are far above what a real Envoy needs, a root
// process that wanted to starve svidd could simply kill it, and exempting root would only
// remove the guard against a runaway client that runs as root.
//
// A uid's state is dropped as soon as it is idle (nothing open, both buckets full again), and
// the table of uids has a hard cap, so memory stays bounded under uid churn.
package admission
