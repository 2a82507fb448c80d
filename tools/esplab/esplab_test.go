package esplab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

func frame4(proto byte, payload []byte) []byte {
	f := make([]byte, 14+20)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	f[14] = 0x45
	f[23] = proto
	return append(f, payload...)
}

// TestESPAt: the frame parser finds ESP over IP and in UDP 4500, and
// nothing else (IKE's marker, other UDP, fragments, short headers).
func TestESPAt(t *testing.T) {
	esp := []byte{0xc0, 0, 1, 0, 0, 0, 0, 7, 1, 2, 3, 4}
	udp := func(dport uint16, p []byte) []byte {
		u := make([]byte, 8)
		binary.BigEndian.PutUint16(u[2:], dport)
		return append(u, p...)
	}
	frag := frame4(50, esp)
	frag[20] = 0x20 // more fragments
	v6 := make([]byte, 14+40)
	binary.BigEndian.PutUint16(v6[12:], 0x86dd)
	v6[20] = 50
	v6 = append(v6, esp...)
	for _, tc := range []struct {
		name     string
		f        []byte
		ok       bool
		off      int
		spi, seq uint32
	}{
		{"esp4", frame4(50, esp), true, 34, 0xc0000100, 7},
		{"esp6", v6, true, 54, 0xc0000100, 7},
		{"udp4500", frame4(17, udp(4500, esp)), true, 42, 0xc0000100, 7},
		{"ike marker", frame4(17, udp(4500, make([]byte, 12))), false, 0, 0, 0},
		{"other udp", frame4(17, udp(53, esp)), false, 0, 0, 0},
		{"fragment", frag, false, 0, 0, 0},
		{"short", frame4(50, esp[:7]), false, 0, 0, 0},
		{"tcp", frame4(6, esp), false, 0, 0, 0},
	} {
		off, spi, seq, ok := ESPAt(tc.f)
		if ok != tc.ok || off != tc.off || spi != tc.spi || seq != tc.seq {
			t.Errorf("%s: ESPAt = %d 0x%x %d %v, want %d 0x%x %d %v", tc.name, off, spi, seq, ok, tc.off, tc.spi, tc.seq, tc.ok)
		}
	}
	f := frame4(17, udp(4500, esp))
	binary.BigEndian.PutUint16(f[40:], 0xabcd) // a UDP checksum
	g, err := Forge(f, 0xfffffff0)
	if err != nil {
		t.Fatal(err)
	}
	if _, spi, seq, _ := ESPAt(g); spi != 0xc0000100 || seq != 0xfffffff0 || g[len(g)-1] != f[len(f)-1]^0xff || g[40] != 0 || g[41] != 0 {
		t.Fatalf("forged % x from % x", g, f)
	}
	if _, _, seq, _ := ESPAt(f); seq != 7 {
		t.Fatal("Forge changed its input")
	}
}

// TestIKE: an IKE datagram built on a captured ESP-in-UDP frame has the
// non-ESP marker, the payload, and lengths and checksums a receiver
// accepts (IPv4 header, UDP with its pseudo-header, IPv4 and IPv6).
func TestIKE(t *testing.T) {
	esp := []byte{0xc0, 0, 1, 0, 0, 0, 0, 7, 1, 2, 3, 4, 5}
	u := make([]byte, 8)
	binary.BigEndian.PutUint16(u[0:], 4500)
	binary.BigEndian.PutUint16(u[2:], 4500)
	v4 := frame4(17, append(u, esp...))
	copy(v4[26:], []byte{10, 80, 0, 1, 10, 80, 1, 1})
	v6 := make([]byte, 14+40)
	binary.BigEndian.PutUint16(v6[12:], 0x86dd)
	v6[14], v6[20] = 0x60, 17
	v6[22], v6[53] = 0xfd, 1
	v6 = append(append(v6, u...), esp...)
	payload := []byte("IKE_SA_INIT, odd")
	for _, tc := range []struct {
		name string
		f    []byte
		udp  int
	}{{"ipv4", v4, 34}, {"ipv6", v6, 54}} {
		g, err := IKE(tc.f, payload)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ulen := len(g) - tc.udp
		if _, _, _, ok := ESPAt(g); ok || string(g[tc.udp+8:]) != "\x00\x00\x00\x00"+string(payload) || int(binary.BigEndian.Uint16(g[tc.udp+4:])) != ulen {
			t.Fatalf("%s: % x", tc.name, g)
		}
		var pseudo []byte
		if tc.name == "ipv4" {
			if binary.BigEndian.Uint16(g[16:]) != uint16(len(g)-14) || csum(0, g[14:34]) != 0xffff {
				t.Fatalf("ipv4 header % x: length or checksum wrong", g[14:34])
			}
			pseudo = append(append([]byte{}, g[26:34]...), 0, 17, byte(ulen>>8), byte(ulen))
		} else {
			if binary.BigEndian.Uint16(g[18:]) != uint16(ulen) {
				t.Fatalf("ipv6 payload length %d, want %d", binary.BigEndian.Uint16(g[18:]), ulen)
			}
			pseudo = append(append([]byte{}, g[22:54]...), 0, 0, byte(ulen>>8), byte(ulen), 0, 0, 0, 17)
		}
		if c := csum(uint32(csum(0, pseudo)), g[tc.udp:]); c != 0xffff {
			t.Fatalf("%s: the UDP checksum does not verify (sum 0x%x)", tc.name, c)
		}
	}
	if _, err := IKE(frame4(50, esp), payload); err == nil {
		t.Fatal("IKE built on ESP over IP")
	}
}

func TestParseXfrmStat(t *testing.T) {
	m, err := parseXfrmStat("XfrmInError             \t0\nXfrmInStateSeqError     \t12\n\n")
	if err != nil || m["XfrmInStateSeqError"] != 12 || len(m) != 2 {
		t.Fatalf("%v %v", m, err)
	}
}

// build makes a lab or skips when the kernel has no ESP.
func build(t *testing.T, spec Spec) *Lab {
	t.Helper()
	testenv.RequireRoot(t)
	lab.Sweep()
	l, err := New(spec)
	if errors.Is(err, ErrNoESP) {
		testenv.RequireFeature(t, Feature, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestLab: the harness itself, on the kernel alone (no tandem): in each
// shape a stream passes both ways with no loss; a captured frame sent
// again moves the gateway's replay counter by one and its window not at
// all; a forged frame with a huge number and a bad ICV moves the
// integrity counter and not the window; a rekey keeps the stream going.
func TestLab(t *testing.T) {
	for _, spec := range []Spec{
		{FlowSAs: 2, IdleSAs: 3},
		{ESN: true, Window: 128, IPv6: true},
		{Tunnel: true, Window: 256, Gateways: 2},
		{Tunnel: true, ESN: true, IPv6: true, Window: 1024, Gateways: 2},
	} {
		t.Run(fmt.Sprintf("tunnel=%v,esn=%v,ipv6=%v,window=%d,gws=%d", spec.Tunnel, spec.ESN, spec.IPv6, spec.Window, spec.Gateways), func(t *testing.T) {
			l := build(t, spec)
			gw := l.OwnerHost()
			s, err := l.StartStream(200)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.WaitReceived(20, 60*time.Second); err != nil {
				t.Fatal(err)
			}
			// A recent frame: within the window when it comes back.
			frame, err := Capture(l.Peer, "eth0", l.In.SPI, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			s.Pause()
			time.Sleep(300 * time.Millisecond)
			before, err := Read(gw, l.In)
			if err != nil {
				t.Fatal(err)
			}
			forged, err := Forge(frame, uint32(before.Top)+1<<30)
			if err != nil {
				t.Fatal(err)
			}
			if err := Send(l.Peer, "eth0", frame, forged); err != nil {
				t.Fatal(err)
			}
			var d Counters
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				after, err := Read(gw, l.In)
				if err != nil {
					t.Fatal(err)
				}
				if d = after.Sub(before); d.Replay+d.Integrity >= 2 {
					break
				}
			}
			if d.Replay != 1 || d.Integrity != 1 || d.Top != before.Top {
				t.Fatalf("replayed and forged: %+v (before %+v), want one replay, one bad ICV, the top unmoved", d, before)
			}
			s.Resume()
			if err := l.Rekey(l.In.SPI + 1); err != nil {
				t.Fatal(err)
			}
			if err := s.WaitReceived(s.Sent()+20, 60*time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := Read(gw, l.In); err != nil {
				t.Fatal(err)
			}
			if r := s.Stop(5 * time.Second); r.Lost != 0 || r.Dup != 0 {
				// The rekey's window: the peer may pick the new SA for
				// a packet before the gateway has it; both are added
				// before the old is deleted, so nothing may be lost.
				t.Fatalf("stream: %v", r)
			}
			rs, err := l.StartReverse(200)
			if err != nil {
				t.Fatal(err)
			}
			if err := rs.WaitReceived(20, 60*time.Second); err != nil {
				t.Fatal(err)
			}
			if r := rs.Stop(5 * time.Second); r.Lost != 0 {
				t.Fatalf("reverse stream: %v", r)
			}
			for i, id := range l.Flows {
				fs, err := l.StartFlow(i, 200)
				if err != nil {
					t.Fatal(err)
				}
				if err := fs.WaitReceived(10, 60*time.Second); err != nil {
					t.Fatal(err)
				}
				r := fs.Stop(5 * time.Second)
				if c, err := Read(gw, id); err != nil || c.Top != r.Sent || r.Lost != 0 {
					t.Fatalf("flow %d: %v; its SA's top %d (%v), want one packet per datagram through it", i, r, c.Top, err)
				}
			}
			if sas, err := SAs(gw); err != nil || len(sas) != 2+spec.FlowSAs+spec.IdleSAs {
				t.Fatalf("gateway holds %d SAs (%v), want %d", len(sas), err, 2+spec.FlowSAs+spec.IdleSAs)
			}
			if len(l.GWs) == 2 {
				if err := l.Failover(1); err != nil {
					t.Fatal(err)
				}
				if l.OwnerHost() != l.GWs[1] {
					t.Fatal("failover did not move the owner")
				}
				// The peer goes on with its numbers; gwb's copy of the
				// SA (window at 0) takes them.
				s, err := l.StartStream(200)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.WaitReceived(10, 60*time.Second); err != nil {
					t.Fatal(err)
				}
				s.Stop(5 * time.Second)
				if c, err := Read(l.GWs[1], l.In); err != nil || c.Top == 0 {
					t.Fatalf("gwb's inbound SA after the failover: %+v (%v), want traffic", c, err)
				}
			}
		})
	}
}
