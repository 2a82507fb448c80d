package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/tools/fixture"
	"github.com/tandem-net/tandem/tools/testenv"
)

// loadCsumtest loads the test program that rewrites destination address
// and port, with the new values as load-time constants.
func loadCsumtest(t *testing.T, d4, d6 netip.Addr, port uint16) *ebpf.Program {
	t.Helper()
	testenv.RequireRoot(t)
	spec, err := bpf.LoadCsumtest()
	if err != nil {
		t.Fatal(err)
	}
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], port)
	for name, v := range map[string]any{bpf.CsumtestVarCfgDaddr4: d4.As4(), bpf.CsumtestVarCfgDaddr6: d6.As16(), bpf.CsumtestVarCfgDport: p} {
		if err := spec.Variables[name].Set(v); err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
	}
	var objs bpf.CsumtestObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return objs.XdpCsumRewrite
}

type csumFrame struct {
	v6, udp, vlan, opts, zeroUDP bool
	src, dst                     netip.Addr
	sport, dport                 uint16
	seq, ack                     uint32
	payload                      []byte
}

func (c csumFrame) String() string {
	return fmt.Sprintf("v6=%v udp=%v vlan=%v opts=%v zeroudp=%v %s:%d>%s:%d len=%d", c.v6, c.udp, c.vlan, c.opts, c.zeroUDP, c.src, c.sport, c.dst, c.dport, len(c.payload))
}

// build serializes the frame with full checksums.
func (c csumFrame) build(t *testing.T) []byte {
	var ls []gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	et := layers.EthernetTypeIPv4
	if c.v6 {
		et = layers.EthernetTypeIPv6
	}
	if c.vlan {
		ls = append(ls, eth(layers.EthernetTypeDot1Q), &layers.Dot1Q{VLANIdentifier: 7, Type: et})
	} else {
		ls = append(ls, eth(et))
	}
	proto := layers.IPProtocolTCP
	if c.udp {
		proto = layers.IPProtocolUDP
	}
	if c.v6 {
		ip := ip6(c.src, c.dst, proto)
		ls, nl = append(ls, ip), ip
	} else {
		ip := ip4(c.src, c.dst, proto)
		if c.opts {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}
		}
		ls, nl = append(ls, ip), ip
	}
	if c.udp {
		u := &layers.UDP{SrcPort: layers.UDPPort(c.sport), DstPort: layers.UDPPort(c.dport)}
		u.SetNetworkLayerForChecksum(nl)
		ls = append(ls, u)
	} else {
		tc := &layers.TCP{SrcPort: layers.TCPPort(c.sport), DstPort: layers.TCPPort(c.dport), Seq: c.seq, Ack: c.ack, ACK: true, Window: 512}
		tc.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tc)
	}
	b := serialize(t, append(ls, gopacket.Payload(c.payload))...)
	if c.zeroUDP {
		off := 14 + 20
		if c.vlan {
			off += 4
		}
		if c.opts {
			off += 4
		}
		binary.BigEndian.PutUint16(b[off+6:], 0)
	}
	return b
}

func randAddr(v6 bool) netip.Addr {
	if v6 {
		var a [16]byte
		for i := range a {
			a[i] = byte(rand.IntN(256))
		}
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom4([4]byte{byte(rand.IntN(256)), byte(rand.IntN(256)), byte(rand.IntN(256)), byte(rand.IntN(256))})
}

// TestIncrementalChecksums: rewriting addresses and ports with csum.h's
// incremental updates gives exactly the checksums a full recomputation
// gives, over random addresses, ports and payloads (so every carry and
// the 0x0000/0xffff corner cases get their turn), for TCP and UDP, IPv4
// (with and without options, VLAN-tagged) and IPv6, and a UDP/IPv4 packet
// without a checksum keeps none.
func TestIncrementalChecksums(t *testing.T) {
	for set := 0; set < 4; set++ {
		d4, d6 := randAddr(false), randAddr(true)
		port := uint16(rand.IntN(65536))
		if set == 0 {
			d4, d6, port = netip.MustParseAddr("255.255.255.255"), netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 0xffff
		}
		prog := loadCsumtest(t, d4, d6, port)
		for i := 0; i < 300; i++ {
			c := csumFrame{v6: rand.IntN(2) == 0, udp: rand.IntN(2) == 0, vlan: rand.IntN(4) == 0,
				sport: uint16(rand.IntN(65536)), dport: uint16(rand.IntN(65536)), seq: rand.Uint32(), ack: rand.Uint32(), payload: make([]byte, rand.IntN(300))}
			for j := range c.payload {
				c.payload[j] = byte(rand.IntN(256))
			}
			c.opts = !c.v6 && rand.IntN(4) == 0
			c.zeroUDP = c.udp && !c.v6 && rand.IntN(8) == 0
			c.src, c.dst = randAddr(c.v6), randAddr(c.v6)
			in := c.build(t)
			verdict, out, err := fixture.Run(prog, in)
			if err != nil || verdict != "XDP_PASS" {
				t.Fatalf("%s: %s %v", c, verdict, err)
			}
			want := c
			want.dport = port
			want.dst = d4
			if c.v6 {
				want.dst = d6
			}
			exp := want.build(t)
			if !bytes.Equal(out, exp) {
				t.Fatalf("%s (new dst %s:%d):\n got  %x\n want %x", c, want.dst, port, out, exp)
			}
		}
	}
}
