package wire

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestCodec: a Message goes out as its parts, untouched and uncopied; any other message is
// marshalled by gRPC's proto codec; a Message assembled from separately encoded fields
// decodes like the message built whole; unmarshalling is the proto codec's.
func TestCodec(t *testing.T) {
	c := NewCodec()
	if c.Name() != "proto" {
		t.Fatalf("Name() = %q, want proto (clients must see an ordinary server)", c.Name())
	}

	// The wire format is a byte stream: a message split at any point, in parts, is the same
	// message once the transport has written the parts one after another.
	want := wrapperspb.String("shared secret bytes")
	enc, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	head, tail := enc[:3], enc[3:]
	m := NewMessage(head, nil, tail)
	out, err := c.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Fatalf("Marshal gave %d buffers, want 2 (empty parts dropped)", len(out))
	}
	if &out[1].ReadOnlyData()[0] != &tail[0] {
		t.Fatal("Marshal copied a part; want the shared bytes as they are")
	}
	got := &wrapperspb.StringValue{}
	if err := c.Unmarshal(out, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("round trip = %v, want %v", got, want)
	}
	if !bytes.Equal(m.Bytes(), enc) {
		t.Fatalf("Bytes() = %x, want %x", m.Bytes(), enc)
	}

	plain, err := c.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain.Materialize(), enc) {
		t.Fatal("a proto message was not marshalled as the proto codec does")
	}
	plain.Free()

	if _, err := c.Marshal(struct{}{}); err == nil {
		t.Fatal("Marshal of a non-message: no error")
	}
	if _, err := c.Marshal((*Message)(nil)); err == nil {
		t.Fatal("Marshal of a nil Message: no error")
	}
}
