package migrate

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

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

// TestSendBatchEgressFull: the flush's sendmmsg meets a full egress
// (ENOBUFS, the first unsent frame dropped): a slow egress that takes one
// frame between two refusals gets every frame, once, in order, however
// long the batch takes in all; one that takes nothing fails after the
// bound, naming it.
func TestSendBatchEgressFull(t *testing.T) {
	saved, savedMax := sendmmsg, sendFullMax
	t.Cleanup(func() { sendmmsg, sendFullMax = saved, savedMax })
	sendFullMax = 5 * time.Millisecond
	for _, tc := range []struct {
		name     string
		progress bool
	}{{"slow egress", true}, {"stuck egress", false}} {
		t.Run(tc.name, func(t *testing.T) {
			var got []byte
			calls := 0
			sendmmsg = func(fd int, msgs []mmsghdr) (int, unix.Errno) {
				calls++
				if !tc.progress || calls%2 == 1 {
					return 0, unix.ENOBUFS
				}
				got = append(got, *msgs[0].hdr.Iov.Base) // one frame taken
				return 1, 0
			}
			l := &Local{pkt: -1}
			tmpl := &hopTemplate{ok: true}
			var want []byte
			for i := range sendBatchMax {
				frame := make([]byte, 64)
				frame[0] = byte(i)
				want = append(want, byte(i))
				if err := l.add(tmpl, frame); err != nil {
					t.Fatal(err)
				}
			}
			err := l.sendBatch()
			if !tc.progress {
				if err == nil || !strings.Contains(err.Error(), "took nothing") {
					t.Fatalf("a stuck egress: %v, want the bound's error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("a slow egress that keeps taking frames: %v (%d refusals)", err, l.sendFull)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("frames sent %v, want %v (all, once, in order)", got, want)
			}
		})
	}
}
