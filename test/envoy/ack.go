package envoy

import (
	"fmt"
	"sync"
)

// answers is how a stream answers the responses it receives, as Envoy does, the same for
// state-of-the-world and delta streams: an invalid response is NACKed; a valid one is
// ACKed, or NACKed once NACK armed it, or left to ACK and NACKLast under ManualACK. What an
// ACK and a NACK carry differs between the protocols: ack and nack send them. R is the
// stream's decoded response type.
type answers[R any] struct {
	mu       *sync.Mutex // the stream's: guards the fields below and serialises its sends
	manual   bool        // ManualACK
	nackNext string      // error_detail for the next valid response, if armed
	pending  *R          // under ManualACK: the last response, not answered yet
	// ack accepts a response and sends the ACK; nack sends a NACK of the last response with
	// detail. Both are called with mu held.
	ack  func(*R) error
	nack func(detail string) error
}

// answer answers a received response, decoded into resp or rejected with verr; mu is held.
func (a *answers[R]) answer(resp *R, verr error) (*R, error) {
	if verr != nil {
		if !a.manual {
			if err := a.nack(verr.Error()); err != nil {
				return nil, fmt.Errorf("%w (and NACK failed: %w)", verr, err)
			}
		}
		return nil, verr
	}
	switch {
	case a.manual:
		a.pending = resp
	case a.nackNext != "":
		detail := a.nackNext
		a.nackNext = ""
		if err := a.nack(detail); err != nil {
			return nil, fmt.Errorf("sending NACK: %w", err)
		}
	default:
		if err := a.ack(resp); err != nil {
			return nil, fmt.Errorf("sending ACK: %w", err)
		}
	}
	return resp, nil
}

// NACK arms a NACK with errDetail for the next valid response Recv returns, instead of its
// ACK: the stream keeps what it accepted before.
func (a *answers[R]) NACK(errDetail string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nackNext = errDetail
}

// ACK accepts the last response Recv returned (ManualACK streams).
func (a *answers[R]) ACK() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending == nil {
		return fmt.Errorf("no response to ACK")
	}
	r := a.pending
	a.pending = nil
	return a.ack(r)
}

// NACKLast rejects the last response Recv returned (ManualACK streams).
func (a *answers[R]) NACKLast(errDetail string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending == nil {
		return fmt.Errorf("no response to NACK")
	}
	a.pending = nil
	return a.nack(errDetail)
}
