package maps

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/dchest/siphash"
)

// HalfSipHash is HalfSipHash-2-4 with a 32-bit output (Aumasson and
// Bernstein) under the 8-byte key k: bpf/include/hsiphash.h's twin, for
// tests and tools that check the datapath's backend choices (FlowHash).
func HalfSipHash(k [8]byte, msg []byte) uint32 {
	k0, k1 := binary.LittleEndian.Uint32(k[:4]), binary.LittleEndian.Uint32(k[4:])
	v0, v1, v2, v3 := k0, k1, 0x6c796765^k0, 0x74656462^k1
	round := func() {
		v0 += v1
		v1 = bits.RotateLeft32(v1, 5)
		v1 ^= v0
		v0 = bits.RotateLeft32(v0, 16)
		v2 += v3
		v3 = bits.RotateLeft32(v3, 8)
		v3 ^= v2
		v0 += v3
		v3 = bits.RotateLeft32(v3, 7)
		v3 ^= v0
		v2 += v1
		v1 = bits.RotateLeft32(v1, 13)
		v1 ^= v2
		v2 = bits.RotateLeft32(v2, 16)
	}
	n := len(msg)
	for ; len(msg) >= 4; msg = msg[4:] {
		m := binary.LittleEndian.Uint32(msg)
		v3 ^= m
		round()
		round()
		v0 ^= m
	}
	b := uint32(n) << 24
	for i, c := range msg {
		b |= uint32(c) << (8 * i)
	}
	v3 ^= b
	round()
	round()
	v0 ^= b
	v2 ^= 0xff
	round()
	round()
	round()
	round()
	return v1 ^ v3
}

// SipHash is SipHash-2-4 with a 64-bit output (Aumasson and Bernstein)
// under the 16-byte key k: bpf/include/hsiphash.h's siphash_words, the
// cookie's MAC, for tests and tools that check the datapath's cookies.
func SipHash(k [16]byte, msg []byte) uint64 {
	return siphash.Hash(binary.LittleEndian.Uint64(k[:8]), binary.LittleEndian.Uint64(k[8:]), msg)
}

// CookieMSS are the MSS values a cookie can carry (bpf/include/cookie.h).
var CookieMSS = [4]uint16{536, 1220, 1440, 1460}

// CookieWSNone is the window scale a cookie carries for "none".
const CookieWSNone = 15

// CookieOpts are the options a cookie carries.
type CookieOpts struct {
	MSS    uint16 // the client's MSS (0: none)
	WScale uint8  // 0..14; CookieWSNone: no window scaling; above it: 14
	SACK   bool
}

// CookieFlow is what a cookie's MAC covers besides the options.
type CookieFlow struct {
	Client, VIP         netip.Addr
	ClientPort, VIPPort uint16
	ClientISN           uint32
}

func mssIndex(mss uint16) uint32 {
	i := uint32(0)
	for j, m := range CookieMSS {
		if mss >= m {
			i = uint32(j)
		}
	}
	return i
}

// flowMAC is bpf/include/cookie.h's flow_mac (HalfSipHash-2-4): an IPv4
// flow (the client IPv4 or IPv4-mapped) hashes its 4-byte addresses, 20
// bytes in all; IPv6 its 16-byte addresses, 44 bytes.
func flowMAC(key [8]byte, f CookieFlow, data uint32) uint32 {
	msg := flowBytes(f, 44)
	msg = binary.LittleEndian.AppendUint32(msg, data)
	return HalfSipHash(key, msg)
}

// flowBytes is the flow as the MACs read it: the addresses (4 bytes each
// for IPv4), the ports and the client's ISN, big-endian.
func flowBytes(f CookieFlow, size int) []byte {
	msg := make([]byte, 0, size)
	c, v := f.Client.As16(), f.VIP.As16()
	if f.Client.Unmap().Is4() {
		msg = append(msg, c[12:]...)
		msg = append(msg, v[12:]...)
	} else {
		msg = append(msg, c[:]...)
		msg = append(msg, v[:]...)
	}
	msg = binary.BigEndian.AppendUint16(msg, f.ClientPort)
	msg = binary.BigEndian.AppendUint16(msg, f.VIPPort)
	return binary.BigEndian.AppendUint32(msg, f.ClientISN)
}

// cookieMAC is bpf/include/cookie.h's cookie_mac: SipHash-2-4 under the
// 8-byte key twice, over the flow and the cookie's data byte (17 bytes
// for IPv4, 41 for IPv6), its low 32 bits.
func cookieMAC(key [8]byte, f CookieFlow, data uint32) uint32 {
	var k [16]byte
	copy(k[:8], key[:])
	copy(k[8:], key[:])
	return uint32(SipHash(k, append(flowBytes(f, 41), byte(data))))
}

// Cookie is the ISN the datapath answers the SYN of f with, made with the
// key in slot.
func Cookie(key [8]byte, slot uint32, f CookieFlow, o CookieOpts) uint32 {
	ws := uint32(o.WScale)
	if ws > CookieWSNone {
		ws = 14 // RFC 7323: a larger shift means 14
	}
	data := (slot&1)<<7 | mssIndex(o.MSS)<<4 | ws
	if o.SACK {
		data |= 1 << 6
	}
	return cookieMAC(key, f, data)&0xffffff00 | data
}

// CheckCookie validates cookie for f under keys (by slot) and decodes it.
func CheckCookie(keys [2][8]byte, f CookieFlow, cookie uint32) (CookieOpts, bool) {
	data := cookie & 0xff
	if (cookieMAC(keys[data>>7], f, data)^cookie)&0xffffff00 != 0 {
		return CookieOpts{}, false
	}
	return CookieOpts{MSS: CookieMSS[(data>>4)&3], WScale: uint8(data & 0xf), SACK: data&(1<<6) != 0}, true
}
