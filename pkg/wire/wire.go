// Package wire lets a gRPC server send messages it encoded ahead of time.
//
// svidd sends the same Secrets to thousands of streams: every stream of one caller group holds
// the same View, and only a response's version and nonce are its own. Marshalling each
// response through gRPC's proto codec costs a marshal of the certificate, key and bundle per
// stream and a pooled 4 KiB buffer per response (a third of the agent's heap with 10,000
// streams open, issue 6). With this codec installed, a front-end encodes each resource once
// per View and sends a Message made of a small per-response header plus those shared bytes;
// gRPC hands the parts to its transport without copying or marshalling them again.
//
// Any other message goes through gRPC's usual proto codec, so the option is safe for every
// service on the server.
package wire

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// Message is a protobuf message in wire format: the concatenation of its parts. Protobuf
// allows a message's fields in any order and repeated fields to be split across the input, so
// a response can be assembled from separately encoded fields. The parts are only read; they
// may be shared by any number of Messages and sent concurrently.
type Message struct {
	parts [][]byte
}

// NewMessage returns a Message of parts (taken, not copied).
func NewMessage(parts ...[]byte) *Message { return &Message{parts: parts} }

// Append adds a part.
func (m *Message) Append(p []byte) { m.parts = append(m.parts, p) }

// Bytes returns the message as one slice (for tests and logs; sending does not need it).
func (m *Message) Bytes() []byte {
	n := 0
	for _, p := range m.parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range m.parts {
		out = append(out, p...)
	}
	return out
}

// Codec is gRPC's proto codec that also sends Messages as they are.
type Codec struct {
	proto encoding.CodecV2
}

// NewCodec returns the codec.
func NewCodec() Codec {
	c := encoding.GetCodecV2(protocodec.Name)
	if c == nil {
		// The proto codec registers itself in its package's init, which importing it runs.
		panic("wire: gRPC's proto codec is not registered")
	}
	return Codec{proto: c}
}

// ServerOption installs the codec on a gRPC server.
func ServerOption() grpc.ServerOption { return grpc.ForceServerCodecV2(NewCodec()) }

// Marshal returns a Message's parts as they are (no copy, nothing to free: the buffers are
// plain slices), and marshals anything else with the proto codec.
func (c Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*Message)
	if !ok {
		return c.proto.Marshal(v)
	}
	if m == nil {
		return nil, fmt.Errorf("wire: nil message")
	}
	out := make(mem.BufferSlice, 0, len(m.parts))
	for _, p := range m.parts {
		if len(p) > 0 {
			out = append(out, mem.SliceBuffer(p))
		}
	}
	return out, nil
}

// Unmarshal decodes with the proto codec: requests are ordinary messages.
func (c Codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// Name is the proto codec's: clients see an ordinary application/grpc+proto server.
func (c Codec) Name() string { return protocodec.Name }

// Parts returns the message's parts (shared, not copied: do not modify them).
func (m *Message) Parts() [][]byte { return m.parts }

// Decode unmarshals what a handler passed to SendMsg — a *Message, or an ordinary proto
// message — into dst, as a client would receive it: for streams faked in process (fuzzing
// handlers without a socket).
func Decode(m any, dst proto.Message) error {
	switch m := m.(type) {
	case *Message:
		return proto.Unmarshal(m.Bytes(), dst)
	case proto.Message:
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		return proto.Unmarshal(b, dst)
	}
	return fmt.Errorf("wire: cannot decode %T", m)
}
