// Package xfrm reads and writes the kernel's IPsec SAs over XFRM netlink:
// it lists them with their replay state (XFRM_MSG_GETSA dump), follows
// new, updated and deleted SAs and replay events (XFRMNLGRP_SA,
// XFRMNLGRP_AEVENTS), and installs replay state (XFRM_MSG_NEWAE) for a
// takeover. Only what tandem's SA replication needs is decoded; the
// keys never leave the kernel (they are not requested and not kept).
//
// The encoding is written here rather than taken from
// github.com/vishvananda/netlink: that library neither sends
// XFRM_MSG_NEWAE nor decodes XFRMA_REPLAY_ESN_VAL in its events, which are
// the two things this package exists for. docs/sa.md, "Kernel side".
package xfrm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Message types (uapi/linux/xfrm.h).
const (
	MsgNewSA  = 0x10 // XFRM_MSG_NEWSA
	MsgDelSA  = 0x11 // XFRM_MSG_DELSA
	MsgGetSA  = 0x12 // XFRM_MSG_GETSA
	MsgExpire = 0x18 // XFRM_MSG_EXPIRE
	MsgUpdSA  = 0x1a // XFRM_MSG_UPDSA
	MsgNewAE  = 0x1e // XFRM_MSG_NEWAE
	MsgGetAE  = 0x1f // XFRM_MSG_GETAE
)

// Attributes.
const (
	attrEncap        = 4  // XFRMA_ENCAP
	attrSA           = 6  // XFRMA_SA (in a DELSA notification)
	attrLTimeVal     = 9  // XFRMA_LTIME_VAL
	attrReplayVal    = 10 // XFRMA_REPLAY_VAL
	attrReplayThresh = 11 // XFRMA_REPLAY_THRESH
	attrETimerThresh = 12 // XFRMA_ETIMER_THRESH
	attrMark         = 21 // XFRMA_MARK
	attrReplayESN    = 23 // XFRMA_REPLAY_ESN_VAL
	attrIfID         = 31 // XFRMA_IF_ID
)

// Aevent flags (enum xfrm_ae_ftype_t).
const (
	AERThr = 1  // XFRM_AE_RTHR: the replay threshold was crossed
	AERVal = 2  // XFRM_AE_RVAL: replay value
	AELVal = 4  // XFRM_AE_LVAL: lifetime value
	AEEThr = 8  // XFRM_AE_ETHR: the event timer fired
	AECR   = 16 // XFRM_AE_CR: replay changed (in NEWAE notifications)
	AECE   = 32 // XFRM_AE_CE: timer expired
	AECU   = 64 // XFRM_AE_CU: update requested
)

// Multicast groups (enum xfrm_nlgroups).
const (
	GroupSA      = 3 // XFRMNLGRP_SA
	GroupAEvents = 5 // XFRMNLGRP_AEVENTS
)

// stateESN is XFRM_STATE_ESN in xfrm_usersa_info.flags.
const stateESN = 128

// Sizes of the uapi structs on every Linux ABI tandem runs on.
const (
	sizeUsersaInfo = 224 // struct xfrm_usersa_info
	sizeUsersaID   = 24  // struct xfrm_usersa_id
	sizeAeventID   = 48  // struct xfrm_aevent_id
	sizeReplay     = 12  // struct xfrm_replay_state
	sizeReplayESN  = 24  // struct xfrm_replay_state_esn without bmp
)

// Offsets in struct xfrm_usersa_info.
const (
	offSelFamily = 40  // sel.family
	offIDDaddr   = 56  // id.daddr
	offIDSPI     = 72  // id.spi (network order)
	offIDProto   = 76  // id.proto
	offSaddr     = 80  // saddr
	offStats     = 192 // stats: replay_window, replay, integrity_failed
	offReqID     = 208
	offFamily    = 212
	offMode      = 214
	offRWindow   = 215 // replay_window (u8; the ESN state carries the real one)
	offFlags     = 216
)

// SAID names one SA the way the kernel looks it up: destination, SPI,
// protocol (and its mark, when it has one).
type SAID struct {
	Dst   netip.Addr
	SPI   uint32 // host order
	Proto uint8  // unix.IPPROTO_ESP, AH, COMP
	Mark  Mark
}

func (id SAID) String() string {
	return fmt.Sprintf("%s spi 0x%08x proto %d", id.Dst, id.SPI, id.Proto)
}

// Mark is XFRMA_MARK: an SA with a mark is only found with it.
type Mark struct{ Value, Mask uint32 }

// Replay is an SA's replay state as XFRM holds it: inbound, the highest
// verified sequence number (Seq, SeqHi) and the window bitmap behind it,
// in the kernel's ring layout (struct xfrm_replay_state_esn); outbound,
// the last sequence number sent (OSeq, OSeqHi). Legacy marks an SA
// without XFRMA_REPLAY_ESN_VAL (struct xfrm_replay_state: a 32-bit bitmap
// whose bit d says seq-d arrived, window at most 32).
type Replay struct {
	Seq, SeqHi   uint32
	OSeq, OSeqHi uint32
	Window       uint32   // replay_window, packets
	Bitmap       []uint32 // bmp; len is bmp_len
	Legacy       bool
}

// Top is the highest verified inbound sequence number, 64 bits.
func (r Replay) Top() uint64 { return uint64(r.SeqHi)<<32 | uint64(r.Seq) }

// OTop is the outbound sequence number, 64 bits.
func (r Replay) OTop() uint64 { return uint64(r.OSeqHi)<<32 | uint64(r.OSeq) }

// SA is one kernel SA as tandem needs it.
type SA struct {
	SAID
	Src      netip.Addr
	ReqID    uint32
	Mode     uint8
	ESN      bool // XFRM_STATE_ESN
	Encap    bool // XFRMA_ENCAP: ESP in UDP
	IfID     uint32
	Replay   Replay
	Stats    Stats
	HasStats bool
}

// Stats is struct xfrm_stats: the kernel's own drop counters.
type Stats struct{ ReplayWindow, Replay, IntegrityFailed uint32 }

// AEvent is one XFRM_MSG_NEWAE (a notification, or the answer to GETAE).
type AEvent struct {
	SAID
	Src          netip.Addr
	Flags        uint32 // AE*
	ReqID        uint32
	Replay       Replay
	HasReplay    bool
	ReplayThresh uint32 // XFRMA_REPLAY_THRESH: packets between events
	ETimerThresh uint32 // XFRMA_ETIMER_THRESH: the timer, in 100 ms
}

var errShort = errors.New("xfrm: message too short")

func addrAt(b []byte, family uint16) (netip.Addr, error) {
	switch family {
	case unix.AF_INET:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case unix.AF_INET6:
		return netip.AddrFrom16([16]byte(b[:16])), nil
	}
	return netip.Addr{}, fmt.Errorf("xfrm: address family %d (want AF_INET or AF_INET6)", family)
}

func putAddr(b []byte, a netip.Addr) uint16 {
	if a.Is4() {
		a4 := a.As4()
		copy(b, a4[:])
		return unix.AF_INET
	}
	a16 := a.As16()
	copy(b, a16[:])
	return unix.AF_INET6
}

type attr struct {
	typ  uint16
	data []byte
}

// parseAttrs walks netlink attributes (nla_len, nla_type, padded to 4).
func parseAttrs(b []byte) ([]attr, error) {
	var out []attr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		t := binary.NativeEndian.Uint16(b[2:]) & 0x3fff // drop NLA_F_NESTED/NET_BYTEORDER
		if l < 4 || l > len(b) {
			return nil, fmt.Errorf("xfrm: attribute %d of length %d in %d bytes", t, l, len(b))
		}
		out = append(out, attr{t, b[4:l]})
		l = (l + 3) &^ 3
		if l > len(b) {
			l = len(b)
		}
		b = b[l:]
	}
	return out, nil
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := 4 + len(data)
	var h [4]byte
	binary.NativeEndian.PutUint16(h[:], uint16(l))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(b, h[:]...)
	b = append(b, data...)
	for l%4 != 0 {
		b = append(b, 0)
		l++
	}
	return b
}

// decodeReplayESN reads struct xfrm_replay_state_esn.
func decodeReplayESN(b []byte) (Replay, error) {
	if len(b) < sizeReplayESN {
		return Replay{}, fmt.Errorf("xfrm: replay ESN state of %d bytes: %w", len(b), errShort)
	}
	ne := binary.NativeEndian
	n := ne.Uint32(b)
	if uint64(len(b)) < sizeReplayESN+4*uint64(n) {
		return Replay{}, fmt.Errorf("xfrm: replay ESN state with %d bitmap words in %d bytes: %w", n, len(b), errShort)
	}
	r := Replay{
		OSeq: ne.Uint32(b[4:]), Seq: ne.Uint32(b[8:]), OSeqHi: ne.Uint32(b[12:]),
		SeqHi: ne.Uint32(b[16:]), Window: ne.Uint32(b[20:]), Bitmap: make([]uint32, n),
	}
	for i := range r.Bitmap {
		r.Bitmap[i] = ne.Uint32(b[sizeReplayESN+4*i:])
	}
	return r, nil
}

// encodeReplayESN writes struct xfrm_replay_state_esn.
func encodeReplayESN(r Replay) []byte {
	ne := binary.NativeEndian
	b := make([]byte, sizeReplayESN+4*len(r.Bitmap))
	ne.PutUint32(b, uint32(len(r.Bitmap)))
	ne.PutUint32(b[4:], r.OSeq)
	ne.PutUint32(b[8:], r.Seq)
	ne.PutUint32(b[12:], r.OSeqHi)
	ne.PutUint32(b[16:], r.SeqHi)
	ne.PutUint32(b[20:], r.Window)
	for i, w := range r.Bitmap {
		ne.PutUint32(b[sizeReplayESN+4*i:], w)
	}
	return b
}

// decodeReplayLegacy reads struct xfrm_replay_state {oseq, seq, bitmap}.
func decodeReplayLegacy(b []byte, window uint32) (Replay, error) {
	if len(b) < sizeReplay {
		return Replay{}, fmt.Errorf("xfrm: replay state of %d bytes: %w", len(b), errShort)
	}
	ne := binary.NativeEndian
	return Replay{OSeq: ne.Uint32(b), Seq: ne.Uint32(b[4:]), Bitmap: []uint32{ne.Uint32(b[8:])}, Window: window, Legacy: true}, nil
}

func encodeReplayLegacy(r Replay) []byte {
	ne := binary.NativeEndian
	b := make([]byte, sizeReplay)
	ne.PutUint32(b, r.OSeq)
	ne.PutUint32(b[4:], r.Seq)
	if len(r.Bitmap) > 0 {
		ne.PutUint32(b[8:], r.Bitmap[0])
	}
	return b
}

// DecodeSA reads an XFRM_MSG_NEWSA/UPDSA body (struct xfrm_usersa_info
// and its attributes), as a GETSA dump or an SA notification carries it.
func DecodeSA(b []byte) (SA, error) {
	if len(b) < sizeUsersaInfo {
		return SA{}, fmt.Errorf("xfrm: SA of %d bytes: %w", len(b), errShort)
	}
	ne := binary.NativeEndian
	var sa SA
	fam := ne.Uint16(b[offFamily:])
	var err error
	if sa.Dst, err = addrAt(b[offIDDaddr:], fam); err != nil {
		return SA{}, err
	}
	if sa.Src, err = addrAt(b[offSaddr:], fam); err != nil {
		return SA{}, err
	}
	sa.SPI = binary.BigEndian.Uint32(b[offIDSPI:])
	sa.Proto = b[offIDProto]
	sa.ReqID = ne.Uint32(b[offReqID:])
	sa.Mode = b[offMode]
	sa.ESN = b[offFlags]&stateESN != 0
	sa.Stats = Stats{ne.Uint32(b[offStats:]), ne.Uint32(b[offStats+4:]), ne.Uint32(b[offStats+8:])}
	sa.HasStats = true
	window := uint32(b[offRWindow])
	attrs, err := parseAttrs(b[sizeUsersaInfo:])
	if err != nil {
		return SA{}, err
	}
	var legacy []byte
	for _, a := range attrs {
		switch a.typ {
		case attrReplayESN:
			if sa.Replay, err = decodeReplayESN(a.data); err != nil {
				return SA{}, fmt.Errorf("SA %s: %w", sa.SAID, err)
			}
		case attrReplayVal:
			legacy = a.data
		case attrEncap:
			sa.Encap = true
		case attrMark:
			if len(a.data) >= 8 {
				sa.Mark = Mark{ne.Uint32(a.data), ne.Uint32(a.data[4:])}
			}
		case attrIfID:
			if len(a.data) >= 4 {
				sa.IfID = ne.Uint32(a.data)
			}
		}
	}
	// The kernel sends XFRMA_REPLAY_ESN_VAL when the SA has one (ESN, or
	// a window above 32), else XFRMA_REPLAY_VAL.
	if sa.Replay.Bitmap == nil && legacy != nil {
		if sa.Replay, err = decodeReplayLegacy(legacy, window); err != nil {
			return SA{}, fmt.Errorf("SA %s: %w", sa.SAID, err)
		}
	}
	return sa, nil
}

// DecodeDelSA reads an XFRM_MSG_DELSA notification: struct
// xfrm_usersa_id, then the whole SA in XFRMA_SA (and the SA's other
// attributes beside it).
func DecodeDelSA(b []byte) (SA, error) {
	if len(b) < sizeUsersaID {
		return SA{}, fmt.Errorf("xfrm: deleted SA of %d bytes: %w", len(b), errShort)
	}
	attrs, err := parseAttrs(b[sizeUsersaID:])
	if err != nil {
		return SA{}, err
	}
	for _, a := range attrs {
		if a.typ == attrSA {
			full := append(append([]byte{}, a.data...), b[sizeUsersaID+4+((len(a.data)+3)&^3):]...)
			if len(a.data) == sizeUsersaInfo {
				return DecodeSA(full)
			}
		}
	}
	id, err := decodeUsersaID(b)
	return SA{SAID: id}, err
}

func decodeUsersaID(b []byte) (SAID, error) {
	ne := binary.NativeEndian
	fam := ne.Uint16(b[20:])
	dst, err := addrAt(b, fam)
	if err != nil {
		return SAID{}, err
	}
	return SAID{Dst: dst, SPI: binary.BigEndian.Uint32(b[16:]), Proto: b[22]}, nil
}

func encodeUsersaID(b []byte, id SAID) {
	fam := putAddr(b, id.Dst)
	binary.BigEndian.PutUint32(b[16:], id.SPI)
	binary.NativeEndian.PutUint16(b[20:], fam)
	b[22] = id.Proto
}

// EncodeGetAE is the body of an XFRM_MSG_GETAE request for id: struct
// xfrm_aevent_id (flags XFRM_AE_RVAL) and the SA's mark.
func EncodeGetAE(id SAID) []byte {
	b := make([]byte, sizeAeventID)
	encodeUsersaID(b, id)
	binary.NativeEndian.PutUint32(b[40:], AERVal)
	return appendMark(b, id.Mark)
}

func appendMark(b []byte, m Mark) []byte {
	if m == (Mark{}) {
		return b
	}
	var d [8]byte
	binary.NativeEndian.PutUint32(d[:], m.Value)
	binary.NativeEndian.PutUint32(d[4:], m.Mask)
	return appendAttr(b, attrMark, d[:])
}

// EncodeNewAE is the body of an XFRM_MSG_NEWAE request (sent with
// NLM_F_REPLACE) that sets the replay state of SA id to r: XFRMA_REPLAY_ESN_VAL,
// or XFRMA_REPLAY_VAL for a legacy state. The kernel requires an ESN
// state with the SA's own bmp_len (xfrm_replay_verify_len).
func EncodeNewAE(id SAID, r Replay) []byte {
	b := make([]byte, sizeAeventID)
	encodeUsersaID(b, id)
	binary.NativeEndian.PutUint32(b[40:], AERVal)
	if r.Legacy {
		b = appendAttr(b, attrReplayVal, encodeReplayLegacy(r))
	} else {
		b = appendAttr(b, attrReplayESN, encodeReplayESN(r))
	}
	return appendMark(b, id.Mark)
}

// DecodeAE reads an XFRM_MSG_NEWAE (a notification, or the answer to a GETAE).
func DecodeAE(b []byte) (AEvent, error) {
	if len(b) < sizeAeventID {
		return AEvent{}, fmt.Errorf("xfrm: aevent of %d bytes: %w", len(b), errShort)
	}
	ne := binary.NativeEndian
	id, err := decodeUsersaID(b)
	if err != nil {
		return AEvent{}, err
	}
	ev := AEvent{SAID: id, Flags: ne.Uint32(b[40:]), ReqID: ne.Uint32(b[44:])}
	ev.Src, _ = addrAt(b[24:], ne.Uint16(b[20:]))
	attrs, err := parseAttrs(b[sizeAeventID:])
	if err != nil {
		return AEvent{}, err
	}
	for _, a := range attrs {
		switch a.typ {
		case attrReplayESN:
			if ev.Replay, err = decodeReplayESN(a.data); err != nil {
				return AEvent{}, fmt.Errorf("aevent %s: %w", id, err)
			}
			ev.HasReplay = true
		case attrReplayVal:
			if !ev.HasReplay {
				// The window is the SA's (xfrm_usersa_info), not in the aevent.
				if ev.Replay, err = decodeReplayLegacy(a.data, 0); err != nil {
					return AEvent{}, fmt.Errorf("aevent %s: %w", id, err)
				}
				ev.HasReplay = true
			}
		case attrReplayThresh:
			if len(a.data) >= 4 {
				ev.ReplayThresh = ne.Uint32(a.data)
			}
		case attrETimerThresh:
			if len(a.data) >= 4 {
				ev.ETimerThresh = ne.Uint32(a.data)
			}
		case attrMark:
			if len(a.data) >= 8 {
				ev.Mark = Mark{ne.Uint32(a.data), ne.Uint32(a.data[4:])}
			}
		}
	}
	return ev, nil
}
