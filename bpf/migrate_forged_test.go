package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/fixture"
)

// ipv4Sum is the checksum an IPv4 header of hlen bytes should carry.
func ipv4Sum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		if i == 10 {
			continue
		}
		s += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// TestMigrateForgedPackets sends forged and unusual frames to an endpoint,
// not moving and in a blackout: each is forwarded to the right hop with a
// correct header (options, fragments), passed to the stack (expiring TTL,
// truncated or inconsistent headers) or held, never forwarded wrong, and
// a frame the stage cannot parse is never held.
func TestMigrateForgedPackets(t *testing.T) {
	f := newMigFixture(t)
	base4 := func() []byte { return udp4to(t, migEP4) }
	mut4 := func(fn func(b []byte) []byte) []byte {
		b := fn(base4())
		return b
	}
	fix4 := func(b []byte) []byte {
		h := b[14 : 14+int(b[14]&0xf)*4]
		binary.BigEndian.PutUint16(h[10:], ipv4Sum(h))
		return b
	}
	withOpts := func() []byte {
		ip := ip4(client4, migEP4, layers.IPProtocolUDP)
		ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		return serialize(t, eth(layers.EthernetTypeIPv4), ip, udp(ip), payload)
	}
	base6 := func() []byte { return udp6to(t, migEP6) }
	for _, tc := range []struct {
		name  string
		frame []byte
		// normal: the verdict with the endpoint not moving; held: whether
		// the blackout holds it (else the same verdict as normal).
		normal string
		held   bool
	}{
		{"v4 well formed", base4(), "XDP_REDIRECT", true},
		{"v4 options", withOpts(), "XDP_REDIRECT", true},
		{"v4 non-first fragment", mut4(func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+6:], 100); return fix4(b) }), "XDP_REDIRECT", true},
		{"v4 first fragment", mut4(func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+6:], 0x2000); return fix4(b) }), "XDP_REDIRECT", true},
		{"v4 TTL 1", mut4(func(b []byte) []byte { b[14+8] = 1; return fix4(b) }), "XDP_PASS", true},
		{"v4 TTL 0", mut4(func(b []byte) []byte { b[14+8] = 0; return fix4(b) }), "XDP_PASS", true},
		{"v4 IHL 4", mut4(func(b []byte) []byte { b[14] = 0x44; return b }), "XDP_PASS", false},
		{"v4 IHL past the frame", mut4(func(b []byte) []byte { b[14] = 0x4f; return b[:14+40] }), "XDP_PASS", false},
		{"v4 version 6 in an IPv4 frame", mut4(func(b []byte) []byte { b[14] = 0x65; return b }), "XDP_PASS", false},
		{"v4 header cut", mut4(func(b []byte) []byte { return b[:14+12] }), "XDP_PASS", false},
		{"v4 total length past the frame", mut4(func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+2:], 1400); return fix4(b) }), "XDP_PASS", false},
		{"v4 total length under the header", mut4(func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+2:], 12); return fix4(b) }), "XDP_PASS", false},
		{"v6 well formed", base6(), "XDP_REDIRECT", true},
		{"v6 hop limit 1", func() []byte { b := base6(); b[14+7] = 1; return b }(), "XDP_PASS", true},
		{"v6 header cut", base6()[:14+30], "XDP_PASS", false},
		{"v6 payload length past the frame", func() []byte { b := base6(); binary.BigEndian.PutUint16(b[14+4:], 1400); return b }(), "XDP_PASS", false},
		{"VLAN tagged", func() []byte {
			b := base4()
			out := append(append(append([]byte{}, b[:12]...), 0x81, 0x00, 0x00, 0x07), b[12:]...)
			return out
		}(), "XDP_PASS", false},
	} {
		for _, blackout := range []bool{false, true} {
			name := tc.name + "/normal"
			if blackout {
				name = tc.name + "/blackout"
			}
			t.Run(name, func(t *testing.T) {
				err := f.gw.Do(func() error {
					for _, ep := range []struct{ ep, s, d netipAddr }{{migEP4, hopS4, hopD4}, {migEP6, hopS6, hopD6}} {
						if err := f.mm.SetEndpoint(ep.ep, ep.s); err != nil {
							return err
						}
						_ = f.mm.DelMigration(ep.ep)
						if blackout {
							v := &maps.MigVal{State: uint32(bpf.MigrateMigStateIdMIG_BLACKOUT), From: maps.MigLocOf(ep.s), To: maps.MigLocOf(ep.d)}
							if err := f.mm.PutMigration(ep.ep, v, true); err != nil {
								return err
							}
						}
					}
					in := append([]byte(nil), tc.frame...)
					verdict, out, err := fixture.Run(f.objs.XdpMigrate, in)
					if err != nil {
						return err
					}
					want := tc.normal
					if blackout && tc.held {
						want = "XDP_DROP"
					}
					if verdict != want {
						t.Errorf("verdict %s, want %s", verdict, want)
					}
					var tickets uint64
					for _, ep := range []netipAddr{migEP4, migEP6} {
						if m, err := f.mm.Migration(ep); err == nil && m != nil {
							tickets += m.Hold &^ maps.MigFlushing
						}
					}
					if wantT := map[bool]uint64{true: 1}[blackout && tc.held]; tickets != wantT {
						t.Errorf("held %d, want %d", tickets, wantT)
					}
					switch verdict {
					case "XDP_PASS":
						if !bytes.Equal(out[:len(tc.frame)], tc.frame) {
							t.Errorf("a frame passed to the stack was changed")
						}
					case "XDP_REDIRECT":
						if !bytes.Equal(out[0:6], macS) {
							t.Errorf("dst MAC %s, want S's %s", net.HardwareAddr(out[0:6]), macS)
						}
						if out[12] == 0x08 && out[13] == 0x00 {
							h := out[14 : 14+int(out[14]&0xf)*4]
							if got, want := binary.BigEndian.Uint16(h[10:]), ipv4Sum(h); got != want {
								t.Errorf("IPv4 checksum %#04x after the rewrite, want %#04x", got, want)
							}
							if h[8] != tc.frame[14+8]-1 {
								t.Errorf("TTL %d, want %d", h[8], tc.frame[14+8]-1)
							}
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
