package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	wlapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

var (
	tdExample = workloadtest.ExampleTD
	tdOther   = workloadtest.OtherTD
)

const (
	idWeb = workloadtest.IDWeb
	idDB  = workloadtest.IDDB

	waitLong  = 5 * time.Second
	waitQuiet = 200 * time.Millisecond
)

// testCA is the test CA shared with the SDS tests.
type testCA = workloadtest.CA

// caSign returns a JWT-SVID for id signed with ca's JWT key.
func caSign(t testing.TB, ca *testCA, id spiffeid.ID, aud []string, ttl time.Duration) string {
	t.Helper()
	tok, err := signJWT(ca.JWTKey, ca.KID, id, aud, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func signJWT(key *ecdsa.PrivateKey, kid string, id spiffeid.ID, aud []string, ttl time.Duration) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	now := time.Now()
	return jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: aud,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}).Claims(map[string]any{"svidd_test": "yes"}).Serialize()
}

// fixture is the certificates most tests share (workloadtest.SharedFixture).
type fixture = workloadtest.Fixture

func newFixture(t testing.TB) *fixture { return workloadtest.SharedFixture(t) }

// fakeJWT stands in for the agent's JWT minting: it signs a real token for each identity in
// the watcher's current View with the trust domain's key, and records what it was asked.
type fakeJWT struct {
	w  *workloadtest.Watcher
	ca *testCA

	mu    sync.Mutex
	err   error
	calls []jwtCall
}

type jwtCall struct {
	peer *peercred.Peer
	id   spiffeid.ID
	aud  []string
}

func (j *fakeJWT) FetchJWTSVIDs(_ context.Context, p *peercred.Peer, id spiffeid.ID, aud []string) ([]*workload.JWTSVID, error) {
	j.mu.Lock()
	j.calls = append(j.calls, jwtCall{peer: p, id: id, aud: append([]string(nil), aud...)})
	err := j.err
	j.mu.Unlock()
	if err != nil {
		return nil, err
	}
	v := j.w.Current()
	if v.Empty() {
		return nil, workload.ErrNotEntitled
	}
	svids := v.SVIDs
	if !id.IsZero() {
		s := v.SVIDByID(id)
		if s == nil {
			return nil, workload.ErrNotEntitled
		}
		svids = []*workload.SVID{s}
	}
	out := make([]*workload.JWTSVID, 0, len(svids))
	for _, s := range svids {
		tok, err := signJWT(j.ca.JWTKey, j.ca.KID, s.ID, aud, 5*time.Minute)
		if err != nil {
			return nil, err
		}
		out = append(out, &workload.JWTSVID{ID: s.ID, Token: tok, Audience: aud})
	}
	return out, nil
}

func (j *fakeJWT) lastCall(t *testing.T) jwtCall {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.calls) == 0 {
		t.Fatal("JWT fetcher was not called")
	}
	return j.calls[len(j.calls)-1]
}

func (j *fakeJWT) setErr(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.err = err
}

var testPeer = peercred.NewPeer(4242, 1000, 1000, -1)

func fixedPeer(context.Context) (*peercred.Peer, bool) { return testPeer, true }

// testServer is a Workload API server on a Unix socket in a short temp dir.
type testServer struct {
	addr string // "unix:///…"
	w    *workloadtest.Watcher
	jwt  *fakeJWT
}

// startServer serves the Workload API for w's caller. At cleanup it checks every handler
// closed its subscription.
func startServer(t *testing.T, w *workloadtest.Watcher, mod func(*Config)) *testServer {
	t.Helper()
	f := newFixture(t)
	fj := &fakeJWT{w: w, ca: f.CA}
	cfg := Config{Watcher: w, JWT: fj, TrustDomain: tdExample, PeerFunc: fixedPeer}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := workloadtest.Serve(t, w, srv.Register)
	return &testServer{addr: addr, w: w, jwt: fj}
}

// client returns go-spiffe's own Workload API client for ts, closed at cleanup.
func (ts *testServer) client(t *testing.T) *wlapi.Client {
	t.Helper()
	c, err := wlapi.New(context.Background(), wlapi.WithAddr(ts.addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw returns a generated client, for requests go-spiffe's client never makes (no header,
// malformed fields). Add the header with withHeader.
func (ts *testServer) raw(t *testing.T) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, HeaderKey, HeaderValue)
}

// testCtx is a context for one test step, cancelled at cleanup.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fastBackoff makes go-spiffe's client retry PermissionDenied quickly.
type fastBackoff struct{}

func (fastBackoff) NewBackoff() wlapi.Backoff { return fastBackoff{} }
func (fastBackoff) Next() time.Duration       { return 20 * time.Millisecond }
func (fastBackoff) Reset()                    {}
