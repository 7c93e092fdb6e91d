package envoy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrStreamClosed is returned by Recv once the stream has ended and its final error was
// already returned, or after Close.
var ErrStreamClosed = errors.New("SDS stream closed")

// pump turns a blocking gRPC Recv into a channel, so Recv can honour a context and RecvWithin
// can give up without breaking the stream.
type pump[T any] struct {
	c    chan *T
	done chan struct{} // closed when the goroutine has exited; err is set before
	err  error
}

func startPump[T any](recv func() (*T, error), stop <-chan struct{}) *pump[T] {
	p := &pump[T]{c: make(chan *T), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			m, err := recv()
			if err != nil {
				p.err = err
				return
			}
			select {
			case p.c <- m:
			case <-stop:
				p.err = ErrStreamClosed
				return
			}
		}
	}()
	return p
}

// next returns the next message, the stream's final error, or ctx's error.
func (p *pump[T]) next(ctx context.Context) (*T, error) {
	select {
	case m := <-p.c:
		return m, nil
	case <-p.done:
		// A message handed over just before the stream ended is still delivered first.
		select {
		case m := <-p.c:
			return m, nil
		default:
		}
		return nil, fmt.Errorf("receiving SDS response: %w", p.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// within runs recv with a deadline of d and maps that deadline (not ctx's own end) to a nil
// result, for "the agent must send nothing now" assertions.
func within[R any](ctx context.Context, d time.Duration, recv func(context.Context) (R, error)) (R, error) {
	var zero R
	tctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	r, err := recv(tctx)
	if err != nil && ctx.Err() == nil && tctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
		return zero, nil
	}
	return r, err
}

// closer cancels a stream and waits for its pump, once.
type closer struct {
	once   sync.Once
	cancel context.CancelFunc
	stop   chan struct{}
}

func (c *closer) close(wait <-chan struct{}) {
	c.once.Do(func() {
		close(c.stop)
		c.cancel()
	})
	if wait != nil {
		<-wait
	}
}
