package syncer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The wire protocol between two tandem hosts, inside TLS 1.3:
//
//	frame   = length:u32 type:u8 body      (length counts type and body)
//	HELLO   = version:u16 flags:u16 node:[16]byte generation:u64 peerGeneration:u64
//	          lastSent:u64 lastApplied:u64
//	DELTA   = seq:u64 map:u32 op:u8 keyLen:u16 valueLen:u32 key value
//	ACK     = seq:u64
//	KEEPALIVE = (empty)     primary to standby while it has nothing to send,
//	                        only to a standby whose HELLO set HelloKeepalive
//
// All integers are big-endian. A frame that breaks any rule (too long,
// short, unknown type or op, lengths that disagree) is an error: the
// connection closes and nothing of the frame is applied.

// ProtocolVersion is the version this build speaks; a peer with another
// is refused at HELLO.
const ProtocolVersion = 1

// MaxFrame bounds a frame (key and value sizes of BPF maps are far below).
const MaxFrame = 1 << 20

// Frame types.
const (
	FrameHello byte = 1
	FrameDelta byte = 2
	FrameAck   byte = 3
	// FrameKeepalive tells a standby that a silent primary is alive: the
	// standby closes a session that sends nothing for its idle timeout.
	FrameKeepalive byte = 4
)

// Hello opens a session: who the sender is and where its streams stand.
type Hello struct {
	Version        uint16
	Flags          uint16
	Node           [16]byte
	Generation     uint64 // the generation this host serves as primary
	PeerGeneration uint64 // the generation its applied state came from (0: none, or incomplete)
	LastSent       uint64
	LastApplied    uint64
}

// HelloMapsEmpty: the sender's replicated maps hold nothing.
const HelloMapsEmpty uint16 = 1

// HelloKeepalive: the sender (a standby) understands KEEPALIVE frames
// and closes a session that stays silent; the primary then sends them.
const HelloKeepalive uint16 = 2

const helloLen = 2 + 2 + 16 + 8 + 8 + 8 + 8

// ErrFrame wraps every malformed-frame error.
var ErrFrame = errors.New("malformed frame")

func frameErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
}

// AppendDelta encodes d as a frame.
func AppendDelta(b []byte, d Delta) []byte {
	n := 1 + 8 + 4 + 1 + 2 + 4 + len(d.Key) + len(d.Value)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, FrameDelta)
	b = binary.BigEndian.AppendUint64(b, d.Seq)
	b = binary.BigEndian.AppendUint32(b, d.Map)
	b = append(b, byte(d.Op))
	b = binary.BigEndian.AppendUint16(b, uint16(len(d.Key)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(d.Value)))
	b = append(b, d.Key...)
	return append(b, d.Value...)
}

// AppendHello encodes h as a frame.
func AppendHello(b []byte, h Hello) []byte {
	b = binary.BigEndian.AppendUint32(b, 1+helloLen)
	b = append(b, FrameHello)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint16(b, h.Flags)
	b = append(b, h.Node[:]...)
	b = binary.BigEndian.AppendUint64(b, h.Generation)
	b = binary.BigEndian.AppendUint64(b, h.PeerGeneration)
	b = binary.BigEndian.AppendUint64(b, h.LastSent)
	return binary.BigEndian.AppendUint64(b, h.LastApplied)
}

// AppendAck encodes an acknowledgement of everything up to seq.
func AppendAck(b []byte, seq uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, 1+8)
	b = append(b, FrameAck)
	return binary.BigEndian.AppendUint64(b, seq)
}

// AppendKeepalive encodes a keepalive.
func AppendKeepalive(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, 1)
	return append(b, FrameKeepalive)
}

// Message is one decoded frame: exactly one of its fields is set.
type Message struct {
	Hello     *Hello
	Delta     *Delta
	Ack       *uint64
	Keepalive bool
}

// Reader decodes frames from a stream.
type Reader struct {
	r   *bufio.Reader
	buf []byte
}

// NewReader reads frames from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// Next reads one frame. io.EOF means the stream ended between frames;
// a stream that ends inside one is an ErrFrame.
func (fr *Reader) Next() (Message, error) { return fr.next(nil, nil) }

// next reads one frame; a delta goes into d, when given, its key and
// value appended to arena (a receiver's batch shares one, reused once
// the batch is applied): no allocation per delta.
func (fr *Reader) next(d *Delta, arena *[]byte) (Message, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Message{}, frameErr("stream ends inside a frame length")
		}
		return Message{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxFrame {
		return Message{}, frameErr("length %d", n)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	body := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, body); err != nil {
		return Message{}, frameErr("stream ends inside a %d-byte frame", n)
	}
	return decode(body, d, arena)
}

// Decode decodes one frame body (type and payload, without the length).
func Decode(body []byte) (Message, error) { return decode(body, nil, nil) }

func decode(body []byte, into *Delta, arena *[]byte) (Message, error) {
	if len(body) == 0 {
		return Message{}, frameErr("empty")
	}
	t, p := body[0], body[1:]
	switch t {
	case FrameHello:
		if len(p) != helloLen {
			return Message{}, frameErr("hello of %d bytes", len(p))
		}
		h := &Hello{Version: binary.BigEndian.Uint16(p), Flags: binary.BigEndian.Uint16(p[2:])}
		copy(h.Node[:], p[4:20])
		h.Generation = binary.BigEndian.Uint64(p[20:])
		h.PeerGeneration = binary.BigEndian.Uint64(p[28:])
		h.LastSent = binary.BigEndian.Uint64(p[36:])
		h.LastApplied = binary.BigEndian.Uint64(p[44:])
		return Message{Hello: h}, nil
	case FrameKeepalive:
		if len(p) != 0 {
			return Message{}, frameErr("keepalive of %d bytes", len(p))
		}
		return Message{Keepalive: true}, nil
	case FrameAck:
		if len(p) != 8 {
			return Message{}, frameErr("ack of %d bytes", len(p))
		}
		seq := binary.BigEndian.Uint64(p)
		return Message{Ack: &seq}, nil
	case FrameDelta:
		if len(p) < 8+4+1+2+4 {
			return Message{}, frameErr("delta of %d bytes", len(p))
		}
		d := into
		if d == nil {
			d = new(Delta)
		}
		*d = Delta{Seq: binary.BigEndian.Uint64(p), Map: binary.BigEndian.Uint32(p[8:]), Op: Op(p[12])}
		kl, vl := int(binary.BigEndian.Uint16(p[13:])), int(binary.BigEndian.Uint32(p[15:]))
		rest := p[19:]
		if kl+vl != len(rest) {
			return Message{}, frameErr("delta %d: key %d + value %d bytes, frame holds %d", d.Seq, kl, vl, len(rest))
		}
		switch d.Op {
		case OpUpsert:
			if kl == 0 || vl == 0 {
				return Message{}, frameErr("delta %d: upsert without key or value", d.Seq)
			}
		case OpDelete:
			if kl == 0 || vl != 0 {
				return Message{}, frameErr("delta %d: delete needs a key and no value", d.Seq)
			}
		case OpSnapshotBegin, OpSnapshotEnd:
			if kl != 0 || vl != 0 {
				return Message{}, frameErr("delta %d: snapshot marker with a payload", d.Seq)
			}
		case OpResync, OpResyncDone:
			if kl != 0 || vl != 8 {
				return Message{}, frameErr("delta %d: resync marker without its generation", d.Seq)
			}
		default:
			return Message{}, frameErr("delta %d: op %d", d.Seq, d.Op)
		}
		var kv []byte
		if arena != nil {
			off := len(*arena)
			*arena = append(*arena, rest...)
			kv = (*arena)[off:len(*arena):len(*arena)]
		} else {
			kv = append([]byte(nil), rest...) // one allocation for both
		}
		d.Key, d.Value = kv[:kl:kl], kv[kl:]
		if vl == 0 {
			d.Value = nil
		}
		if kl == 0 {
			d.Key = nil
		}
		return Message{Delta: d}, nil
	}
	return Message{}, frameErr("type %d", t)
}
