package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// meshServe is a workload's mTLS server as go-spiffe users write it (X509Source,
// tlsconfig.MTLSServerConfig): it accepts any SVID of its own trust domain, answers one line
// per connection, and runs until stopped.
func meshServe(ctx context.Context, socket string) error {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+socket)))
	if err != nil {
		return fmt.Errorf("NewX509Source: %w", err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(svid.ID.TrustDomain())))
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	emit(out{"addr": ln.Addr().String(), "spiffe_id": svid.ID.String()})
	for {
		conn, err := ln.Accept()
		if err != nil {
			return ctx.Err()
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err == nil {
				fmt.Fprintf(conn, "pong to %s", line)
			}
		}()
	}
}

// meshDial dials addr every interval for dur (0: until stopped) with the newest SVID and bundle its X509Source
// holds, and before each dial checks that SVID as a peer would: unexpired, and verifying
// against the bundle it holds. It prints one summary line: counts, the first errors, and the
// distinct CAs (own and peer's) and bundles it saw, so a test can tell rotations happened.
func meshDial(ctx context.Context, socket, addr string, peer spiffeid.ID, interval, dur time.Duration) error {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+socket)))
	if err != nil {
		return fmt.Errorf("NewX509Source: %w", err)
	}
	defer src.Close()
	var (
		dials, dialFailures, checks, badSVIDs int
		errs                                  []string
		ownCAs, peerCAs, bundles, serials     = map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	)
	note := func(format string, args ...any) {
		if len(errs) < 10 {
			errs = append(errs, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
		}
	}
	cfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(peer))
	tick := time.NewTicker(interval)
	defer tick.Stop()
	// dur 0: until stopped (SIGTERM), then the summary.
	for end := time.Now().Add(dur); dur == 0 || time.Now().Before(end); {
		select {
		case <-ctx.Done():
			dur, end = 1, time.Now() // stop after this summary
			continue
		case <-tick.C:
		}
		svid, err := src.GetX509SVID()
		checks++
		if err != nil {
			badSVIDs++
			note("no SVID: %v", err)
			continue
		}
		now := time.Now()
		leaf := svid.Certificates[0]
		serials[leaf.SerialNumber.Text(16)] = true
		ownCAs[hex.EncodeToString(leaf.AuthorityKeyId)] = true
		b, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
		if err == nil {
			var raw []byte
			for _, c := range b.X509Authorities() {
				raw = append(raw, c.Raw...)
			}
			sum := sha256.Sum256(raw)
			bundles[hex.EncodeToString(sum[:8])] = true
		}
		switch {
		case !now.Before(leaf.NotAfter):
			badSVIDs++
			note("held SVID %s expired at %s", leaf.SerialNumber.Text(16), leaf.NotAfter.Format(time.RFC3339))
		default:
			if _, _, err := x509svid.Verify(svid.Certificates, src, x509svid.WithTime(now)); err != nil {
				badSVIDs++
				note("held SVID %s does not verify against the held bundle: %v", leaf.SerialNumber.Text(16), err)
			}
		}
		dials++
		if pc, err := exchange(cfg, addr); err != nil {
			dialFailures++
			note("dial: %v", err)
		} else {
			peerCAs[hex.EncodeToString(pc.AuthorityKeyId)] = true
		}
	}
	emit(out{"dials": dials, "dial_failures": dialFailures, "svid_checks": checks, "bad_svids": badSVIDs, "errors": errs,
		"own_cas": len(ownCAs), "peer_cas": len(peerCAs), "serials": len(serials), "bundles": keys(bundles)})
	return nil
}

// exchange does one mTLS connection: handshake, a line each way. It returns the peer's leaf.
func exchange(cfg *tls.Config, addr string) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(conn, "ping"); err != nil {
		return nil, err
	}
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		return nil, fmt.Errorf("reading the reply: %w", err)
	}
	return conn.ConnectionState().PeerCertificates[0], nil
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
