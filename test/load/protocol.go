package main

// The coordinator and its workers talk in JSON lines: commands on the worker's stdin, events
// on its stdout. Times that cross the process boundary are wall-clock Unix nanoseconds
// (CLOCK_REALTIME is one clock for every process on the host); durations measured inside one
// process use the monotonic clock.

// command is one line on a worker's stdin.
type command struct {
	Cmd       string      `json:"cmd"` // connect, spec, open, await, probe, churn, coldprobe, close
	Spec      *workerSpec `json:"spec,omitempty"`
	Kind      string      `json:"kind,omitempty"`  // await: "cert" or "bundle"
	Since     int64       `json:"since,omitempty"` // await: only events after this wall time
	Rate      float64     `json:"rate,omitempty"`  // churn: streams per second
	TimeoutMS int64       `json:"timeout_ms,omitempty"`
	// DurationMS is how long churn runs.
	DurationMS int64 `json:"duration_ms,omitempty"`
	// Socket and Conns: connect makes Conns connections to Socket and hands them over.
	Socket string `json:"socket,omitempty"`
	Conns  int    `json:"conns,omitempty"`
}

// workerSpec is what one worker (one uid) drives.
type workerSpec struct {
	Socket      string `json:"socket"`
	TrustDomain string `json:"trust_domain"` // "spiffe://example.org"
	Conns       int    `json:"conns"`
	// InheritedConns: the connections are already made, inherited as descriptors 3, 4, …
	// (made by connectors running as the callers' uids); otherwise the worker dials them.
	InheritedConns bool         `json:"inherited_conns,omitempty"`
	Streams        []streamSpec `json:"streams"`
}

// streamSpec is one SDS stream: its global index, the worker-local connection it rides on
// and the SPIFFE ID it asks for (with the trust domain).
type streamSpec struct {
	ID       int    `json:"id"`
	Conn     int    `json:"conn"`
	SPIFFEID string `json:"spiffe_id"`
	Entry    int    `json:"entry"`
}

// Event types a worker writes.
const (
	evConnected = "connected" // connect: every descriptor handed over
	evReady     = "ready"     // connections are up
	evFirst     = "first"     // one stream's first secret (or its failure)
	evOpened    = "opened"    // every stream has reported evFirst
	evPush      = "push"      // one stream's first change after Since (At 0: none)
	evAwaited   = "awaited"   // every stream has reported evPush
	evProbe     = "probe"     // fresh-caller probe result
	evChurn     = "churn"     // churn summary
	evCold      = "cold"      // cold-start probe result
	evError     = "error"     // the worker cannot go on
)

// event is one line on a worker's stdout.
type event struct {
	T      string `json:"t"`
	Stream int    `json:"s,omitempty"`
	// LatNS is a latency measured inside the worker (stream open → first secret).
	LatNS int64 `json:"lat,omitempty"`
	// At is the wall time the worker saw the thing happen.
	At  int64  `json:"at,omitempty"`
	Err string `json:"err,omitempty"`
	// Churn: every latency, and how many failed.
	Lats   []int64 `json:"lats,omitempty"`
	Failed int     `json:"failed,omitempty"`
	// Floor: latencies of a no-op gRPC call at the churn's pace, after it.
	Floor []int64 `json:"floor,omitempty"`
	// Attempts counts cold-start polls.
	Attempts int `json:"attempts,omitempty"`
	// CPUNS is the worker's own CPU time so far (user+system), to show what the load
	// generator cost next to what the agent cost.
	CPUNS int64 `json:"cpu,omitempty"`
}
