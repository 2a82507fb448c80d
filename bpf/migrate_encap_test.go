package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/fixture"
)

// Routed locations: hosts beyond the router D on the fixture's segment.
var (
	routed4  = netip.MustParseAddr("192.0.2.7")
	routed6  = netip.MustParseAddr("2001:db8:7::7")
	encSrc4  = netip.MustParseAddr("10.98.1.1") // the gateway's address on the segment
	encSrc6  = netip.MustParseAddr("fd98:1::1")
	encapLoc = uint32(bpf.MigrateMigEncapMIG_ENCAP_IPIP)
)

// newEncapFixture is the migrate fixture with this gateway's encap
// sources set (when src is true) and routes to the routed hosts via D.
func newEncapFixture(t *testing.T, src bool) *migFixture {
	t.Helper()
	f := newMigFixtureWith(t, func(spec *ebpf.CollectionSpec) error {
		if !src {
			return nil
		}
		if err := spec.Variables[bpf.MigrateVarCfgEncapSrc4].Set(encSrc4.As4()); err != nil {
			return err
		}
		return spec.Variables[bpf.MigrateVarCfgEncapSrc6].Set(encSrc6.As16())
	})
	for _, r := range [][]string{{"192.0.2.0/24", "via", hopD4.String()}, {"2001:db8:7::/48", "via", hopD6.String()}} {
		if err := f.gw.IP(append([]string{"route", "add"}, r...)...); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestMigrateEncap: the stage and the flush program send an endpoint
// whose location is routed (IP-in-IP) as an outer IP header to the host,
// from this gateway's source, to the FIB's next hop towards it (D here),
// the inner packet intact but for its TTL; every family pair; without a
// source for the host's family the packet is dropped and counted.
func TestMigrateEncap(t *testing.T) {
	f := newEncapFixture(t, true)
	for _, tc := range []struct {
		name  string
		ep    netip.Addr
		frame func(testing.TB, netip.Addr) []byte
		host  netip.Addr
		state uint32 // 0: the endpoint's location; else a migration to the host
		prog  string // "stage" or "flush"
	}{
		{"v4 in v4", migEP4, udp4to, routed4, 0, "stage"},
		{"v6 in v4", migEP6, udp6to, routed4, 0, "stage"},
		{"v4 in v6", migEP4, udp4to, routed6, 0, "stage"},
		{"v6 in v6", migEP6, udp6to, routed6, 0, "stage"},
		{"switched to a routed host", migEP4, udp4to, routed4, uint32(bpf.MigrateMigStateIdMIG_SWITCHED), "stage"},
		{"flushed to a routed host", migEP4, udp4to, routed4, uint32(bpf.MigrateMigStateIdMIG_SWITCHED), "flush"},
		{"flushed v6 to a routed v6 host", migEP6, udp6to, routed6, uint32(bpf.MigrateMigStateIdMIG_SWITCHED), "flush"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.gw.Do(func() error {
				_ = f.mm.DelMigration(tc.ep)
				prog := f.objs.XdpMigrate
				if tc.prog == "flush" {
					prog = f.objs.XdpMigFlush
				}
				if tc.state == 0 {
					if err := f.mm.SetEndpointLoc(tc.ep, maps.MigLocEncap(tc.host, encapLoc)); err != nil {
						return err
					}
				} else {
					if err := f.mm.SetEndpoint(tc.ep, hopS4); err != nil {
						return err
					}
					v := &maps.MigVal{State: tc.state, From: maps.MigLocOf(hopS4), To: maps.MigLocEncap(tc.host, encapLoc)}
					if err := f.mm.PutMigration(tc.ep, v, false); err != nil {
						return err
					}
				}
				in := tc.frame(t, tc.ep)
				verdict, out, err := fixture.Run(prog, in)
				if err != nil {
					return err
				}
				if verdict != "XDP_REDIRECT" {
					t.Fatalf("verdict %s, want XDP_REDIRECT", verdict)
				}
				checkEncap(t, in, out, tc.host)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("no source for the family", func(t *testing.T) {
		g := newEncapFixture(t, false)
		err := g.gw.Do(func() error {
			if err := g.mm.SetEndpointLoc(migEP4, maps.MigLocEncap(routed4, encapLoc)); err != nil {
				return err
			}
			verdict, _, err := fixture.Run(g.objs.XdpMigrate, udp4to(t, migEP4))
			if err != nil {
				return err
			}
			st, err := g.mm.MigStats()
			if err != nil {
				return err
			}
			if verdict != "XDP_DROP" || st["no_route"] != 1 {
				t.Errorf("verdict %s, no_route %d; want XDP_DROP, 1", verdict, st["no_route"])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// checkEncap: out is in with an outer IP header to host pushed between
// the Ethernet header (MACs towards D) and the packet, whose TTL (hop
// limit) went down by one.
func checkEncap(t *testing.T, in, out []byte, host netip.Addr) {
	t.Helper()
	if !bytes.Equal(out[0:6], macD) {
		t.Errorf("dst MAC %s, want D's %s (the router towards %s)", net.HardwareAddr(out[0:6]), macD, host)
	}
	innerIn := in[14:]
	outerLen := 20
	wantEther := layers.EthernetTypeIPv4
	if host.Is6() {
		outerLen, wantEther = 40, layers.EthernetTypeIPv6
	}
	if len(out) != len(in)+outerLen {
		t.Fatalf("out %d bytes, want %d (the frame and a %d-byte outer header)", len(out), len(in)+outerLen, outerLen)
	}
	if et := layers.EthernetType(binary.BigEndian.Uint16(out[12:])); et != wantEther {
		t.Errorf("ethertype %s, want %s", et, wantEther)
	}
	innerProto := layers.IPProtocolIPv4
	if innerIn[0]>>4 == 6 {
		innerProto = layers.IPProtocolIPv6
	}
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	if host.Is4() {
		ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok {
			t.Fatalf("no outer IPv4 header: %v", pkt)
		}
		if netip.AddrFrom4([4]byte(ip.SrcIP.To4())) != encSrc4 || netip.AddrFrom4([4]byte(ip.DstIP.To4())) != host ||
			ip.Protocol != innerProto || ip.TTL != 64 || int(ip.Length) != len(innerIn)+20 {
			t.Errorf("outer %s -> %s proto %s ttl %d len %d; want %s -> %s proto %s ttl 64 len %d",
				ip.SrcIP, ip.DstIP, ip.Protocol, ip.TTL, ip.Length, encSrc4, host, innerProto, len(innerIn)+20)
		}
		// The header's checksum: the ones'-complement sum over it is 0xffff.
		var sum uint32
		for i := 14; i < 34; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(out[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			t.Errorf("outer IPv4 checksum wrong (sum %#x)", sum)
		}
	} else {
		ip, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		if !ok {
			t.Fatalf("no outer IPv6 header: %v", pkt)
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP)
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		if src != encSrc6 || dst != host || ip.NextHeader != innerProto || ip.HopLimit != 64 || int(ip.Length) != len(innerIn) {
			t.Errorf("outer %s -> %s next %s hop limit %d len %d; want %s -> %s next %s 64 len %d",
				src, dst, ip.NextHeader, ip.HopLimit, ip.Length, encSrc6, host, innerProto, len(innerIn))
		}
	}
	inner := slicesClone(out[14+outerLen:])
	want := slicesClone(innerIn)
	// The inner TTL (hop limit) went down by one; IPv4's checksum with it.
	if innerProto == layers.IPProtocolIPv4 {
		if inner[8] != want[8]-1 {
			t.Errorf("inner TTL %d, want %d", inner[8], want[8]-1)
		}
		inner[8], inner[10], inner[11] = want[8], want[10], want[11]
	} else {
		if inner[7] != want[7]-1 {
			t.Errorf("inner hop limit %d, want %d", inner[7], want[7]-1)
		}
		inner[7] = want[7]
	}
	if !bytes.Equal(inner, want) {
		t.Errorf("inner packet changed beyond its TTL:\n got %x\nwant %x", inner, want)
	}
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

// BenchmarkMigrateEncap: what a routed location costs the stage against a
// segment hop: the same endpoint forwarded with a MAC rewrite, and with
// an IP-in-IP header pushed (IPv4 and IPv6 outer). One run per call (a
// repeated run would push its header again into the same buffer), many
// rotated rounds, medians; each figure includes the test run's own
// per-call overhead, the same for all.
func BenchmarkMigrateEncap(b *testing.B) {
	f := newMigFixtureWith(b, func(spec *ebpf.CollectionSpec) error {
		if err := spec.Variables[bpf.MigrateVarCfgEncapSrc4].Set(encSrc4.As4()); err != nil {
			return err
		}
		return spec.Variables[bpf.MigrateVarCfgEncapSrc6].Set(encSrc6.As16())
	})
	for _, r := range [][]string{{"192.0.2.0/24", "via", hopD4.String()}, {"2001:db8:7::/48", "via", hopD6.String()}} {
		if err := f.gw.IP(append([]string{"route", "add"}, r...)...); err != nil {
			b.Fatal(err)
		}
	}
	seg, r4, r6 := mustAddr("10.98.0.60"), mustAddr("10.98.0.61"), mustAddr("10.98.0.62")
	if err := f.gw.Do(func() error {
		if err := f.mm.SetEndpoint(seg, hopS4); err != nil {
			return err
		}
		if err := f.mm.SetEndpointLoc(r4, maps.MigLocEncap(routed4, encapLoc)); err != nil {
			return err
		}
		return f.mm.SetEndpointLoc(r6, maps.MigLocEncap(routed6, encapLoc))
	}); err != nil {
		b.Fatal(err)
	}
	type run struct {
		name  string
		frame []byte
		ns    []float64
	}
	runs := []*run{
		{name: "segment hop (MACs rewritten)", frame: udp4to(b, seg)},
		{name: "routed, IP-in-IP, IPv4 outer (+20 bytes)", frame: udp4to(b, r4)},
		{name: "routed, IP-in-IP, IPv6 outer (+40 bytes)", frame: udp4to(b, r6)},
	}
	const rounds = 2001
	for b.Loop() {
		for r := range rounds {
			for i := range runs {
				x := runs[(i+r)%len(runs)]
				err := f.gw.Do(func() error {
					ret, d, err := f.objs.XdpMigrate.Benchmark(x.frame, 1, nil)
					if err != nil {
						return err
					}
					if ret != 4 {
						return fmt.Errorf("%s: verdict %d, want XDP_REDIRECT", x.name, ret)
					}
					x.ns = append(x.ns, float64(d.Nanoseconds()))
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	fmt.Printf("migrate stage to a location, ns/packet (medians of %d single runs, with the run's overhead):\n", rounds)
	for _, x := range runs {
		fmt.Printf("  %-44s %6.1f  (%+.1f over the segment hop)\n", x.name, median(x.ns), median(x.ns)-median(runs[0].ns))
	}
	if _, err := bench.Record(bench.Result{Name: "migrate stage, endpoint at a routed location (IP-in-IP, IPv4 outer), prog.Run single runs", Unit: "ns/pkt",
		Value: median(runs[1].ns), Anchor: "the same endpoint at a segment hop, same runs", AnchorValue: median(runs[0].ns), Goal: "record only"}); err != nil {
		b.Fatal(err)
	}
}
