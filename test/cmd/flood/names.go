package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/test/envoy"
)

// namesSummary is what the names attacker saw.
type namesSummary struct {
	StreamsHeld  int64    `json:"streams_held"` // streams still open after every name was sent
	NamesHeld    int64    `json:"names_held"`   // names those streams subscribed to
	Exhausted    int64    `json:"exhausted"`    // streams ended with ResourceExhausted
	OtherErrors  int64    `json:"other_errors"`
	SampleErrors []string `json:"sample_errors,omitempty"`
}

// namesAttack is issue 11's memory attack: -streams workers, each on its own connection,
// open DeltaSecrets streams one after another, each subscribing to -perStream distinct names
// of -nameLen bytes (in requests of -batch names, under the message bound), and hold every
// stream that was not refused, until -duration or SIGTERM. It prints "holding" once every
// worker has made its first -hold attempts, then the summary.
func namesAttack(ctx context.Context, c config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	var (
		sum   namesSummary
		mu    sync.Mutex
		wg    sync.WaitGroup
		ready sync.WaitGroup
	)
	sample := func(err error) {
		atomic.AddInt64(&sum.OtherErrors, 1)
		mu.Lock()
		defer mu.Unlock()
		if len(sum.SampleErrors) < 5 {
			sum.SampleErrors = append(sum.SampleErrors, err.Error())
		}
	}
	enc := json.NewEncoder(out)
	// The same names on every stream (svidd keeps them per stream): built once, so the
	// attacker spends its CPU on sending, not on formatting megabytes of names.
	reqs := namesRequests(c)
	ready.Add(c.streams)
	for range c.streams {
		conn, err := envoy.Dial(ctx, c.socket)
		if err != nil {
			return err
		}
		defer conn.Close()
		wg.Go(func() {
			var once sync.Once
			defer once.Do(ready.Done) // also when it stops early
			client := secretv3.NewSecretDiscoveryServiceClient(conn)
			for i := 0; ctx.Err() == nil; i++ {
				if i == c.hold {
					once.Do(ready.Done)
				}
				held, err := subscribeNames(ctx, client, reqs)
				switch {
				case held:
					atomic.AddInt64(&sum.StreamsHeld, 1)
					atomic.AddInt64(&sum.NamesHeld, int64(c.perStream))
				case ctx.Err() != nil:
				case status.Code(err) == codes.ResourceExhausted:
					atomic.AddInt64(&sum.Exhausted, 1)
				default:
					sample(err)
				}
			}
		})
	}
	go func() {
		ready.Wait()
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(map[string]any{"holding": true})
	}()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return enc.Encode(sum)
}

// namesRequests returns the requests that subscribe a stream to c.perStream distinct names
// of c.nameLen bytes, c.batch names a request; the first carries the node. They are only
// read (marshalled) afterwards, so every stream may send them.
func namesRequests(c config) []*discoveryv3.DeltaDiscoveryRequest {
	pad := strings.Repeat("x", c.nameLen)
	var reqs []*discoveryv3.DeltaDiscoveryRequest
	for i := 0; i < c.perStream; i += c.batch {
		names := make([]string, 0, c.batch)
		for j := i; j < min(i+c.batch, c.perStream); j++ {
			n := fmt.Sprintf("spiffe://example.org/flood/%d/", j)
			names = append(names, n+pad[:max(0, c.nameLen-len(n))])
		}
		reqs = append(reqs, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: envoy.SecretTypeURL, ResourceNamesSubscribe: names})
	}
	if len(reqs) > 0 {
		reqs[0].Node = envoy.NewNode("flood")
	}
	return reqs
}

// subscribeNames opens one delta stream and sends reqs on it. It reports whether the stream
// is still open a moment after the last request (held: it stays open until ctx ends), or
// the error that ended it.
func subscribeNames(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, reqs []*discoveryv3.DeltaDiscoveryRequest) (bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := client.DeltaSecrets(sctx)
	if err != nil {
		cancel()
		return false, err
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	for _, req := range reqs {
		if err := stream.Send(req); err != nil {
			break // the stream ended: Recv says why
		}
	}
	select {
	case err := <-ended:
		cancel()
		return false, err
	case <-time.After(time.Second):
	case <-ctx.Done():
		cancel()
		return false, ctx.Err() // stopped before it knew
	}
	// Held: the stream lives until ctx ends (sctx is its child).
	context.AfterFunc(ctx, cancel)
	return true, nil
}

// nackAttack is issue 11's log flood: -streams SotW streams on one connection, each sending
// requests with error_detail (NACKs) for -names as fast as it can until -duration or SIGTERM.
// It prints {"nacks_sent": N}.
func nackAttack(ctx context.Context, c config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	conn, err := envoy.Dial(ctx, c.socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	var sent, errs atomic.Int64
	var wg sync.WaitGroup
	for range c.streams {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := nackLoop(ctx, conn, c.names, &sent); err != nil && ctx.Err() == nil {
					errs.Add(1)
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	return json.NewEncoder(out).Encode(map[string]int64{"nacks_sent": sent.Load(), "stream_errors": errs.Load()})
}

func nackLoop(ctx context.Context, conn grpc.ClientConnInterface, names []string, sent *atomic.Int64) error {
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return err
	}
	go func() { // drain whatever comes; the stream's errors show up in Send
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	req := &discoveryv3.DiscoveryRequest{Node: envoy.NewNode("flood"), TypeUrl: envoy.SecretTypeURL, ResourceNames: names,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "flood: rejected"}}
	for ctx.Err() == nil {
		if err := stream.Send(req); err != nil {
			return err
		}
		sent.Add(1)
		req.Node = nil
	}
	return nil
}
