package migrate

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// TestTemplateRewrite: the user-space rewrite of held frames matches what
// the stage does: MACs, TTL or hop limit one less, a valid IPv4 header
// checksum; frames it cannot handle are left for the program.
func TestTemplateRewrite(t *testing.T) {
	ser := func(ls ...gopacket.SerializableLayer) []byte {
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	eth := func(et layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: et}
	}
	macs := [12]byte{2, 0, 0, 0, 0xd, 0xd, 2, 0, 0, 0, 0xe, 0xe}
	for _, ttl := range []uint8{64, 2, 1, 255} {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: ttl, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(198, 51, 100, 7), DstIP: net.IPv4(10, 0, 0, 50), Id: 4242}
		u := &layers.UDP{SrcPort: 1, DstPort: 2}
		u.SetNetworkLayerForChecksum(ip)
		f := ser(eth(layers.EthernetTypeIPv4), ip, u, gopacket.Payload(make([]byte, 20)))
		tm := hopTemplate{ok: true, ether: unix.ETH_P_IP, macs: macs}
		ok := tm.rewrite(f)
		if ttl <= 1 {
			if ok {
				t.Errorf("ttl %d: rewritten, want left to the program (it passes the frame to the stack)", ttl)
			}
			continue
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		got := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		want := *got
		want.TTL = ttl - 1
		ref := ser(eth(layers.EthernetTypeIPv4), &want, gopacket.Payload(got.Payload))
		if !ok || got.TTL != ttl-1 || got.Checksum != gopacket.NewPacket(ref, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4).Checksum || [12]byte(f[:12]) != macs {
			t.Errorf("ttl %d: rewritten %v, ttl %d, checksum %#x; want ttl %d, the recomputed checksum, the template's MACs", ttl, ok, got.TTL, got.Checksum, ttl-1)
		}
	}
	ip6 := &layers.IPv6{Version: 6, HopLimit: 9, NextHeader: layers.IPProtocolUDP, SrcIP: net.ParseIP("2001:db8::7"), DstIP: net.ParseIP("2001:db8::50")}
	u := &layers.UDP{SrcPort: 1, DstPort: 2}
	u.SetNetworkLayerForChecksum(ip6)
	f := ser(eth(layers.EthernetTypeIPv6), ip6, u, gopacket.Payload(make([]byte, 20)))
	if (&hopTemplate{ok: true, ether: unix.ETH_P_IP, macs: macs}).rewrite(f) {
		t.Error("an IPv6 frame rewritten with an IPv4 template")
	}
	if !(&hopTemplate{ok: true, ether: unix.ETH_P_IPV6, macs: macs}).rewrite(f) || f[14+7] != 8 {
		t.Errorf("IPv6: hop limit %d, want 8", f[14+7])
	}
}
