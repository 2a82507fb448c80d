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
