package etcdtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards TCP connections from a loopback port to one etcd member, so a test can cut
// one client off from the cluster (a partitioned host) while other clients keep writing. TLS
// passes through untouched: the member's certificate names 127.0.0.1.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	drop  bool // DropReplies: the member's bytes are discarded
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewProxy listens on a free loopback port and forwards to target (host:port). It is closed
// when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every forwarded connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Restore forwards new connections again, and the member's answers (after DropReplies).
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut, p.drop = false, false
	p.mu.Unlock()
}

// DropReplies keeps the connections open and forwards what clients send, but discards what
// the member answers until Restore: a request is applied and its answer lost, as when a
// connection breaks just after a request went out.
func (p *Proxy) DropReplies() {
	p.mu.Lock()
	p.drop = true
	p.mu.Unlock()
}

func (p *Proxy) dropping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drop
}

// replies writes the member's bytes to the client unless DropReplies is on.
type replies struct {
	p   *Proxy
	out net.Conn
}

func (r replies) Write(b []byte) (int, error) {
	if r.p.dropping() {
		return len(b), nil
	}
	return r.out.Write(b)
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns[in] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.forward(in) })
	}
}

func (p *Proxy) forward(in net.Conn) {
	defer func() {
		in.Close()
		p.mu.Lock()
		delete(p.conns, in)
		p.mu.Unlock()
	}()
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		out.Close()
		return
	}
	p.conns[out] = struct{}{}
	p.mu.Unlock()
	defer func() {
		out.Close()
		p.mu.Lock()
		delete(p.conns, out)
		p.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, in); out.Close(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(replies{p, in}, out); in.Close(); done <- struct{}{} }()
	<-done
	<-done
}
