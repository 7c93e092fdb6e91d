// Command spiffeclient is a go-spiffe program as workloads write them, for the e2e tests: it
// uses only go-spiffe's public client API against svidd's Workload API socket, so the tests
// prove svidd works with the clients people use. Each mode prints JSON lines on stdout.
//
//	spiffeclient -socket P x509 [-updates N]         X509Source: the SVID, then N updates
//	spiffeclient -socket P jwt -audience A          FetchJWTSVID, then ValidateJWTSVID
//	spiffeclient -socket P serve -authorize ID      spiffetls server on 127.0.0.1:0, one exchange
//	spiffeclient -socket P dial -addr A -authorize ID
//	spiffeclient -socket P mesh-serve                   spiffetls server for any ID of the trust domain, until stopped
//	spiffeclient -socket P mesh-dial -addr A -authorize ID -every D -for D
//	                                                    dial A every D for D, checking the held SVID each time; one summary line
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "spiffeclient:", err)
		os.Exit(1)
	}
}

type out map[string]any

func emit(v out) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func run(ctx context.Context) error {
	socket := flag.String("socket", "", "svidd api socket")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after")
	flag.Parse()
	if flag.NArg() == 0 {
		return errors.New("mode: x509, jwt, serve or dial")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + *socket))
	mode, args := flag.Arg(0), flag.Args()[1:]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	updates := fs.Int("updates", 0, "x509: wait for this many SVID updates after the first")
	audience := fs.String("audience", "", "jwt: audience")
	authorize := fs.String("authorize", "", "serve/dial: the peer SPIFFE ID to accept")
	peer := fs.String("addr", "", "dial: server address")
	every := fs.Duration("every", 200*time.Millisecond, "mesh-dial: interval")
	dur := fs.Duration("for", 30*time.Second, "mesh-dial: how long")
	if err := fs.Parse(args); err != nil {
		return err
	}

	switch mode {
	case "x509":
		src, err := workloadapi.NewX509Source(ctx, addr)
		if err != nil {
			return fmt.Errorf("NewX509Source: %w", err)
		}
		defer src.Close()
		last := ""
		for seen := 0; seen <= *updates; {
			svid, err := src.GetX509SVID()
			if err != nil {
				return err
			}
			if serial := svid.Certificates[0].SerialNumber.Text(16); serial != last {
				last = serial
				seen++
				emit(out{"spiffe_id": svid.ID.String(), "serial": serial, "not_before": svid.Certificates[0].NotBefore, "not_after": svid.Certificates[0].NotAfter, "received": time.Now()})
			}
			if seen > *updates {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-src.Updated():
			}
		}
		return nil

	case "jwt":
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+*socket))
		if err != nil {
			return err
		}
		defer c.Close()
		svid, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: *audience})
		if err != nil {
			return fmt.Errorf("FetchJWTSVID: %w", err)
		}
		token := svid.Marshal()
		v, err := c.ValidateJWTSVID(ctx, token, *audience)
		if err != nil {
			return fmt.Errorf("ValidateJWTSVID: %w", err)
		}
		_, wrongErr := c.ValidateJWTSVID(ctx, token, "someone-else")
		emit(out{"spiffe_id": svid.ID.String(), "validated_id": v.ID.String(), "expiry": svid.Expiry, "wrong_audience_rejected": wrongErr != nil})
		return nil

	case "serve":
		id, err := spiffeid.FromString(*authorize)
		if err != nil {
			return err
		}
		ln, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSourceOptions(tlsconfig.AuthorizeID(id), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+*socket))))
		if err != nil {
			return fmt.Errorf("spiffetls listen: %w", err)
		}
		defer ln.Close()
		emit(out{"addr": ln.Addr().String()})
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		defer conn.Close()
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading from the client (handshake?): %w", err)
		}
		if _, err := fmt.Fprintf(conn, "pong to %s", line); err != nil {
			return err
		}
		emit(out{"served": line})
		return nil

	case "dial":
		id, err := spiffeid.FromString(*authorize)
		if err != nil {
			return err
		}
		conn, err := spiffetls.DialWithMode(ctx, "tcp", *peer, spiffetls.MTLSClientWithSourceOptions(tlsconfig.AuthorizeID(id), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+*socket))))
		if err != nil {
			return fmt.Errorf("spiffetls dial: %w", err)
		}
		defer conn.Close()
		if _, err := fmt.Fprintln(conn, "ping"); err != nil {
			return err
		}
		reply, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the reply: %w", err)
		}
		emit(out{"reply": reply})
		return nil

	case "mesh-serve":
		return meshServe(ctx, *socket)
	case "mesh-dial":
		id, err := spiffeid.FromString(*authorize)
		if err != nil {
			return err
		}
		return meshDial(ctx, *socket, *peer, id, *every, *dur)
	}
	return fmt.Errorf("unknown mode %q", mode)
}
