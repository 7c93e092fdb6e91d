package workloadtest

import (
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/svidd/svidd/internal/proctest"
	"github.com/svidd/svidd/pkg/wire"
)

// Serve runs a gRPC server, set up as the agent's is for the front-ends (pre-encoded
// responses, pkg/wire), on a Unix socket in a short temp dir, with the services register
// adds and any further server options (interceptors). It returns the socket's gRPC target
// ("unix:///…"). At cleanup it stops the server and checks that every handler closed its
// subscription of w.
func Serve(t testing.TB, w *Watcher, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	sock := filepath.Join(proctest.ShortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(append([]grpc.ServerOption{wire.ServerOption()}, opts...)...)
	register(g)
	served := make(chan error, 1)
	go func() { served <- g.Serve(ln) }()
	t.Cleanup(func() {
		g.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for w.Open() > 0 {
			if time.Now().After(deadline) {
				t.Errorf("%d subscriptions left open after the server stopped", w.Open())
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return "unix://" + sock
}
