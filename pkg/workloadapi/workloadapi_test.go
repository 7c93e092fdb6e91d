package workloadapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	wlapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/svidd/svidd/pkg/peercred"
	"github.com/svidd/svidd/pkg/workload"
	"github.com/svidd/svidd/pkg/workload/workloadtest"
)

func TestNew(t *testing.T) {
	w := workloadtest.NewWatcher(nil)
	for _, tc := range []struct {
		name, want string
		cfg        Config
	}{
		{"no watcher", "watcher is required", Config{TrustDomain: tdExample}},
		{"no trust domain", "trust domain is required", Config{Watcher: w}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	s, err := New(Config{Watcher: w, TrustDomain: tdExample})
	if err != nil {
		t.Fatal(err)
	}
	if s.log == nil || s.metrics == nil || s.peerFunc == nil {
		t.Fatal("defaults not filled in")
	}
}

// callAll makes every served RPC with ctx on c and returns each one's error (for a stream,
// the error of its first Recv).
func callAll(ctx context.Context, c workloadpb.SpiffeWorkloadAPIClient, token string) map[string]error {
	errs := map[string]error{}
	if s, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{}); err != nil {
		errs["FetchX509SVID"] = err
	} else {
		_, errs["FetchX509SVID"] = s.Recv()
	}
	if s, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{}); err != nil {
		errs["FetchX509Bundles"] = err
	} else {
		_, errs["FetchX509Bundles"] = s.Recv()
	}
	if s, err := c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{}); err != nil {
		errs["FetchJWTBundles"] = err
	} else {
		_, errs["FetchJWTBundles"] = s.Recv()
	}
	_, errs["FetchJWTSVID"] = c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"svc"}})
	_, errs["ValidateJWTSVID"] = c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "svc", Svid: token})
	return errs
}

func TestHeaderRequired(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.raw(t)
	token := caSign(t, f.CA, f.DB.ID, []string{"svc"}, time.Minute)
	for _, tc := range []struct {
		name string
		md   metadata.MD
	}{
		{"missing", nil},
		{"wrong case", metadata.Pairs(HeaderKey, "True")},
		{"wrong value", metadata.Pairs(HeaderKey, "yes")},
		{"empty", metadata.Pairs(HeaderKey, "")},
		{"twice", metadata.Pairs(HeaderKey, "true", HeaderKey, "true")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(testCtx(t), tc.md)
			for rpc, err := range callAll(ctx, c, token) {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), HeaderKey) {
					t.Errorf("%s: %v, want InvalidArgument naming %s", rpc, err, HeaderKey)
				}
			}
		})
	}
	if n := ts.w.Watches(); n != 0 {
		t.Errorf("%d watches for requests without the header", n)
	}
	ts.jwt.mu.Lock()
	calls := len(ts.jwt.calls)
	ts.jwt.mu.Unlock()
	if calls != 0 {
		t.Errorf("JWT fetcher called %d times for requests without the header", calls)
	}

	// With the header every RPC succeeds: the table above failed for the right reason.
	for rpc, err := range callAll(withHeader(testCtx(t)), c, token) {
		if err != nil {
			t.Errorf("%s with the header: %v", rpc, err)
		}
	}
}

func TestNoIdentity(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(&workload.View{}), nil)
	c := ts.client(t)
	ctx := testCtx(t)
	token := caSign(t, f.CA, f.DB.ID, []string{"svc"}, time.Minute)

	for name, call := range map[string]func() error{
		"FetchX509SVIDs":   func() error { _, err := c.FetchX509SVIDs(ctx); return err },
		"FetchX509Context": func() error { _, err := c.FetchX509Context(ctx); return err },
		"FetchX509Bundles": func() error { _, err := c.FetchX509Bundles(ctx); return err },
		"FetchJWTBundles":  func() error { _, err := c.FetchJWTBundles(ctx); return err },
		"FetchJWTSVID": func() error {
			_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"})
			return err
		},
		"ValidateJWTSVID": func() error { _, err := c.ValidateJWTSVID(ctx, token, "svc"); return err },
	} {
		t.Run(name, func(t *testing.T) {
			if err := call(); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("%v, want PermissionDenied", err)
			}
		})
	}

	t.Run("registered later", func(t *testing.T) {
		// go-spiffe's source retries PermissionDenied, so a workload started before its
		// entry was created gets its identity once it exists.
		type result struct {
			src *wlapi.X509Source
			err error
		}
		done := make(chan result, 1)
		before := ts.w.Watches()
		go func() {
			src, err := wlapi.NewX509Source(ctx, wlapi.WithClientOptions(wlapi.WithAddr(ts.addr), wlapi.WithBackoffStrategy(fastBackoff{})))
			done <- result{src, err}
		}()
		for ts.w.Watches() < before+2 {
			select {
			case r := <-done:
				t.Fatalf("source ready without an identity: %v", r.err)
			case <-ctx.Done():
				t.Fatal("source did not retry")
			case <-time.After(5 * time.Millisecond):
			}
		}
		ts.w.Publish(f.View())
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.src.Close()
		svid, err := r.src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != f.DB.ID {
			t.Fatalf("default SVID %s, want %s", svid.ID, f.DB.ID)
		}
	})
}

func TestCallerErrors(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		err  error
		want codes.Code
	}{
		{"no peer credentials", func(c *Config) {
			c.PeerFunc = func(context.Context) (*peercred.Peer, bool) { return nil, false }
		}, nil, codes.PermissionDenied},
		{"default PeerFunc on a plain socket", func(c *Config) { c.PeerFunc = nil }, nil, codes.PermissionDenied},
		{"attestation fails", nil, errors.New("pid gone"), codes.Unavailable},
		{"agent unavailable", nil, workload.ErrUnavailable, codes.Unavailable},
		{"connection refused for good", nil, fmt.Errorf("%w: exec'd", workload.ErrNotEntitled), codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := workloadtest.NewWatcher(f.View())
			w.SetErr(tc.err)
			ts := startServer(t, w, tc.mod)
			ts.jwt.setErr(tc.err)
			for rpc, err := range callAll(withHeader(testCtx(t)), ts.raw(t), caSign(t, f.CA, f.DB.ID, []string{"svc"}, time.Minute)) {
				if status.Code(err) != tc.want {
					t.Errorf("%s: %v, want %s", rpc, err, tc.want)
				}
			}
		})
	}
}

func TestFetchX509SVIDs(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.client(t)
	ctx := testCtx(t)

	svids, err := c.FetchX509SVIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The View's order is kept: the first is the default identity.
	var got []string
	for i, s := range svids {
		got = append(got, s.ID.String())
		want := ts.w.Current().SVIDs[i]
		if s.Certificates[0].SerialNumber.Text(16) != want.Serial {
			t.Errorf("svid %d: serial %x, want %s", i, s.Certificates[0].SerialNumber, want.Serial)
		}
		if s.PrivateKey.Public().(*ecdsa.PublicKey).Equal(want.PrivateKey.Public()) != true {
			t.Errorf("svid %d: wrong private key", i)
		}
	}
	if want := []string{idDB, idWeb}; !slices.Equal(got, want) {
		t.Fatalf("SVIDs %v, want %v", got, want)
	}

	def, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if def.ID != f.DB.ID {
		t.Fatalf("default SVID %s, want %s", def.ID, f.DB.ID)
	}

	xc, err := c.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkX509Bundles(t, xc.Bundles, map[spiffeid.TrustDomain]*testCA{tdExample: f.CA, tdOther: f.Fed})

	// The wire form: each SVID carries its trust domain's bundle, the other is federated.
	stream, err := ts.raw(t).FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.Svids {
		if string(s.Bundle) != string(f.Own.DER) {
			t.Errorf("%s: bundle is not the own trust domain's", s.SpiffeId)
		}
		if s.Hint != "" {
			t.Errorf("%s: hint %q", s.SpiffeId, s.Hint)
		}
	}
	if len(resp.FederatedBundles) != 1 || string(resp.FederatedBundles["spiffe://other.org"]) != string(f.Federated.DER) {
		t.Errorf("federated bundles %v, want only spiffe://other.org", keys(resp.FederatedBundles))
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkX509Bundles requires set to hold exactly want's roots.
func checkX509Bundles(t *testing.T, set *x509bundle.Set, want map[spiffeid.TrustDomain]*testCA) {
	t.Helper()
	if set.Len() != len(want) {
		t.Errorf("%d bundles, want %d", set.Len(), len(want))
	}
	for td, ca := range want {
		b, ok := set.Get(td)
		if !ok {
			t.Errorf("no bundle for %s", td)
			continue
		}
		if auth := b.X509Authorities(); len(auth) != 1 || !auth[0].Equal(ca.Cert) {
			t.Errorf("bundle for %s has the wrong roots", td)
		}
	}
}

func TestX509SourceRotation(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	ctx := testCtx(t)
	src, err := wlapi.NewX509Source(ctx, wlapi.WithClientOptions(wlapi.WithAddr(ts.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != f.DB.ID || svid.Certificates[0].SerialNumber.Text(16) != f.DB.Serial {
		t.Fatalf("source has %s serial %x, want the default %s serial %s", svid.ID, svid.Certificates[0].SerialNumber, f.DB.ID, f.DB.Serial)
	}
	b, err := src.GetX509BundleForTrustDomain(tdExample)
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(f.CA.Cert) {
		t.Fatal("own bundle lacks the CA")
	}

	// Rotation: the agent publishes a new View with a fresh SVID and a new federated root.
	db2 := f.CA.Mint(t, idDB)
	fed2 := workloadtest.NewCA(t, tdOther, "fed2")
	ts.w.Publish(&workload.View{SVIDs: []*workload.SVID{db2, f.Web}, Bundles: []*workload.Bundle{f.Own, fed2.Bundle(t, 8)}})
	select {
	case <-src.Updated():
	case <-ctx.Done():
		t.Fatal("source not updated after rotation")
	}
	svid, err = src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got := svid.Certificates[0].SerialNumber.Text(16); got != db2.Serial {
		t.Fatalf("source serial %s after rotation, want %s", got, db2.Serial)
	}
	fb, err := src.GetX509BundleForTrustDomain(tdOther)
	if err != nil {
		t.Fatal(err)
	}
	if !fb.HasX509Authority(fed2.Cert) || fb.HasX509Authority(f.Fed.Cert) {
		t.Fatal("federated bundle not replaced")
	}
}

// rawStream reads a server stream in the background so a test can assert that nothing
// arrives.
type rawStream[T any] struct {
	t     *testing.T
	resps chan *T
	done  chan error
}

func openRaw[T any](t *testing.T, open func(ctx context.Context) (grpc.ServerStreamingClient[T], error)) *rawStream[T] {
	t.Helper()
	ctx, cancel := context.WithCancel(withHeader(context.Background()))
	t.Cleanup(cancel)
	s, err := open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rs := &rawStream[T]{t: t, resps: make(chan *T, 16), done: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				rs.done <- err
				return
			}
			rs.resps <- r
		}
	}()
	return rs
}

func (s *rawStream[T]) recv() *T {
	s.t.Helper()
	select {
	case r := <-s.resps:
		return r
	case err := <-s.done:
		s.t.Fatalf("stream ended while waiting for a response: %v", err)
	case <-time.After(waitLong):
		s.t.Fatal("no response")
	}
	return nil
}

func (s *rawStream[T]) none() {
	s.t.Helper()
	select {
	case <-s.resps:
		s.t.Fatal("unexpected response")
	case err := <-s.done:
		s.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitQuiet):
	}
}

func (s *rawStream[T]) err() error {
	s.t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-s.resps:
		s.t.Fatal("response instead of an error")
	case <-time.After(waitLong):
		s.t.Fatal("stream did not end")
	}
	return nil
}

// withOwnBundle returns v with the own trust domain's bundle replaced by b.
func withOwnBundle(v *workload.View, b *workload.Bundle) *workload.View {
	out := &workload.View{SVIDs: v.SVIDs, Bundles: slices.Clone(v.Bundles)}
	out.Bundles[0] = b
	return out
}

// TestStreamsSendOnlyChanges publishes a series of Views and checks which streams respond.
func TestStreamsSendOnlyChanges(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.raw(t)
	x509s := openRaw(t, func(ctx context.Context) (grpc.ServerStreamingClient[workloadpb.X509SVIDResponse], error) {
		return c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	})
	bundles := openRaw(t, func(ctx context.Context) (grpc.ServerStreamingClient[workloadpb.X509BundlesResponse], error) {
		return c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	})
	jwts := openRaw(t, func(ctx context.Context) (grpc.ServerStreamingClient[workloadpb.JWTBundlesResponse], error) {
		return c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
	})
	if r := x509s.recv(); len(r.Svids) != 2 || r.Svids[0].SpiffeId != idDB {
		t.Fatalf("first X509SVIDResponse: %d SVIDs", len(r.Svids))
	}
	if r := bundles.recv(); !slices.Equal(keys(r.Bundles), []string{"spiffe://example.org", "spiffe://other.org"}) {
		t.Fatalf("first X509BundlesResponse: %v", keys(r.Bundles))
	}
	if r := jwts.recv(); !slices.Equal(keys(r.Bundles), []string{"spiffe://example.org", "spiffe://other.org"}) {
		t.Fatalf("first JWTBundlesResponse: %v", keys(r.Bundles))
	}

	db2 := f.CA.Mint(t, idDB)
	jwtOnly := *f.Own
	jwtOnly.Sequence++
	newKey := workloadtest.NewCA(t, tdExample, "k2").Bundle(t, 0)
	jwtOnly.JWTAuthorities, jwtOnly.JWKS = newKey.JWTAuthorities, newKey.JWKS
	fed2 := workloadtest.NewCA(t, tdOther, "fed2").Bundle(t, 8)
	fed2.JWTAuthorities, fed2.JWKS = f.Federated.JWTAuthorities, f.Federated.JWKS

	type expect struct{ x509, bundles, jwt bool }
	for _, step := range []struct {
		name string
		view *workload.View
		want expect
	}{
		{"same content, new View", f.View(), expect{}},
		{"SVID rotated", &workload.View{SVIDs: []*workload.SVID{db2, f.Web}, Bundles: f.View().Bundles}, expect{x509: true}},
		{"JWT keys only", &workload.View{SVIDs: []*workload.SVID{db2, f.Web}, Bundles: []*workload.Bundle{&jwtOnly, f.Federated}}, expect{jwt: true}},
		{"federated X.509 root only", &workload.View{SVIDs: []*workload.SVID{db2, f.Web}, Bundles: []*workload.Bundle{&jwtOnly, fed2}}, expect{x509: true, bundles: true}},
		{"SVID removed", &workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{&jwtOnly, fed2}}, expect{x509: true}},
		{"federation ended", &workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{&jwtOnly}}, expect{x509: true, bundles: true, jwt: true}},
	} {
		t.Run(step.name, func(t *testing.T) {
			ts.w.Publish(step.view)
			// Each stream either responds with the full set or stays quiet.
			if step.want.x509 {
				r := x509s.recv()
				if len(r.Svids) != len(step.view.SVIDs) {
					t.Errorf("X509SVIDResponse with %d SVIDs, want %d", len(r.Svids), len(step.view.SVIDs))
				}
				for i, s := range r.Svids {
					if string(s.X509Svid) != string(step.view.SVIDs[i].CertChainDER) {
						t.Errorf("SVID %d is not the View's", i)
					}
				}
			}
			if step.want.bundles {
				if r := bundles.recv(); len(r.Bundles) != len(step.view.Bundles) {
					t.Errorf("X509BundlesResponse with %d bundles, want %d", len(r.Bundles), len(step.view.Bundles))
				}
			}
			if step.want.jwt {
				r := jwts.recv()
				if string(r.Bundles["spiffe://example.org"]) != string(step.view.Bundles[0].JWKS) {
					t.Error("JWTBundlesResponse lacks the new keys")
				}
			}
			if !step.want.x509 {
				x509s.none()
			}
			if !step.want.bundles {
				bundles.none()
			}
			if !step.want.jwt {
				jwts.none()
			}
		})
	}

	// Losing the last identity ends every stream with PermissionDenied.
	ts.w.Publish(&workload.View{})
	for name, err := range map[string]error{"x509": x509s.err(), "bundles": bundles.err(), "jwt": jwts.err()} {
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s stream: %v, want PermissionDenied", name, err)
		}
	}
	deadline := time.Now().Add(waitLong)
	for ts.w.Open() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := ts.w.Open(); n != 0 {
		t.Errorf("%d subscriptions open after the streams ended", n)
	}
}

func TestX509Bundles(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.client(t)
	ctx := testCtx(t)
	set, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkX509Bundles(t, set, map[spiffeid.TrustDomain]*testCA{tdExample: f.CA, tdOther: f.Fed})

	// WatchX509Bundles sees a new federated root.
	w := &bundleWatcher{updates: make(chan *x509bundle.Set, 4)}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchDone := make(chan error, 1)
	go func() { watchDone <- c.WatchX509Bundles(wctx, w) }()
	if first := <-w.updates; first.Len() != 2 {
		t.Fatalf("first watch update has %d bundles", first.Len())
	}
	fed2 := workloadtest.NewCA(t, tdOther, "fed2")
	ts.w.Publish(&workload.View{SVIDs: f.View().SVIDs, Bundles: []*workload.Bundle{f.Own, fed2.Bundle(t, 8)}})
	select {
	case set := <-w.updates:
		checkX509Bundles(t, set, map[spiffeid.TrustDomain]*testCA{tdExample: f.CA, tdOther: fed2})
	case <-ctx.Done():
		t.Fatal("no update after the federated bundle changed")
	}
	cancel()
	if err := <-watchDone; status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		t.Fatalf("watch ended with %v", err)
	}
}

// TestBundleCallsDoNotWaitForSVIDs: the bundle-only calls ask Watch for bundles only and answer
// from a Partial View (whose bundles are final) at once; FetchX509SVID asks for the complete
// View and sends nothing until it arrives.
func TestBundleCallsDoNotWaitForSVIDs(t *testing.T) {
	f := newFixture(t)
	partial := &workload.View{Bundles: f.View().Bundles, Partial: true}
	ts := startServer(t, workloadtest.NewWatcher(partial), nil)
	c := ts.client(t)
	ctx := testCtx(t)

	if _, err := c.FetchX509Bundles(ctx); err != nil {
		t.Fatalf("FetchX509Bundles from a Partial View: %v", err)
	}
	if _, err := c.FetchJWTBundles(ctx); err != nil {
		t.Fatalf("FetchJWTBundles from a Partial View: %v", err)
	}
	svids := make(chan error, 1)
	go func() { _, err := c.FetchX509Context(ctx); svids <- err }()
	select {
	case err := <-svids:
		t.Fatalf("FetchX509Context answered from a Partial View (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	ts.w.Publish(f.View())
	if err := <-svids; err != nil {
		t.Fatalf("FetchX509Context after the complete View: %v", err)
	}
	var got []string
	for _, n := range ts.w.Needs() {
		got = append(got, fmt.Sprintf("all=%v ids=%d", n.All, len(n.IDs)))
	}
	want := []string{"all=false ids=0", "all=false ids=0", "all=true ids=0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Watch needs = %v, want %v", got, want)
	}
}

type bundleWatcher struct{ updates chan *x509bundle.Set }

func (w *bundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) { w.updates <- s }
func (w *bundleWatcher) OnX509BundlesWatchError(error)         {}

func TestWatchX509Context(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(&workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: []*workload.Bundle{f.Own}}), nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	w := &contextWatcher{updates: make(chan *wlapi.X509Context, 4)}
	done := make(chan error, 1)
	go func() { done <- ts.client(t).WatchX509Context(ctx, w) }()
	if xc := <-w.updates; len(xc.SVIDs) != 1 || xc.SVIDs[0].ID != f.Web.ID {
		t.Fatalf("first context: %d SVIDs", len(xc.SVIDs))
	}
	// A second identity is added; it sorts first and becomes the default.
	ts.w.Publish(f.View())
	select {
	case xc := <-w.updates:
		var ids []string
		for _, s := range xc.SVIDs {
			ids = append(ids, s.ID.String())
		}
		if !slices.Equal(ids, []string{idDB, idWeb}) {
			t.Fatalf("SVIDs %v", ids)
		}
		if xc.Bundles.Len() != 2 {
			t.Fatalf("%d bundles", xc.Bundles.Len())
		}
	case <-ctx.Done():
		t.Fatal("no update")
	}
	cancel()
	<-done
}

type contextWatcher struct{ updates chan *wlapi.X509Context }

func (w *contextWatcher) OnX509ContextUpdate(c *wlapi.X509Context) { w.updates <- c }
func (w *contextWatcher) OnX509ContextWatchError(error)            {}

func TestJWTRoundTrip(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.client(t)
	ctx := testCtx(t)

	svid, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-a", ExtraAudiences: []string{"svc-b"}})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != f.DB.ID || !slices.Equal(svid.Audience, []string{"svc-a", "svc-b"}) {
		t.Fatalf("JWT-SVID for %s %v, want the default %s for [svc-a svc-b]", svid.ID, svid.Audience, f.DB.ID)
	}
	call := ts.jwt.lastCall(t)
	if call.peer != testPeer || !call.id.IsZero() || !slices.Equal(call.aud, []string{"svc-a", "svc-b"}) {
		t.Fatalf("fetcher called with %+v", call)
	}

	all, err := c.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "svc-a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].ID != f.DB.ID || all[1].ID != f.Web.ID {
		t.Fatalf("FetchJWTSVIDs: %d SVIDs", len(all))
	}
	web, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-a", Subject: f.Web.ID})
	if err != nil {
		t.Fatal(err)
	}
	if web.ID != f.Web.ID || ts.jwt.lastCall(t).id != f.Web.ID {
		t.Fatalf("asked for %s, got %s", f.Web.ID, web.ID)
	}

	// Validation through the agent, for each audience the token carries.
	for _, aud := range []string{"svc-a", "svc-b"} {
		got, err := c.ValidateJWTSVID(ctx, svid.Marshal(), aud)
		if err != nil {
			t.Fatalf("validate for %s: %v", aud, err)
		}
		if got.ID != f.DB.ID {
			t.Fatalf("validated %s", got.ID)
		}
	}
	resp, err := ts.raw(t).ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "svc-a", Svid: svid.Marshal()})
	if err != nil {
		t.Fatal(err)
	}
	claims := resp.Claims.AsMap()
	if resp.SpiffeId != idDB || claims["sub"] != idDB || claims["svidd_test"] != "yes" || claims["exp"] == nil {
		t.Fatalf("response %s claims %v", resp.SpiffeId, claims)
	}

	// A federated trust domain's token validates with that trust domain's key.
	fedID := spiffeid.RequireFromString("spiffe://other.org/partner")
	if got, err := c.ValidateJWTSVID(ctx, caSign(t, f.Fed, fedID, []string{"svc-a"}, time.Minute), "svc-a"); err != nil || got.ID != fedID {
		t.Fatalf("federated token: %v", err)
	}

	forged := *f.CA
	forged.JWTKey = workloadtest.NewCA(t, tdExample, f.CA.KID).JWTKey // same key ID, another key
	unknownTD := spiffeid.RequireFromString("spiffe://unknown.org/x")
	for _, tc := range []struct {
		name, token, aud, want string
	}{
		{"wrong audience", svid.Marshal(), "svc-c", "audience"},
		{"forged signature", caSign(t, &forged, f.DB.ID, []string{"svc-a"}, time.Minute), "svc-a", "claims"},
		{"unknown key id", caSign(t, &testCA{JWTKey: f.CA.JWTKey, KID: "nope"}, f.DB.ID, []string{"svc-a"}, time.Minute), "svc-a", "no JWT authority"},
		{"untrusted trust domain", caSign(t, f.CA, unknownTD, []string{"svc-a"}, time.Minute), "svc-a", "no bundle"},
		{"expired", caSign(t, f.CA, f.DB.ID, []string{"svc-a"}, -time.Minute), "svc-a", "expired"},
		{"garbage", "not.a.token", "svc-a", "parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ValidateJWTSVID(ctx, tc.token, tc.aud)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("%v, want InvalidArgument mentioning %q", err, tc.want)
			}
		})
	}
}

func TestFetchJWTSVIDErrors(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.client(t)
	ctx := testCtx(t)

	_, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc", Subject: spiffeid.RequireFromString("spiffe://example.org/other")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("identity not held: %v, want PermissionDenied", err)
	}
	ts.jwt.setErr(workload.ErrUnavailable)
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("fetcher unavailable: %v, want Unavailable", err)
	}

	noJWT := startServer(t, workloadtest.NewWatcher(f.View()), func(c *Config) { c.JWT = nil })
	if _, err := noJWT.client(t).FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("no fetcher: %v, want Unimplemented", err)
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.raw(t)
	ctx := withHeader(testCtx(t))
	token := caSign(t, f.CA, f.DB.ID, []string{"svc"}, time.Minute)
	long := strings.Repeat("a", MaxAudienceLength)
	many := slices.Repeat([]string{long}, MaxAudiences)

	fetch := func(req *workloadpb.JWTSVIDRequest) func() error {
		return func() error { _, err := c.FetchJWTSVID(ctx, req); return err }
	}
	validate := func(req *workloadpb.ValidateJWTSVIDRequest) func() error {
		return func() error { _, err := c.ValidateJWTSVID(ctx, req); return err }
	}
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"fetch: no audience", fetch(&workloadpb.JWTSVIDRequest{}), codes.InvalidArgument},
		{"fetch: empty audience", fetch(&workloadpb.JWTSVIDRequest{Audience: []string{"svc", ""}}), codes.InvalidArgument},
		{"fetch: too many audiences", fetch(&workloadpb.JWTSVIDRequest{Audience: append(many, "x")}), codes.InvalidArgument},
		{"fetch: audience too long", fetch(&workloadpb.JWTSVIDRequest{Audience: []string{long + "a"}}), codes.InvalidArgument},
		{"fetch: invalid spiffe_id", fetch(&workloadpb.JWTSVIDRequest{Audience: []string{"svc"}, SpiffeId: "example.org/web"}), codes.InvalidArgument},
		{"fetch: spiffe_id too long", fetch(&workloadpb.JWTSVIDRequest{Audience: []string{"svc"}, SpiffeId: "spiffe://example.org/" + strings.Repeat("a", MaxSPIFFEIDLength)}), codes.InvalidArgument},
		{"fetch: at the limits", fetch(&workloadpb.JWTSVIDRequest{Audience: many, SpiffeId: idWeb}), codes.OK},
		{"validate: no audience", validate(&workloadpb.ValidateJWTSVIDRequest{Svid: token}), codes.InvalidArgument},
		{"validate: no svid", validate(&workloadpb.ValidateJWTSVIDRequest{Audience: "svc"}), codes.InvalidArgument},
		{"validate: audience too long", validate(&workloadpb.ValidateJWTSVIDRequest{Audience: long + "a", Svid: token}), codes.InvalidArgument},
		{"validate: token too long", validate(&workloadpb.ValidateJWTSVIDRequest{Audience: "svc", Svid: token + strings.Repeat("a", MaxTokenLength)}), codes.InvalidArgument},
		{"validate: ok", validate(&workloadpb.ValidateJWTSVIDRequest{Audience: "svc", Svid: token}), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); status.Code(err) != tc.want {
				t.Fatalf("%v, want %s", err, tc.want)
			}
		})
	}
}

func TestJWTBundles(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	ctx := testCtx(t)
	set, err := ts.client(t).FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkJWTKey(t, set, tdExample, "k1", f.CA.JWTKey)
	checkJWTKey(t, set, tdOther, "fed1", f.Fed.JWTKey)

	src, err := wlapi.NewJWTSource(ctx, wlapi.WithClientOptions(wlapi.WithAddr(ts.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	// The workload validates locally with the bundles it was served.
	if got, err := jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"svc"}); err != nil || got.ID != f.DB.ID {
		t.Fatalf("local validation: %v", err)
	}

	// Key rotation: the trust domain adds a key; a trust domain without JWT keys is served
	// as an empty JWK Set, which the client accepts.
	k2 := workloadtest.NewCA(t, tdExample, "k2")
	own := *f.Own
	own.JWTAuthorities = map[string]crypto.PublicKey{"k1": f.CA.JWTKey.Public(), "k2": k2.JWTKey.Public()}
	own.JWKS = nil // built from JWTAuthorities
	noJWT := *f.Federated
	noJWT.JWTAuthorities, noJWT.JWKS = nil, nil
	ts.w.Publish(&workload.View{SVIDs: f.View().SVIDs, Bundles: []*workload.Bundle{&own, &noJWT}})
	select {
	case <-src.Updated():
	case <-ctx.Done():
		t.Fatal("JWT source not updated")
	}
	b, err := src.GetJWTBundleForTrustDomain(tdExample)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.JWTAuthorities()) != 2 || !b.HasJWTAuthority("k2") {
		t.Fatalf("own bundle has %d keys after rotation", len(b.JWTAuthorities()))
	}
	fb, err := src.GetJWTBundleForTrustDomain(tdOther)
	if err != nil || !fb.Empty() {
		t.Fatalf("trust domain without JWT keys: %v, empty %v", err, err == nil && fb.Empty())
	}
	if _, err := jwtsvid.ParseAndValidate(caSign(t, k2, f.Web.ID, []string{"svc"}, time.Minute), src, []string{"svc"}); err != nil {
		t.Fatalf("token signed with the new key: %v", err)
	}
}

func checkJWTKey(t *testing.T, set *jwtbundle.Set, td spiffeid.TrustDomain, kid string, key *ecdsa.PrivateKey) {
	t.Helper()
	b, ok := set.Get(td)
	if !ok {
		t.Fatalf("no JWT bundle for %s", td)
	}
	pub, ok := b.FindJWTAuthority(kid)
	if !ok {
		t.Fatalf("%s: no key %s", td, kid)
	}
	if ep, ok := pub.(*ecdsa.PublicKey); !ok || !ep.Equal(key.Public()) {
		t.Fatalf("%s: key %s is not the signing key", td, kid)
	}
}

// TestMTLS has two workloads, each served by its own agent front-end, authenticate each
// other with go-spiffe's TLS configs over the identities the Workload API gave them.
func TestMTLS(t *testing.T) {
	f := newFixture(t)
	bundles := []*workload.Bundle{f.Own, f.Federated}
	server := startServer(t, workloadtest.NewWatcher(&workload.View{SVIDs: []*workload.SVID{f.Web}, Bundles: bundles}), nil)
	client := startServer(t, workloadtest.NewWatcher(&workload.View{SVIDs: []*workload.SVID{f.DB}, Bundles: bundles}), nil)
	ctx := testCtx(t)
	newSource := func(ts *testServer) *wlapi.X509Source {
		src, err := wlapi.NewX509Source(ctx, wlapi.WithClientOptions(wlapi.WithAddr(ts.addr)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	srvSrc, cliSrc := newSource(server), newSource(client)

	for _, tc := range []struct {
		name             string
		serverAuthorizes string // the client ID the server accepts
		clientAuthorizes string // the server ID the client accepts
		ok               bool
	}{
		{"both authorized", idDB, idWeb, true},
		{"server refuses the client", "spiffe://example.org/admin", idWeb, false},
		{"client refuses the server", idDB, "spiffe://example.org/admin", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, cc := net.Pipe()
			defer sc.Close()
			defer cc.Close()
			srv := tls.Server(sc, tlsconfig.MTLSServerConfig(srvSrc, srvSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(tc.serverAuthorizes))))
			cli := tls.Client(cc, tlsconfig.MTLSClientConfig(cliSrc, cliSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(tc.clientAuthorizes))))
			var wg sync.WaitGroup
			var srvErr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				srvErr = srv.HandshakeContext(ctx)
				if srvErr != nil {
					sc.Close() // unblock the client
				}
			}()
			cliErr := cli.HandshakeContext(ctx)
			if cliErr == nil {
				// TLS 1.3: the client finishes before the server has checked its certificate;
				// a read surfaces the server's verdict.
				cli.SetReadDeadline(time.Now().Add(waitLong))
				go srv.Write([]byte("x"))
				_, cliErr = cli.Read(make([]byte, 1))
			} else {
				cc.Close()
			}
			wg.Wait()
			if !tc.ok {
				if srvErr == nil && cliErr == nil {
					t.Fatal("handshake succeeded")
				}
				return
			}
			if srvErr != nil || cliErr != nil {
				t.Fatalf("handshake: server %v, client %v", srvErr, cliErr)
			}
			peerID, err := x509svid.IDFromCert(srv.ConnectionState().PeerCertificates[0])
			if err != nil || peerID != f.DB.ID {
				t.Fatalf("server sees %s (%v), want %s", peerID, err, f.DB.ID)
			}
			peerID, err = x509svid.IDFromCert(cli.ConnectionState().PeerCertificates[0])
			if err != nil || peerID != f.Web.ID {
				t.Fatalf("client sees %s (%v), want %s", peerID, err, f.Web.ID)
			}
		})
	}
}

func TestWITUnimplemented(t *testing.T) {
	f := newFixture(t)
	ts := startServer(t, workloadtest.NewWatcher(f.View()), nil)
	c := ts.client(t)
	ctx := testCtx(t)
	if _, err := c.FetchWITSVID(ctx, ""); status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchWITSVID: %v, want Unimplemented", err)
	}
	if _, err := c.FetchWITBundles(ctx); status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchWITBundles: %v, want Unimplemented", err)
	}
}

type recordingMetrics struct {
	mu       sync.Mutex
	open     map[Kind]int
	opened   map[Kind]int
	sent     map[Kind]int
	items    map[Kind]int
	failures map[Kind][]codes.Code
}

func newRecordingMetrics() *recordingMetrics {
	return &recordingMetrics{open: map[Kind]int{}, opened: map[Kind]int{}, sent: map[Kind]int{}, items: map[Kind]int{}, failures: map[Kind][]codes.Code{}}
}

func (m *recordingMetrics) StreamOpened(k Kind) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.open[k]++
	m.opened[k]++
}

func (m *recordingMetrics) StreamClosed(k Kind) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.open[k]--
}

func (m *recordingMetrics) ResponseSent(k Kind, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent[k]++
	m.items[k] += n
}

func (m *recordingMetrics) RequestFailed(k Kind, c codes.Code) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failures[k] = append(m.failures[k], c)
}

func TestMetrics(t *testing.T) {
	f := newFixture(t)
	m := newRecordingMetrics()
	ts := startServer(t, workloadtest.NewWatcher(f.View()), func(c *Config) { c.Metrics = m })
	c := ts.client(t)
	ctx := testCtx(t)
	if _, err := c.FetchX509SVIDs(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "svc"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ValidateJWTSVID(ctx, "x", "svc"); status.Code(err) != codes.InvalidArgument {
		t.Fatal(err)
	}
	if _, err := ts.raw(t).FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{}); err != nil {
		t.Fatal(err)
	}
	// Streams close asynchronously after the client cancels.
	deadline := time.Now().Add(waitLong)
	for {
		m.mu.Lock()
		open, failed := m.open[KindX509SVID]+m.open[KindJWTBundles], len(m.failures[KindJWTBundles])
		m.mu.Unlock()
		if open == 0 && failed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open, %d JWT bundle failures", open, failed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"x509 streams", m.opened[KindX509SVID], 1},
		{"x509 responses", m.sent[KindX509SVID], 1},
		{"x509 items", m.items[KindX509SVID], 2},
		{"x509 failures (client cancel is not one)", len(m.failures[KindX509SVID]), 0},
		{"jwt responses", m.sent[KindJWTSVID], 1},
		{"jwt items", m.items[KindJWTSVID], 2},
		{"validate failures", slices.Clone(m.failures[KindValidateJWTSVID]), []codes.Code{codes.InvalidArgument}},
		{"jwt bundle failures", slices.Clone(m.failures[KindJWTBundles]), []codes.Code{codes.InvalidArgument}},
	} {
		if !equalAny(tc.got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func equalAny(a, b any) bool {
	if as, ok := a.([]codes.Code); ok {
		bs, ok := b.([]codes.Code)
		return ok && slices.Equal(as, bs)
	}
	return a == b
}
