package maps

import (
	"net/netip"
	"strings"
	"testing"
	"unsafe"
)

func TestKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"192.0.2.1", "2001:db8::1", "::", "0.0.0.0", "255.255.255.255"} {
		a := netip.MustParseAddr(s)
		if got := AddrOf(KeyOf(a)); got != a {
			t.Errorf("%s -> %s", a, got)
		}
	}
	// IPv4 keys are IPv4-mapped, the form the parser builds.
	k := KeyOf(netip.MustParseAddr("10.0.0.1"))
	want := [16]byte{10: 0xff, 11: 0xff, 12: 10, 15: 1}
	if k.Addr != want {
		t.Errorf("ipv4 key %v, want %v", k.Addr, want)
	}
	if KeyOf(netip.MustParseAddr("::ffff:10.0.0.1")) != k {
		t.Error("a mapped address must give the same key as plain IPv4")
	}
}

func TestAttachNames(t *testing.T) {
	// A VLAN's name has a '.', which bpffs refuses in a pin's name.
	if name := AttachName("tcx-egress", "eth0.100"); strings.Contains(name, ".") {
		t.Errorf("AttachName gives %q: bpffs refuses a '.'", name)
	}
	kind, ifname, err := SplitAttachName(AttachName("tcx-egress", "eth0.100"))
	if err != nil || kind != "tcx-egress" || ifname != "eth0.100" {
		t.Errorf("%q %q %v", kind, ifname, err)
	}
	for _, bad := range []string{"xdp", "@eth0", "xdp@", "tmp-xdp_vipgate"} {
		if _, _, err := SplitAttachName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestFormatTable(t *testing.T) {
	tb := &Table{Columns: []string{"vip", "owned"}}
	tb.add(map[string]any{"vip": "2001:db8::100", "owned": true})
	tb.add(map[string]any{"vip": "10.0.0.1", "owned": false})
	got := FormatTable(tb)
	want := "vip            owned\n2001:db8::100  true\n10.0.0.1       false\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if !strings.Contains(FormatTable(&Table{Columns: []string{"a"}}), "(no entries)") {
		t.Error("empty table not said")
	}
}

// The ring decoder reads struct sync_rec by hand: its layout must be the
// one bpf2go generated from the C struct.
func TestSyncRecLayout(t *testing.T) {
	var r SyncRec
	if got := int(unsafe.Sizeof(r)); got != recSize {
		t.Fatalf("struct sync_rec is %d bytes, the decoder reads %d", got, recSize)
	}
	for name, off := range map[string]uintptr{"map_id": unsafe.Offsetof(r.MapId), "op": unsafe.Offsetof(r.Op), "key_len": unsafe.Offsetof(r.KeyLen), "key": unsafe.Offsetof(r.Key)} {
		want := map[string]uintptr{"map_id": 0, "op": 4, "key_len": 8, "key": 12}[name]
		if off != want {
			t.Errorf("%s at %d, the decoder reads it at %d", name, off, want)
		}
	}
}

// The reference HalfSipHash-2-4-32 vectors (github.com/veorq/SipHash,
// vectors_hsip32): key 00..07, message 00..i-1.
func TestHalfSipHashVectors(t *testing.T) {
	want := []uint32{0x5b9f35a9, 0xb85a4727, 0x03a662fa, 0x04e7fe8a, 0x89466e2a, 0x69b6fac5, 0x23fc6358, 0xc563cf8b,
		0x8f84b8d0, 0x79e706f8, 0x3479b094, 0x50300808, 0x2f87f057, 0xff63e677, 0x7cf8ffd6, 0x972bfe74, 0x84acb5d9}
	var key [8]byte
	msg := make([]byte, len(want))
	for i := range key {
		key[i] = byte(i)
	}
	for i := range msg {
		msg[i] = byte(i)
	}
	for i, w := range want {
		if got := HalfSipHash(key, msg[:i]); got != w {
			t.Errorf("%d bytes: %#08x, want %#08x", i, got, w)
		}
	}
}

// The reference SipHash-2-4 vectors (github.com/veorq/SipHash,
// vectors_sip64, as 64-bit little-endian values): key 00..0f, message
// 00..i-1, for the lengths around the cookie's 17 (IPv4) and 41 (IPv6).
func TestSipHashVectors(t *testing.T) {
	want := map[int]uint64{0: 0x726fdb47dd0e0e31, 1: 0x74f839c593dc67fd, 7: 0xab0200f58b01d137, 8: 0x93f5f5799a932462,
		15: 0xa129ca6149be45e5, 16: 0x3f2acc7f57c29bdb, 17: 0x699ae9f52cbe4794, 40: 0x0e3ea96b5304a7d0, 41: 0xad0c42d6fc585992, 42: 0x187306c89bc215a9}
	var key [16]byte
	msg := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	for i := range msg {
		msg[i] = byte(i)
	}
	for n, w := range want {
		if got := SipHash(key, msg[:n]); got != w {
			t.Errorf("%d bytes: %#016x, want %#016x", n, got, w)
		}
	}
}

func TestCookieRoundTrip(t *testing.T) {
	keys := [2][8]byte{{1, 2, 3, 4, 5, 6, 7, 8}, {9, 10, 11, 12, 13, 14, 15, 16}}
	f := CookieFlow{Client: netip.MustParseAddr("198.51.100.7"), VIP: netip.MustParseAddr("10.0.0.100"), ClientPort: 40000, VIPPort: 80, ClientISN: 0xfffffff0}
	for _, c := range []struct {
		in, want CookieOpts
	}{
		{CookieOpts{MSS: 1460, WScale: 7, SACK: true}, CookieOpts{MSS: 1460, WScale: 7, SACK: true}},
		{CookieOpts{MSS: 1400, WScale: CookieWSNone}, CookieOpts{MSS: 1220, WScale: CookieWSNone}},
		{CookieOpts{MSS: 0, WScale: 14}, CookieOpts{MSS: 536, WScale: 14}},
		{CookieOpts{MSS: 9000, WScale: 20, SACK: true}, CookieOpts{MSS: 1460, WScale: 14, SACK: true}},
	} {
		for slot := range uint32(2) {
			ck := Cookie(keys[slot], slot, f, c.in)
			got, ok := CheckCookie(keys, f, ck)
			if !ok || got != c.want {
				t.Errorf("%+v slot %d: %+v %v, want %+v", c.in, slot, got, ok, c.want)
			}
			g := f
			g.ClientPort++
			if _, ok := CheckCookie(keys, g, ck); ok {
				t.Errorf("a cookie validated for another flow")
			}
			if _, ok := CheckCookie(keys, f, ck^0x100); ok {
				t.Errorf("a forged cookie validated")
			}
		}
	}
}
