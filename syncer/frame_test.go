package syncer

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	ds := []Delta{
		{Seq: 1, Map: 1, Op: OpUpsert, Key: []byte{1, 2, 3, 4}, Value: bytes.Repeat([]byte{7}, 32)},
		{Seq: 2, Map: 3, Op: OpDelete, Key: []byte{9, 9, 9, 9}},
		{Seq: 3, Map: 1, Op: OpSnapshotBegin},
		{Seq: 1 << 60, Map: 1, Op: OpSnapshotEnd},
		{Seq: 5, Op: OpResync, Value: []byte{0, 0, 0, 0, 0, 0, 0, 7}},
	}
	h := Hello{Version: ProtocolVersion, Flags: HelloMapsEmpty, Node: [16]byte{1, 2}, Generation: 7, PeerGeneration: 6, LastSent: 8, LastApplied: 9}
	var b []byte
	b = AppendHello(b, h)
	for _, d := range ds {
		b = AppendDelta(b, d)
	}
	b = AppendAck(b, 42)
	r := NewReader(bytes.NewReader(b))
	m, err := r.Next()
	if err != nil || !reflect.DeepEqual(*m.Hello, h) {
		t.Fatalf("hello: %+v %v", m, err)
	}
	for _, d := range ds {
		m, err := r.Next()
		if err != nil || !reflect.DeepEqual(*m.Delta, d) {
			t.Fatalf("delta: got %+v %v, want %+v", m.Delta, err, d)
		}
	}
	if m, err := r.Next(); err != nil || *m.Ack != 42 {
		t.Fatalf("ack: %+v %v", m, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

func TestFrameRejects(t *testing.T) {
	good := AppendDelta(nil, Delta{Seq: 1, Map: 1, Op: OpUpsert, Key: []byte{1}, Value: []byte{2}})
	cases := map[string][]byte{
		"truncated length":     good[:2],
		"truncated body":       good[:len(good)-1],
		"zero length":          {0, 0, 0, 0},
		"huge length":          {0xff, 0xff, 0xff, 0xff, 2},
		"unknown type":         {0, 0, 0, 1, 99},
		"short hello":          {0, 0, 0, 3, FrameHello, 0, 1},
		"long ack":             {0, 0, 0, 10, FrameAck, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"long keepalive":       {0, 0, 0, 2, FrameKeepalive, 0},
		"delete with value":    AppendDelta(nil, Delta{Seq: 1, Map: 1, Op: OpDelete, Key: []byte{1}, Value: []byte{2}}),
		"upsert without value": AppendDelta(nil, Delta{Seq: 1, Map: 1, Op: OpUpsert, Key: []byte{1}}),
		"unknown op":           AppendDelta(nil, Delta{Seq: 1, Map: 1, Op: 77, Key: []byte{1}}),
		"marker with payload":  AppendDelta(nil, Delta{Seq: 1, Map: 1, Op: OpSnapshotEnd, Key: []byte{1}}),
	}
	// Lengths that disagree: claim a longer key than the frame holds.
	bad := append([]byte{}, good...)
	bad[4+1+8+4+1+1] = 200
	cases["key longer than frame"] = bad
	for name, b := range cases {
		_, err := NewReader(bytes.NewReader(b)).Next()
		if !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
}

// FuzzDecode: no input crashes the decoder, and whatever it accepts
// encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(AppendDelta(nil, Delta{Seq: 1, Map: 1, Op: OpUpsert, Key: []byte{1, 2}, Value: []byte{3}})[4:])
	f.Add(AppendHello(nil, Hello{Version: 1})[4:])
	f.Add(AppendAck(nil, 5)[4:])
	f.Add([]byte{FrameDelta})
	f.Add(AppendKeepalive(nil)[4:])
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Decode(body)
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("error not an ErrFrame: %v", err)
			}
			return
		}
		var re []byte
		switch {
		case m.Delta != nil:
			re = AppendDelta(nil, *m.Delta)
		case m.Hello != nil:
			re = AppendHello(nil, *m.Hello)
		case m.Ack != nil:
			re = AppendAck(nil, *m.Ack)
		case m.Keepalive:
			re = AppendKeepalive(nil)
		default:
			t.Fatal("accepted frame with no message")
		}
		if !bytes.Equal(re[4:], body) {
			t.Fatalf("re-encoded %x, input %x", re[4:], body)
		}
	})
}
