package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/svidd/svidd/ca"
	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/entry"
	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
)

// Watch implements workload.Watcher: attest the connection, then subscribe to its View.
func (a *Agent) Watch(ctx context.Context, p *peercred.Peer, need workload.Need) (*workload.Subscription, error) {
	if !a.serving.Load() {
		return nil, workload.ErrUnavailable
	}
	sel, err := a.attestCaller(ctx, p)
	if err != nil {
		return nil, err
	}
	// If an entry appears later that this caller could match but for its binary's digest, it
	// is attested again, with the digest (still bound to the binary it connected with).
	reattest := func() ([]entry.Selector, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return a.attest(ctx, p, true)
	}
	method, _ := grpc.Method(ctx)
	opened := time.Now()
	var served []string
	// A caller opens and closes streams as often as it likes: its lines go through its log
	// budget (a stream flood must not become a log flood).
	acct := admission.AccountFrom(ctx)
	onClose := func() {
		if !a.log.Enabled(context.Background(), slog.LevelInfo) {
			return
		}
		acct.Log(a.log, slog.LevelInfo, "stream closed", "rpc", method, "pid", p.PID, "uid", p.UID, "duration", time.Since(opened).Round(time.Millisecond))
	}
	// A front-end that names the identities it needs first (SDS), or needs only bundles, gets
	// them without waiting for every other SVID the caller is entitled to.
	sub, err := a.cache.subscribe(sel, wanted(need), reattest, onClose)
	if err != nil {
		return nil, err
	}
	if v := sub.Latest(); v.Partial {
		a.sawCaller(p, sel, method, nil, true) // no index lookup per stream: done when listed
	} else {
		a.sawCaller(p, sel, method, viewIDs(v), false)
	}
	if a.log.Enabled(ctx, slog.LevelInfo) { // a hot path: build the ID list only if it is logged
		v := sub.Latest()
		for i, s := range v.SVIDs {
			if i == maxLoggedIDs {
				served = append(served, fmt.Sprintf("(+%d more)", len(v.SVIDs)-i))
				break
			}
			served = append(served, s.ID.String())
		}
		acct.Log(a.log, slog.LevelInfo, "stream opened", "rpc", method, "pid", p.PID, "uid", p.UID, "gid", p.GID, "spiffe_ids", served)
	}
	return sub, nil
}

// wanted is the cache's form of need: nil for the complete View, else the IDs minted first
// (none, but not nil, for bundles only).
func wanted(need workload.Need) []spiffeid.ID {
	switch {
	case need.All:
		return nil
	case need.IDs == nil:
		return []spiffeid.ID{}
	}
	return need.IDs
}

// maxLoggedIDs bounds the SPIFFE IDs listed on a stream's log line.
const maxLoggedIDs = 8

// FetchJWTSVIDs implements workload.JWTFetcher: JWT-SVIDs are minted per request (the
// audience is the caller's), only for identities the attested caller is entitled to.
func (a *Agent) FetchJWTSVIDs(ctx context.Context, p *peercred.Peer, id spiffeid.ID, audience []string) ([]*workload.JWTSVID, error) {
	if !a.serving.Load() {
		return nil, workload.ErrUnavailable
	}
	sel, err := a.attestCaller(ctx, p)
	if err != nil {
		return nil, err
	}
	ids := a.cache.entitledIDs(sel)
	a.sawCaller(p, sel, "FetchJWTSVID", ids, false)
	if !id.IsZero() {
		if !slices.Contains(ids, id) {
			return nil, workload.ErrNotEntitled
		}
		ids = []spiffeid.ID{id}
	}
	if len(ids) == 0 {
		return nil, workload.ErrNotEntitled
	}
	out := make([]*workload.JWTSVID, 0, len(ids))
	for _, sid := range ids {
		s, err := a.ca.MintJWTSVID(sid, audience, 0)
		a.metrics.JWTSVIDMinted(err)
		if errors.Is(err, ca.ErrCAExpired) {
			return nil, fmt.Errorf("%w: %v", workload.ErrUnavailable, err)
		}
		if err != nil {
			return nil, fmt.Errorf("minting JWT-SVID for %s: %w", sid, err)
		}
		out = append(out, s)
	}
	return out, nil
}
