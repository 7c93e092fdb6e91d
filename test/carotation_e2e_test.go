package test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/svidd/svidd/test/envoy"
)

// heldSecrets is what one Envoy-like workload currently holds: its newest SVID and the newest
// bundle it received, updated as svidd pushes.
type heldSecrets struct {
	mu      sync.Mutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	roots   map[string]bool // every root SKI ever seen
	updates int
}

func (h *heldSecrets) get() (*x509svid.SVID, *x509bundle.Bundle) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.svid, h.bundle
}

// follow keeps h current from an SDS stream asking for id and the trust domain.
func follow(ctx context.Context, s *envoy.SotW, id string, h *heldSecrets, errc chan<- error) {
	for {
		r, err := s.Recv(ctx)
		if err != nil {
			if ctx.Err() == nil {
				errc <- fmt.Errorf("%s stream: %w", id, err)
			}
			return
		}
		h.mu.Lock()
		if sec := r.Get(id); sec != nil {
			certs, key, err := envoy.CertAndKey(sec)
			if err != nil {
				h.mu.Unlock()
				errc <- err
				return
			}
			h.svid = &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: certs, PrivateKey: key}
		}
		if sec := r.Get(tdID); sec != nil {
			roots, err := envoy.TrustedCA(sec)
			if err != nil {
				h.mu.Unlock()
				errc <- err
				return
			}
			h.bundle = x509bundle.FromX509Authorities(td, roots)
			for _, c := range roots {
				h.roots[fmt.Sprintf("%x", c.SubjectKeyId)] = true
			}
		}
		h.updates++
		h.mu.Unlock()
	}
}

// TestHandshakesThroughCARotations: two workloads do mTLS handshakes continuously, each with
// the newest SVID and bundle it holds, while the CA rotates several times (30s CA lifetime
// and 5s SVIDs, the shortest accepted: a new CA signs every 15s, the second from about 34s on); not one handshake fails. This is the promise of rotation with overlap: the next
// CA reaches every stream before any SVID it signs is served.
func TestHandshakesThroughCARotations(t *testing.T) {
	waitsInParallel(t)
	a := startAgent(t, withConfig("ca {\n  ca_ttl = \"30s\"\n  svid_ttl = \"5s\"\n}\n"))
	const (
		server = "spiffe://example.org/rot-server"
		client = "spiffe://example.org/rot-client"
	)
	a.createEntry(server, "-selector", "unix:uid:0")
	a.createEntry(client, "-selector", "unix:uid:0")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 4)
	holders := map[string]*heldSecrets{}
	for _, id := range []string{server, client} {
		h := &heldSecrets{roots: map[string]bool{}}
		holders[id] = h
		go follow(ctx, dialAgentNames(t, a, []string{id, tdID}), id, h, errc)
	}
	for _, h := range holders {
		for deadline := time.Now().Add(15 * time.Second); ; {
			if s, b := h.get(); s != nil && b != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no first secrets")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	serverID, clientID := spiffeid.RequireFromString(server), spiffeid.RequireFromString(client)
	var handshakes, activeCAs int
	seenActive := map[string]bool{}
	for end := time.Now().Add(40 * time.Second); time.Now().Before(end); {
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
		srvSVID, srvBundle := holders[server].get()
		cliSVID, cliBundle := holders[client].get()
		// Each side verifies the peer with the bundle it holds: the server's bundle must
		// already contain the client's (possibly new) CA and the other way round.
		if err := handshakeWith(srvSVID, srvBundle, cliSVID, cliBundle, clientID, serverID); err != nil {
			t.Fatalf("handshake %d failed during CA rotation: %v\nserver leaf issuer %x, client leaf issuer %x", handshakes, err,
				srvSVID.Certificates[0].AuthorityKeyId, cliSVID.Certificates[0].AuthorityKeyId)
		}
		handshakes++
		seenActive[fmt.Sprintf("%x", srvSVID.Certificates[0].AuthorityKeyId)] = true
		time.Sleep(20 * time.Millisecond)
	}
	activeCAs = len(seenActive)
	h := holders[server]
	h.mu.Lock()
	roots := len(h.roots)
	h.mu.Unlock()
	t.Logf("%d handshakes, SVIDs from %d CAs, %d roots seen", handshakes, activeCAs, roots)
	if activeCAs < 3 {
		t.Fatalf("SVIDs were signed by %d CAs over the run; want at least 3 (two activations)", activeCAs)
	}
}
