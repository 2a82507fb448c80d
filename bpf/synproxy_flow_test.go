package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/fixture"
	"github.com/tandem-net/tandem/tools/testenv"
)

// isolatedNetns runs test runs in a network namespace of their own, with
// no routes: the proxy's FIB lookups fail the same way on every machine,
// so a rewritten packet is always left to the kernel (XDP_PASS) and the
// fixtures do not depend on the host's routing table.
type isolatedNetns struct{ req chan func() }

func newIsolatedNetns(t testing.TB) *isolatedNetns {
	t.Helper()
	n := &isolatedNetns{req: make(chan func())}
	ready := make(chan error)
	go func() {
		// The thread stays locked and dies with the goroutine: it never
		// returns to the scheduler in the other namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for f := range n.req {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("unshare a network namespace: %v", err)
	}
	t.Cleanup(func() { close(n.req) })
	return n
}

func (n *isolatedNetns) run(prog *ebpf.Program, frame []byte) (verdict string, out []byte, err error) {
	done := make(chan struct{})
	n.req <- func() {
		verdict, out, err = fixture.Run(prog, frame)
		close(done)
	}
	<-done
	return
}

// seg describes a TCP segment for the flow tests.
type seg struct {
	src, dst       netip.AddrPort
	seq, ack       uint32
	syn, ackf, rst bool
	window         uint16
	mss            uint16
	ws             int // -1: none
	sackPerm       bool
	ts             bool
	tsval, tsecr   uint32
	sack           [][2]uint32
	payload        []byte
}

func (s seg) frame(t testing.TB) []byte {
	t.Helper()
	tl := &layers.TCP{SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()), Seq: s.seq, Ack: s.ack,
		SYN: s.syn, ACK: s.ackf, RST: s.rst, Window: s.window}
	nop := layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1}
	if s.mss != 0 {
		tl.Options = append(tl.Options, layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: binary.BigEndian.AppendUint16(nil, s.mss)})
	}
	if s.sackPerm {
		tl.Options = append(tl.Options, layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2})
	}
	if s.ts {
		tl.Options = append(tl.Options, nop, nop, layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10,
			OptionData: binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, s.tsval), s.tsecr)})
	}
	if s.ws >= 0 && s.syn {
		tl.Options = append(tl.Options, nop, layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{byte(s.ws)}})
	}
	if len(s.sack) > 0 {
		var d []byte
		for _, b := range s.sack {
			d = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(d, b[0]), b[1])
		}
		tl.Options = append(tl.Options, nop, nop, layers.TCPOption{OptionType: layers.TCPOptionKindSACK, OptionLength: uint8(2 + len(d)), OptionData: d})
	}
	var nl gopacket.NetworkLayer
	var ipl gopacket.SerializableLayer
	et := layers.EthernetTypeIPv4
	if s.src.Addr().Is4() {
		ip := ip4(s.src.Addr(), s.dst.Addr(), layers.IPProtocolTCP)
		nl, ipl = ip, ip
	} else {
		et = layers.EthernetTypeIPv6
		ip := ip6(s.src.Addr(), s.dst.Addr(), layers.IPProtocolTCP)
		nl, ipl = ip, ip
	}
	tl.SetNetworkLayerForChecksum(nl)
	return serialize(t, eth(et), ipl, tl, gopacket.Payload(s.payload))
}

// parsed is what the flow tests read back from an output frame.
type parsed struct {
	src, dst            netip.AddrPort
	seq, ack            uint32
	syn, ackf, rst, fin bool
	window              uint16
	mss                 uint16
	ws                  int
	sackPerm, ts        bool
	tsval, tsecr        uint32
	sack                [][2]uint32
	payload             []byte
}

func parseOut(t *testing.T, out []byte) parsed {
	t.Helper()
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	tl, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tl == nil {
		t.Fatalf("no TCP segment in %x", out)
	}
	checksumsOK(t, pkt)
	var src, dst netip.Addr
	if ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		src, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		dst, _ = netip.AddrFromSlice(ip.DstIP.To4())
	} else {
		ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
	}
	p := parsed{src: netip.AddrPortFrom(src, uint16(tl.SrcPort)), dst: netip.AddrPortFrom(dst, uint16(tl.DstPort)), seq: tl.Seq, ack: tl.Ack,
		syn: tl.SYN, ackf: tl.ACK, rst: tl.RST, fin: tl.FIN, window: tl.Window, ws: -1, payload: tl.Payload}
	for _, o := range tl.Options {
		switch o.OptionType {
		case layers.TCPOptionKindMSS:
			p.mss = binary.BigEndian.Uint16(o.OptionData)
		case layers.TCPOptionKindWindowScale:
			p.ws = int(o.OptionData[0])
		case layers.TCPOptionKindSACKPermitted:
			p.sackPerm = true
		case layers.TCPOptionKindTimestamps:
			p.ts, p.tsval, p.tsecr = true, binary.BigEndian.Uint32(o.OptionData), binary.BigEndian.Uint32(o.OptionData[4:])
		case layers.TCPOptionKindSACK:
			for i := 0; i+8 <= len(o.OptionData); i += 8 {
				p.sack = append(p.sack, [2]uint32{binary.BigEndian.Uint32(o.OptionData[i:]), binary.BigEndian.Uint32(o.OptionData[i+4:])})
			}
		}
	}
	return p
}

// TestSynproxyFlow walks connections through the whole proxy with
// test runs: SYN -> cookie SYN-ACK; cookie ACK -> SYN to the backend with
// the client's ISN and options; the backend's SYN-ACK (TC) -> the ACK that
// completes the backend handshake; then data both ways, translated. The
// sequence numbers are chosen so that both directions cross 2^32 and the
// expected values are computed independently, mod 2^32, here.
func TestSynproxyFlow(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	type variant struct {
		v6       bool
		ts, sack bool
		cws, bws int // -1: no window scale option
	}
	var variants []variant
	for _, v6 := range []bool{false, true} {
		for _, ts := range []bool{false, true} {
			for _, ws := range [][2]int{{7, 7}, {0, 14}, {14, 2}, {2, -1}, {-1, -1}} {
				variants = append(variants, variant{v6: v6, ts: ts, sack: !ts, cws: ws[0], bws: ws[1]})
			}
		}
	}
	for i, vr := range variants {
		name := fmt.Sprintf("v6=%v ts=%v sack=%v ws=%d/%d", vr.v6, vr.ts, vr.sack, vr.cws, vr.bws)
		t.Run(name, func(t *testing.T) {
			client, vip := netip.AddrPortFrom(client4, uint16(41000+i)), netip.AddrPortFrom(svc4, 80)
			mss := uint16(1460)
			if vr.v6 {
				client, vip, mss = netip.AddrPortFrom(client6, uint16(41000+i)), netip.AddrPortFrom(svc6, 443), 1440
			}
			var isn uint32 = 0xfffffff0 // the client's sequence space wraps early
			var ctsval uint32 = 0xffffff00
			syn := seg{src: client, dst: vip, seq: isn, syn: true, window: 64240, mss: mss, ws: vr.cws, sackPerm: vr.sack, ts: vr.ts, tsval: ctsval}
			v, out, err := ns.run(p.objs.XdpSynproxy, syn.frame(t))
			if err != nil || v != "XDP_TX" {
				t.Fatalf("SYN: %s %v", v, err)
			}
			sa := parseOut(t, out)
			cookie := sa.seq
			if sa.window != 0 || !sa.syn || !sa.ackf {
				t.Fatalf("SYN-ACK %+v", sa)
			}

			// The cookie ACK becomes the SYN to the backend.
			var cwin uint16 = 502
			ack := seg{src: client, dst: vip, seq: isn + 1, ack: cookie + 1, ackf: true, window: cwin, ws: -1, ts: vr.ts, tsval: ctsval + 1, tsecr: cookie}
			v, out, err = ns.run(p.objs.XdpSynproxy, ack.frame(t))
			if err != nil || v != "XDP_PASS" {
				t.Fatalf("cookie ACK: %s %v", v, err)
			}
			bs := parseOut(t, out)
			var cv maps.ConnVal
			key := maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(vip.Port()), Proto: 6}
			if err := p.m.Conns.Lookup(key, &cv); err != nil {
				t.Fatal(err)
			}
			backend := netip.AddrPortFrom(netip.AddrFrom16(cv.Baddr).Unmap(), maps.HostPort(cv.Bport))
			wantWS := vr.cws
			cwinBytes := uint32(cwin)
			if vr.cws >= 0 {
				cwinBytes <<= vr.cws
			}
			if bs.src != client || bs.dst != backend || !bs.syn || bs.ackf || bs.seq != isn || bs.mss != mss || bs.ws != wantWS ||
				bs.sackPerm != vr.sack || bs.ts != vr.ts || (vr.ts && (bs.tsval != ctsval+1 || bs.tsecr != 0)) || uint32(bs.window) != min(cwinBytes, 65535) || len(bs.payload) != 0 {
				t.Fatalf("backend SYN %+v (backend %s, cookie %#x)", bs, backend, cookie)
			}

			// The backend's SYN-ACK: its ISN close to the wrap too.
			var bisn uint32 = 0xffffff9b
			var btsval uint32 = 0x7fffffff
			synack := seg{src: backend, dst: client, seq: bisn, ack: isn + 1, syn: true, ackf: true, window: 65160, mss: 1460, ws: vr.bws, sackPerm: vr.sack,
				ts: vr.ts, tsval: btsval, tsecr: ctsval + 1}
			v, out, err = ns.run(p.objs.TcSynproxy, synack.frame(t))
			if err != nil || v != "TC_ACT_REDIRECT" {
				t.Fatalf("backend SYN-ACK: %s %v", v, err)
			}
			ba := parseOut(t, out)
			if err := p.m.Conns.Lookup(key, &cv); err != nil {
				t.Fatal(err)
			}
			// Window scaling is in force only when both ends offered it.
			scaled := vr.cws >= 0 && vr.bws >= 0
			wantAckWin := uint32(cwin)
			if vr.cws >= 0 && !scaled {
				wantAckWin = min(uint32(cwin)<<vr.cws, 65535)
			}
			if ba.src != client || ba.dst != backend || ba.syn || !ba.ackf || ba.seq != isn+1 || ba.ack != bisn+1 || uint32(ba.window) != wantAckWin ||
				ba.ts != vr.ts || (vr.ts && (ba.tsval != ctsval+1 || ba.tsecr != btsval)) {
				t.Fatalf("ACK to the backend %+v", ba)
			}
			if cv.State != uint8(bpf.SynproxyConnStateCONN_ESTABLISHED) || cv.SeqDelta != cookie-bisn {
				t.Fatalf("entry after the SYN-ACK: state %d delta %#x", cv.State, cv.SeqDelta)
			}

			// Client -> backend: the ack (and SACK edges) cross 2^32 in
			// the client's view of the backend's space.
			x := -cookie + 50 // cookie+1+x wraps to 51
			data := seg{src: client, dst: vip, seq: isn + 1 + 100, ack: cookie + 1 + x, ackf: true, window: 1000, ws: -1, ts: vr.ts, tsval: ctsval + 9, tsecr: cookie + 77,
				payload: []byte("client bytes")}
			if vr.sack {
				data.sack = [][2]uint32{{cookie + 1 + x + 10, cookie + 1 + x + 20}, {cookie + 1 + x + 30, cookie + 1 + x + 40}}
			}
			v, out, err = ns.run(p.objs.XdpSynproxy, data.frame(t))
			if err != nil || v != "XDP_PASS" {
				t.Fatalf("client data: %s %v", v, err)
			}
			f := parseOut(t, out)
			wantFwdWin := uint32(1000)
			if vr.cws >= 0 && !scaled {
				wantFwdWin = min(uint32(1000)<<vr.cws, 65535)
			}
			if f.src != client || f.dst != backend || f.seq != isn+1+100 || f.ack != bisn+1+x || uint32(f.window) != wantFwdWin || string(f.payload) != "client bytes" ||
				(vr.ts && (f.tsval != ctsval+9 || f.tsecr != btsval+77)) {
				t.Errorf("client -> backend %+v", f)
			}
			if vr.sack && (len(f.sack) != 2 || f.sack[0] != [2]uint32{bisn + 1 + x + 10, bisn + 1 + x + 20} || f.sack[1] != [2]uint32{bisn + 1 + x + 30, bisn + 1 + x + 40}) {
				t.Errorf("SACK blocks %x", f.sack)
			}

			// Backend -> client: seq crosses 2^32 in the backend's space.
			var y uint32 = 200
			bdata := seg{src: backend, dst: client, seq: bisn + 1 + y, ack: isn + 1 + 100 + 12, ackf: true, window: 300, ws: -1, ts: vr.ts, tsval: btsval + 5, tsecr: ctsval + 9,
				payload: []byte("backend bytes")}
			v, out, err = ns.run(p.objs.XdpSynproxy, bdata.frame(t))
			if err != nil || v != "XDP_PASS" {
				t.Fatalf("backend data: %s %v", v, err)
			}
			r := parseOut(t, out)
			// The client was told our scale (7) whenever it offered one.
			bytes := uint32(300)
			if scaled {
				bytes <<= vr.bws
			}
			wantRevWin := bytes
			if vr.cws >= 0 {
				wantRevWin = max(bytes>>7, 1)
			}
			if r.src != vip || r.dst != client || r.seq != cookie+1+y || r.ack != isn+1+100+12 || uint32(r.window) != min(wantRevWin, 65535) ||
				string(r.payload) != "backend bytes" || (vr.ts && (r.tsval != cookie+5 || r.tsecr != ctsval+9)) {
				t.Errorf("backend -> client %+v (cookie %#x)", r, cookie)
			}
		})
	}
	s := p.stats(t)
	if s["established"] != uint64(len(variants)) || s["to_backend"] != uint64(len(variants)) || s["to_client"] != uint64(len(variants)) {
		t.Errorf("counters %v", s)
	}
}

// TestSynproxyBackendFailures: a backend that refuses gets the client a
// RST at the right sequence; one that never answers is asked again when
// the client's packets show it waits, then the client gets a RST; both
// entries are gone and counted; sp_expire removes idle entries and
// replicates the deletions.
func TestSynproxyBackendFailures(t *testing.T) {
	p := loadSynproxyWith(t, map[string]any{"cfg_syn_retry_ns": uint64(0), "cfg_syn_tries": uint32(2)})
	ns := newIsolatedNetns(t)
	open := func(port uint16) (netip.AddrPort, uint32, netip.AddrPort, maps.ConnKey) {
		t.Helper()
		client, vip := netip.AddrPortFrom(client4, port), netip.AddrPortFrom(svc4, 80)
		syn := seg{src: client, dst: vip, seq: 1000, syn: true, window: 64240, mss: 1460, ws: -1}
		_, out, err := ns.run(p.objs.XdpSynproxy, syn.frame(t))
		if err != nil {
			t.Fatal(err)
		}
		cookie := parseOut(t, out).seq
		ack := seg{src: client, dst: vip, seq: 1001, ack: cookie + 1, ackf: true, window: 100, ws: -1}
		if v, _, err := ns.run(p.objs.XdpSynproxy, ack.frame(t)); err != nil || v != "XDP_PASS" {
			t.Fatalf("cookie ACK: %s %v", v, err)
		}
		key := maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(port), Vport: maps.HostPort(80), Proto: 6}
		var cv maps.ConnVal
		if err := p.m.Conns.Lookup(key, &cv); err != nil {
			t.Fatal(err)
		}
		return client, cookie, netip.AddrPortFrom(netip.AddrFrom16(cv.Baddr).Unmap(), maps.HostPort(cv.Bport)), key
	}
	// Refused.
	client, cookie, backend, key := open(42000)
	rst := seg{src: backend, dst: client, ack: 1001, rst: true, ackf: true, ws: -1}
	v, out, err := ns.run(p.objs.XdpSynproxy, rst.frame(t))
	if err != nil || v != "XDP_PASS" {
		t.Fatalf("backend RST: %s %v", v, err)
	}
	if r := parseOut(t, out); !r.rst || r.seq != cookie+1 || r.src != netip.AddrPortFrom(svc4, 80) || r.dst != client {
		t.Errorf("RST to the client %+v", r)
	}
	var cv maps.ConnVal
	if err := p.m.Conns.Lookup(key, &cv); err == nil {
		t.Errorf("entry kept after the backend refused")
	}
	// A stale socket: the backend still has a connection on this 4-tuple
	// (one the proxy lost) and answers the SYN with a challenge ACK for
	// its own sequence space. The proxy resets it at the sequence it
	// acknowledges (RFC 9293 3.10.7.3) and keeps waiting.
	client, _, backend, key = open(42002)
	before := p.stats(t)["backend_bad_ack"]
	chal := seg{src: backend, dst: client, seq: 777000, ack: 5555, ackf: true, window: 100, ws: -1}
	v, out, err = ns.run(p.objs.XdpSynproxy, chal.frame(t))
	if err != nil || v != "XDP_TX" {
		t.Fatalf("challenge ACK from a stale backend socket: %s %v, want XDP_TX (a RST back)", v, err)
	}
	if r := parseOut(t, out); !r.rst || r.ackf || r.seq != 5555 || r.src != client || r.dst != backend {
		t.Errorf("RST to the stale backend socket %+v, want from %s to %s, seq 5555, no ACK", r, client, backend)
	}
	if got := p.stats(t)["backend_bad_ack"]; got != before+1 {
		t.Errorf("backend_bad_ack %d -> %d, want +1", before, got)
	}
	if err := p.m.Conns.Lookup(key, &cv); err != nil {
		t.Errorf("entry gone after a stale socket's ACK: %v (the SYN is sent again on the client's next segment)", err)
	}
	if err := p.m.Conns.Delete(key); err != nil { // out of the expiry count below
		t.Fatal(err)
	}
	// Never answers: the client's next ACK sends the SYN again (try 2),
	// the one after that gets the client a RST.
	client, cookie, _, key = open(42001)
	probe := seg{src: client, dst: netip.AddrPortFrom(svc4, 80), seq: 1000, ack: cookie + 1, ackf: true, window: 100, ws: -1}
	if v, out, err := ns.run(p.objs.XdpSynproxy, probe.frame(t)); err != nil || v != "XDP_PASS" || !parseOut(t, out).syn {
		t.Fatalf("retry: %s %v", v, err)
	}
	v, out, err = ns.run(p.objs.XdpSynproxy, probe.frame(t))
	if err != nil || v != "XDP_TX" {
		t.Fatalf("give up: %s %v", v, err)
	}
	if r := parseOut(t, out); !r.rst || r.seq != cookie+1 || r.dst != client {
		t.Errorf("RST after the retries %+v", r)
	}
	if err := p.m.Conns.Lookup(key, &cv); err == nil {
		t.Errorf("entry kept after the backend never answered")
	}
	s := p.stats(t)
	if s["backend_refused"] != 1 || s["backend_timeout"] != 1 || s["backend_syn_retry"] != 1 {
		t.Errorf("counters %v", s)
	}

	// Expiry: three waiting entries; nothing is idle yet, then all are.
	for port := uint16(42100); port < 42103; port++ {
		open(port)
	}
	// The three left waiting are counted: the daemon sweeps every second
	// while any entry has a short timeout.
	if n, short, err := maps.Expire(p.objs.SpExpire, maps.TAINow(), maps.DefaultTimeouts); err != nil || n != 0 || short != 3 {
		t.Fatalf("expire now: %d deleted, %d short-lived left, %v; want 0, 3", n, short, err)
	}
	if _, err := p.sync.Drain(func(*maps.SyncRec) {}); err != nil {
		t.Fatal(err)
	}
	n, short, err := maps.Expire(p.objs.SpExpire, maps.TAINow()+uint64(maps.DefaultTimeouts.SynSent)*2, maps.DefaultTimeouts)
	if err != nil || n != 3 || short != 0 {
		t.Fatalf("expire later: %d deleted, %d short-lived left, %v; want 3, 0", n, short, err)
	}
	var deletes int
	if _, err := p.sync.Drain(func(r *maps.SyncRec) {
		if r.Op == uint32(bpf.SyncSyncOpSYNC_OP_DELETE) {
			deletes++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if deletes != 3 {
		t.Errorf("%d deletions in the dirty rings, want 3", deletes)
	}
}

// establish opens one IPv4 connection with timestamps through the proxy
// with test runs and returns its endpoints and sequence numbers.
func establish(t testing.TB, p *proxy, ns *isolatedNetns, cport uint16) (client, vip, backend netip.AddrPort, cookie, bisn uint32) {
	return establishOn(t, p, ns, netip.AddrPortFrom(client4, cport), netip.AddrPortFrom(svc4, 80))
}

// TestSynproxyPortReuse: a SYN is answered without a look at the
// connection table. A SYN for a live entry gets a SYN-ACK and leaves the
// entry alone; once the entry is closing, an ACK of the old connection
// is still translated, and a client that reuses the port completes a new
// handshake whose cookie ACK replaces the entry.
func TestSynproxyPortReuse(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	client, vip := netip.AddrPortFrom(client4, 44000), netip.AddrPortFrom(svc4, 80)
	_, _, _, cookie, _ := establishOn(t, p, ns, client, vip)
	key := maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(vip.Port()), Proto: 6}
	entry := func() maps.ConnVal {
		t.Helper()
		var cv maps.ConnVal
		if err := p.m.Conns.Lookup(key, &cv); err != nil {
			t.Fatalf("no connection entry: %v", err)
		}
		return cv
	}
	run := func(what string, s seg, want string) []byte {
		t.Helper()
		v, out, err := ns.run(p.objs.XdpSynproxy, s.frame(t))
		if err != nil || v != want {
			t.Fatalf("%s: %s %v, want %s", what, v, err, want)
		}
		return out
	}
	syn := seg{src: client, dst: vip, seq: 5000, syn: true, window: 64240, mss: 1400, ws: 7, sackPerm: true, ts: true, tsval: 50}
	if out := run("a SYN for a live entry", syn, "XDP_TX"); !parseOut(t, out).syn {
		t.Errorf("a SYN for a live entry: no SYN-ACK")
	}
	if cv := entry(); cv.State != uint8(bpf.SynproxyConnStateCONN_ESTABLISHED) || cv.Cookie != cookie {
		t.Errorf("the live entry changed: %+v", cv)
	}
	run("the client's RST", seg{src: client, dst: vip, seq: 2, rst: true, ws: -1}, "XDP_PASS")
	if cv := entry(); cv.State != uint8(bpf.SynproxyConnStateCONN_CLOSING) {
		t.Fatalf("after the client's RST: state %d, want closing", cv.State)
	}
	// A late segment of the old connection: translated, the entry kept.
	run("an ACK of the old connection", seg{src: client, dst: vip, seq: 102, ack: cookie + 301, ackf: true, window: 500, ws: -1, ts: true, tsval: 40, tsecr: cookie}, "XDP_PASS")
	if cv := entry(); cv.Cookie != cookie || cv.State != uint8(bpf.SynproxyConnStateCONN_CLOSING) {
		t.Errorf("an old ACK changed the closing entry: %+v", cv)
	}
	// The new connection on the same port.
	out := run("the new SYN", syn, "XDP_TX")
	c2 := parseOut(t, out).seq
	run("the new cookie ACK", seg{src: client, dst: vip, seq: 5001, ack: c2 + 1, ackf: true, window: 502, ws: -1, ts: true, tsval: 51, tsecr: c2}, "XDP_PASS")
	if cv := entry(); cv.Cookie != c2 || cv.ClientIsn != 5000 || cv.State != uint8(bpf.SynproxyConnStateCONN_SYN_SENT) {
		t.Errorf("after the new handshake: %+v, want cookie %#x, client ISN 5000, SYN sent", cv, c2)
	}
}

// establishOn runs a connection from client to vip through its handshake
// (SYN, cookie ACK, the backend's SYN-ACK at TC).
func establishOn(t testing.TB, p *proxy, ns *isolatedNetns, client, vip netip.AddrPort) (_, _, backend netip.AddrPort, cookie, bisn uint32) {
	syn := seg{src: client, dst: vip, seq: 1, syn: true, window: 64240, mss: 1400, ws: 7, sackPerm: true, ts: true, tsval: 10}
	_, out, err := ns.run(p.objs.XdpSynproxy, syn.frame(t))
	if err != nil {
		t.Fatal(err)
	}
	l3 := 20
	if client.Addr().Is6() {
		l3 = 40
	}
	cookie = binary.BigEndian.Uint32(out[14+l3+4:])
	ack := seg{src: client, dst: vip, seq: 2, ack: cookie + 1, ackf: true, window: 502, ws: -1, ts: true, tsval: 11, tsecr: cookie}
	if v, _, err := ns.run(p.objs.XdpSynproxy, ack.frame(t)); err != nil || v != "XDP_PASS" {
		t.Fatalf("cookie ACK: %s %v", v, err)
	}
	var cv maps.ConnVal
	key := maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(vip.Port()), Proto: 6}
	// Read as bytes: an older build's entry (the benchmarks' anchors) is
	// a prefix of today's, its fields at the same offsets.
	raw := make([]byte, p.m.Conns.ValueSize())
	if err := p.m.Conns.Lookup(key, &raw); err != nil {
		t.Fatal(err)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&cv)), unsafe.Sizeof(cv)), raw)
	backend = netip.AddrPortFrom(netip.AddrFrom16(cv.Baddr).Unmap(), maps.HostPort(cv.Bport))
	bisn = 0x12345678
	synack := seg{src: backend, dst: client, seq: bisn, ack: 2, syn: true, ackf: true, window: 65160, mss: 1400, ws: 7, sackPerm: true, ts: true, tsval: 99, tsecr: 11}
	if v, _, err := ns.run(p.objs.TcSynproxy, synack.frame(t)); err != nil || v != "TC_ACT_REDIRECT" {
		t.Fatalf("backend SYN-ACK: %s %v", v, err)
	}
	return client, vip, backend, cookie, bisn
}

// BenchmarkSynproxyEstablished: ns per established segment (1448 bytes of
// payload, timestamps) each way, the program's own run time as the kernel
// measures it, against the XDP floor (a program that only returns) in the
// same runs.
func BenchmarkSynproxyEstablished(b *testing.B) {
	p := loadSynproxy(b)
	ns := newIsolatedNetns(b)
	client, vip, backend, cookie, bisn := establish(b, p, ns, 43000)
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer pass.Close()
	payload := make([]byte, 1448)
	for name, s := range map[string]seg{
		"client to backend": {src: client, dst: vip, seq: 2, ack: cookie + 1, ackf: true, window: 500, ws: -1, ts: true, tsval: 12, tsecr: cookie, payload: payload},
		"backend to client": {src: backend, dst: client, seq: bisn + 1, ack: 2, ackf: true, window: 500, ws: -1, ts: true, tsval: 100, tsecr: 12, payload: payload},
	} {
		frame := s.frame(b)
		b.Run(name, func(b *testing.B) {
			const n = 1 << 14
			per := func(prog *ebpf.Program) (d float64) {
				done := make(chan struct{})
				ns.req <- func() {
					defer close(done)
					var err error
					d, err = bench.RunTime(prog, func() error {
						for range n {
							if _, err := prog.Run(&ebpf.RunOptions{Data: frame}); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						b.Error(err)
					}
				}
				<-done
				return d
			}
			stat := "to_backend"
			if s.src == backend {
				stat = "to_client"
			}
			var est, floor float64
			for b.Loop() {
				before := p.stats(b)[stat]
				est, floor = per(p.objs.XdpSynproxy), per(pass)
				if got := p.stats(b)[stat] - before; got != n {
					b.Fatalf("%d segments translated of %d: the benchmark did not run the established path", got, n)
				}
			}
			b.ReportMetric(est, "ns/segment")
			if _, err := bench.Record(bench.Result{Name: "xdp_synproxy established " + name + ", program run time", Unit: "ns/segment", Value: est,
				Anchor: "xdp return XDP_PASS, same runs", AnchorValue: floor, Goal: "record only (the floor is what any XDP program costs)"}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// icmpQuote builds an ICMPv4 error from src to dst quoting the first 28
// bytes of a TCP segment q.
func icmpQuote(t testing.TB, src, dst netip.Addr, q seg) []byte {
	t.Helper()
	if src.Is4() {
		quoted := q.frame(t)[14 : 14+28]
		ip := ip4(src, dst, layers.IPProtocolICMPv4)
		return serialize(t, eth(layers.EthernetTypeIPv4), ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: 1400}, gopacket.Payload(quoted))
	}
	// Packet too big: the MTU, then the quoted IPv6 header and 8 bytes.
	body := binary.BigEndian.AppendUint32(nil, 1280)
	body = append(body, q.frame(t)[14:14+48]...)
	ip := ip6(src, dst, layers.IPProtocolICMPv6)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(2, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(layers.EthernetTypeIPv6), ip, ic, gopacket.Payload(body))
}

// cutQuote shortens the IP packet of an ICMP error from icmpQuote so
// that it ends right after the quoted IP header; the frame keeps the
// quoted TCP ports and sequence number as padding. Checksums are fixed
// for the shorter packet.
func cutQuote(b []byte) []byte {
	b = bytes.Clone(b)
	if binary.BigEndian.Uint16(b[12:]) == 0x0800 {
		binary.BigEndian.PutUint16(b[14+2:], 20+8+20)
	} else {
		binary.BigEndian.PutUint16(b[14+4:], 8+40)
	}
	return fixSums(b)
}

// inetSum is the Internet checksum's folded one's complement sum of b.
func inetSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// icmpErr is what the ICMP test reads back from an output frame.
type icmpErr struct {
	osrc, odst, isrc, idst netip.Addr
	isport, idport         uint16
	iseq                   uint32
}

// parseICMPErr reads an ICMP(v6) error and checks every checksum in it:
// the outer IP header's, the ICMP one (for ICMPv6 over its pseudo
// header), and the quoted IPv4 header's.
func parseICMPErr(t *testing.T, out []byte) icmpErr {
	t.Helper()
	var r icmpErr
	pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	if ip, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		ic, _ := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ic == nil {
			t.Fatalf("no ICMP in %s", pk)
		}
		if inetSum(ip.Contents) != 0xffff || inetSum(append(append([]byte{}, ic.Contents...), ic.Payload...)) != 0xffff {
			t.Errorf("outer IP or ICMP checksum wrong")
		}
		q := ic.Payload
		if inetSum(q[:20]) != 0xffff {
			t.Errorf("quoted IP checksum wrong")
		}
		r.osrc, _ = netip.AddrFromSlice(ip.SrcIP.To4())
		r.odst, _ = netip.AddrFromSlice(ip.DstIP.To4())
		r.isrc, _ = netip.AddrFromSlice(q[12:16])
		r.idst, _ = netip.AddrFromSlice(q[16:20])
		q = q[20:]
		r.isport, r.idport, r.iseq = binary.BigEndian.Uint16(q), binary.BigEndian.Uint16(q[2:]), binary.BigEndian.Uint32(q[4:])
		return r
	}
	ip, _ := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if ip == nil || ip.NextHeader != layers.IPProtocolICMPv6 {
		t.Fatalf("no ICMPv6 in %s", pk)
	}
	icmp := ip.Payload
	pseudo := append(append([]byte{}, ip.SrcIP...), ip.DstIP...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(icmp)))
	pseudo = append(pseudo, 0, 0, 0, byte(layers.IPProtocolICMPv6))
	if inetSum(append(pseudo, icmp...)) != 0xffff {
		t.Errorf("ICMPv6 checksum wrong")
	}
	q := icmp[8:]
	r.osrc, _ = netip.AddrFromSlice(ip.SrcIP)
	r.odst, _ = netip.AddrFromSlice(ip.DstIP)
	r.isrc, _ = netip.AddrFromSlice(q[8:24])
	r.idst, _ = netip.AddrFromSlice(q[24:40])
	q = q[40:]
	r.isport, r.idport, r.iseq = binary.BigEndian.Uint16(q), binary.BigEndian.Uint16(q[2:]), binary.BigEndian.Uint32(q[4:])
	return r
}

// TestSynproxyICMP: ICMP errors quoting a proxied segment are translated
// like the segment: from the backend side (a router's, or the backend's
// own) towards the client as if about client -> VIP; from the client side
// towards the backend, in its sequence space. Checksums stay valid (for
// ICMPv6 including its pseudo header, which the new addresses change);
// errors about no proxied flow pass untouched. IPv4 (destination
// unreachable) and IPv6 (packet too big).
func TestSynproxyICMP(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	for i, fam := range []struct {
		name          string
		client, vip   netip.AddrPort
		router, stray netip.Addr
	}{
		{"IPv4", netip.AddrPortFrom(client4, 44000), netip.AddrPortFrom(svc4, 80), netip.MustParseAddr("10.9.0.254"), netip.MustParseAddr("10.9.9.9")},
		{"IPv6", netip.AddrPortFrom(client6, 44001), netip.AddrPortFrom(svc6, 443), netip.MustParseAddr("fd09::fe"), netip.MustParseAddr("fd09::99")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			client, vip, backend, cookie, bisn := establishOn(t, p, ns, fam.client, fam.vip)
			check := func(name string, out []byte, want icmpErr) {
				t.Helper()
				if got := parseICMPErr(t, out); got != want {
					t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
				}
			}
			toBackend := seg{src: client, dst: backend, seq: 500, ack: bisn + 1, ackf: true, window: 100, ws: -1}
			for _, c := range []struct {
				name       string
				from, want netip.Addr
			}{{"from a router on the backend side", fam.router, fam.router}, {"from the backend", backend.Addr(), vip.Addr()}} {
				v, out, err := ns.run(p.objs.XdpSynproxy, icmpQuote(t, c.from, client.Addr(), toBackend))
				if err != nil || v != "XDP_PASS" {
					t.Fatalf("%s: %s %v", c.name, v, err)
				}
				check(c.name, out, icmpErr{c.want, client.Addr(), client.Addr(), vip.Addr(), client.Port(), vip.Port(), 500})
			}
			toClient := seg{src: vip, dst: client, seq: cookie + 1 + 5, ack: 500, ackf: true, window: 100, ws: -1}
			v, out, err := ns.run(p.objs.XdpSynproxy, icmpQuote(t, client.Addr(), vip.Addr(), toClient))
			if err != nil || v != "XDP_PASS" {
				t.Fatalf("from the client side: %s %v", v, err)
			}
			check("from the client side", out, icmpErr{client.Addr(), backend.Addr(), backend.Addr(), client.Addr(), backend.Port(), client.Port(), bisn + 1 + 5})
			if n := p.stats(t)["icmp_translated"]; n != uint64(3*(i+1)) {
				t.Errorf("icmp_translated %d, want %d", n, 3*(i+1))
			}
			// Quoting a flow the proxy does not know: untouched.
			other := seg{src: client, dst: netip.AddrPortFrom(fam.stray, 22), seq: 1, ackf: true, ws: -1}
			in := icmpQuote(t, fam.router, client.Addr(), other)
			v, out, err = ns.run(p.objs.XdpSynproxy, in)
			if err != nil || v != "XDP_PASS" || !bytes.Equal(out, in) {
				t.Errorf("unrelated ICMP: %s %v, changed %v", v, err, !bytes.Equal(out, in))
			}
			// Found by FuzzSynproxyXDP (testdata/fuzz/FuzzSynproxyXDP/c0e716f7fa5c22aa):
			// an error whose IP packet ends with the quoted IP header,
			// the quoted ports and sequence number lying in the frame's
			// padding, was translated from the padding (and its ICMP
			// checksum broken). It quotes too little: untouched.
			for _, q := range []struct {
				name     string
				from, to netip.Addr
				s        seg
			}{{"backend side", fam.router, client.Addr(), toBackend}, {"client side", client.Addr(), vip.Addr(), toClient}} {
				in := cutQuote(icmpQuote(t, q.from, q.to, q.s))
				before := p.stats(t)["icmp_translated"]
				v, out, err := ns.run(p.objs.XdpSynproxy, in)
				if err != nil || v != "XDP_PASS" || !bytes.Equal(out, in) || p.stats(t)["icmp_translated"] != before {
					t.Errorf("%s, quote cut after the IP header: %s %v, changed %v\n in  %x\n out %x", q.name, v, err, !bytes.Equal(out, in), in, out)
				}
			}
		})
	}
}

// TestSynproxyLostCookieAck: the client's first ACK is lost. With the
// window at 0 the client sends only zero-window probes (no payload, seq
// = its ISN); the first probe completes the handshake like the ACK would
// have: the entry holds the client's real ISN and the probe becomes the
// backend SYN. A probe-shaped segment with a payload, or with a wrong
// cookie, is still refused.
func TestSynproxyLostCookieAck(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	client, vip := netip.AddrPortFrom(client4, 46000), netip.AddrPortFrom(svc4, 80)
	const isn = 0x7000
	syn := seg{src: client, dst: vip, seq: isn, syn: true, window: 64240, mss: 1460, ws: 7, sackPerm: true, ts: true, tsval: 10}
	_, out, err := ns.run(p.objs.XdpSynproxy, syn.frame(t))
	if err != nil {
		t.Fatal(err)
	}
	cookie := parseOut(t, out).seq
	bad := []seg{
		{src: client, dst: vip, seq: isn, ack: cookie + 1, ackf: true, window: 502, ws: -1, payload: []byte("x")},
		{src: client, dst: vip, seq: isn, ack: cookie + 2, ackf: true, window: 502, ws: -1},
	}
	for i, s := range bad {
		if v, _, err := ns.run(p.objs.XdpSynproxy, s.frame(t)); err != nil || v != "XDP_DROP" {
			t.Errorf("bad probe %d: %s %v", i, v, err)
		}
	}
	probe := seg{src: client, dst: vip, seq: isn, ack: cookie + 1, ackf: true, window: 502, ws: -1, ts: true, tsval: 30, tsecr: cookie}
	v, out, err := ns.run(p.objs.XdpSynproxy, probe.frame(t))
	if err != nil || v != "XDP_PASS" {
		t.Fatalf("zero-window probe after a lost ACK: %s %v", v, err)
	}
	bs := parseOut(t, out)
	if !bs.syn || bs.ackf || bs.seq != isn || !strings.HasPrefix(bs.dst.String(), "10.9.0.") {
		t.Errorf("the probe became %+v, want the backend SYN with seq %d", bs, isn)
	}
	var cv maps.ConnVal
	key := maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(80), Proto: 6}
	if err := p.m.Conns.Lookup(key, &cv); err != nil || cv.ClientIsn != isn || cv.Cookie != cookie {
		t.Errorf("entry %+v %v: want client ISN %d, cookie %d", cv, err, isn, cookie)
	}
	if st := p.stats(t); st["cookie_ok"] != 1 || st["cookie_bad"] != 2 {
		t.Errorf("counters %v", st)
	}
}

// conn is one connection the RST tests open through the proxy.
type conn struct {
	client, vip, backend netip.AddrPort
	cookie, bisn         uint32
	key                  maps.ConnKey
}

// openConn runs a connection through its handshake; unless waiting, the
// backend answers too and both sides exchange data: the client sends 100
// bytes (its next is 102), the backend 200 (its next bisn+201), each side
// acknowledges the other's, the client with window 502 (scale 7), the
// backend with 500 (scale 7).
func openConn(t *testing.T, p *proxy, ns *isolatedNetns, client, vip netip.AddrPort, waiting bool) conn {
	t.Helper()
	c := conn{client: client, vip: vip,
		key: maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(vip.Port()), Proto: 6}}
	if waiting {
		syn := seg{src: client, dst: vip, seq: 1, syn: true, window: 64240, mss: 1400, ws: 7, sackPerm: true, ts: true, tsval: 10}
		_, out, err := ns.run(p.objs.XdpSynproxy, syn.frame(t))
		if err != nil {
			t.Fatal(err)
		}
		c.cookie = parseOut(t, out).seq
		ack := seg{src: client, dst: vip, seq: 2, ack: c.cookie + 1, ackf: true, window: 502, ws: -1, ts: true, tsval: 11, tsecr: c.cookie}
		if v, _, err := ns.run(p.objs.XdpSynproxy, ack.frame(t)); err != nil || v != "XDP_PASS" {
			t.Fatalf("cookie ACK: %s %v", v, err)
		}
		var cv maps.ConnVal
		if err := p.m.Conns.Lookup(c.key, &cv); err != nil {
			t.Fatal(err)
		}
		c.backend = netip.AddrPortFrom(netip.AddrFrom16(cv.Baddr).Unmap(), maps.HostPort(cv.Bport))
		return c
	}
	_, _, c.backend, c.cookie, c.bisn = establishOn(t, p, ns, client, vip)
	for i, s := range []seg{
		{src: client, dst: vip, seq: 2, ack: c.cookie + 1, ackf: true, window: 502, ws: -1, ts: true, tsval: 12, tsecr: c.cookie, payload: make([]byte, 100)},
		{src: c.backend, dst: client, seq: c.bisn + 1, ack: 102, ackf: true, window: 500, ws: -1, ts: true, tsval: 100, tsecr: 12, payload: make([]byte, 200)},
		{src: client, dst: vip, seq: 102, ack: c.cookie + 201, ackf: true, window: 502, ws: -1, ts: true, tsval: 13, tsecr: c.cookie + 1},
	} {
		if v, _, err := ns.run(p.objs.XdpSynproxy, s.frame(t)); err != nil || v != "XDP_PASS" {
			t.Fatalf("data %d: %s %v", i, v, err)
		}
	}
	return c
}

// TestSynproxyBlindReset: RSTs and SYNs for a proxied connection are
// judged by their sequence number (RFC 5961), from both sides, so that an
// off-path attacker who knows the 4-tuple cannot end a connection: a RST
// at exactly the expected sequence resets (forwarded, the entry closing);
// one elsewhere in the window gets a challenge ACK back, in the name of
// the other side, translated, rate limited per connection; one outside
// the window is dropped; a SYN on an established entry gets a challenge
// ACK. A connection still waiting for its backend resets only at the
// cookie ACK's sequence (client) or with our SYN acknowledged (backend).
// Every run is pinned by testdata/synproxy/rst.golden.json.
func TestSynproxyBlindReset(t *testing.T) {
	// A rate limit no test run outlasts: the second challenge on one
	// connection is always the limited one.
	p := loadSynproxyWith(t, map[string]any{"cfg_challenge_ns": uint64(3600e9)})
	ns := newIsolatedNetns(t)
	const (
		est     = "established"
		closing = "closing"
		waiting = "syn-sent"
		gone    = "gone"
	)
	// want is what the proxy must send, when it sends: the addresses
	// are named by who stands there.
	type want struct {
		from, to  string // "client", "vip", "backend"
		seq, ack  uint32
		rst, ackf bool
		window    uint16
	}
	type step struct {
		name    string
		seg     func(c conn) seg
		verdict string
		stat    string // the counter that moves by one
		state   string // the entry after
		out     func(c conn) want
	}
	fromClient := func(seq uint32, set func(*seg)) func(c conn) seg {
		return func(c conn) seg {
			s := seg{src: c.client, dst: c.vip, seq: seq, rst: true, ws: -1}
			if set != nil {
				set(&s)
			}
			return s
		}
	}
	fromBackend := func(off uint32, set func(*seg)) func(c conn) seg {
		return func(c conn) seg {
			s := seg{src: c.backend, dst: c.client, seq: c.bisn + off, rst: true, ws: -1}
			if set != nil {
				set(&s)
			}
			return s
		}
	}
	// The challenge ACKs: to the client from the VIP (seq the backend's
	// next in the client's view, ack what the backend acknowledged),
	// to the backend from the client.
	toClient := func(c conn) want {
		return want{from: "vip", to: "client", seq: c.cookie + 201, ack: 102, ackf: true, window: 500}
	}
	toBackend := func(c conn) want {
		return want{from: "client", to: "backend", seq: 102, ack: c.bisn + 201, ackf: true, window: 502}
	}
	// clientFlight: the client sends 2,000 bytes (its next 2102) and the
	// backend acknowledges them in two ACKs; backendFlight the same the
	// other way (the backend's next 201+2000).
	clientFlight := func() []step {
		data := func(seq uint32) func(c conn) seg {
			return func(c conn) seg {
				return seg{src: c.client, dst: c.vip, seq: seq, ack: c.cookie + 201, ackf: true, window: 502, ws: -1, payload: make([]byte, 1000)}
			}
		}
		ack := func(a uint32) func(c conn) seg {
			return func(c conn) seg {
				return seg{src: c.backend, dst: c.client, seq: c.bisn + 201, ack: a, ackf: true, window: 500, ws: -1}
			}
		}
		return []step{
			{"data", data(102), "XDP_PASS", "to_backend", est, nil},
			{"more data", data(1102), "XDP_PASS", "to_backend", est, nil},
			{"the backend's ack of the first", ack(1102), "XDP_PASS", "to_client", est, nil},
			{"the backend's ack of both", ack(2102), "XDP_PASS", "to_client", est, nil},
		}
	}
	backendFlight := func() []step {
		data := func(off uint32) func(c conn) seg {
			return func(c conn) seg {
				return seg{src: c.backend, dst: c.client, seq: c.bisn + off, ack: 102, ackf: true, window: 500, ws: -1, payload: make([]byte, 1000)}
			}
		}
		ack := func(off uint32) func(c conn) seg {
			return func(c conn) seg {
				return seg{src: c.client, dst: c.vip, seq: 102, ack: c.cookie + off, ackf: true, window: 502, ws: -1}
			}
		}
		return []step{
			{"data", data(201), "XDP_PASS", "to_client", est, nil},
			{"more data", data(1201), "XDP_PASS", "to_client", est, nil},
			{"the client's ack of the first", ack(1201), "XDP_PASS", "to_backend", est, nil},
			{"the client's ack of both", ack(2201), "XDP_PASS", "to_backend", est, nil},
		}
	}
	cases := []struct {
		name    string
		v6      bool
		waiting bool
		steps   []step
	}{
		{name: "client rst at its next sequence", steps: []step{
			{"rst", fromClient(102, nil), "XDP_PASS", "closed", closing, func(c conn) want {
				return want{from: "client", to: "backend", seq: 102, rst: true}
			}},
		}},
		{name: "client rst in the window", steps: []step{
			{"rst", fromClient(102+1000, nil), "XDP_TX", "challenge_ack", est, toClient},
			{"another rst, rate limited", fromClient(102+2000, nil), "XDP_DROP", "challenge_ack_limited", est, nil},
			{"the client's answer: rst at the challenge's ack", fromClient(102, nil), "XDP_PASS", "closed", closing, nil},
		}},
		{name: "client rst out of the window", steps: []step{
			{"rst", fromClient(102+0x40000000, nil), "XDP_DROP", "rst_out_of_window", est, nil},
			{"rst behind, further than the backend's window from the client's next", fromClient(0xffff0066 /* 102 - 0x10000 */, nil), "XDP_DROP", "rst_out_of_window", est, nil},
		}},
		{name: "client syn on established", steps: []step{
			{"syn+ack", fromClient(5000, func(s *seg) { s.rst, s.syn, s.ackf, s.ack = false, true, true, 77 }), "XDP_TX", "challenge_ack", est, toClient},
		}},
		{name: "backend rst at its next sequence", steps: []step{
			{"rst", fromBackend(201, func(s *seg) { s.ackf, s.ack = true, 102 }), "XDP_PASS", "closed", closing, func(c conn) want {
				return want{from: "vip", to: "client", seq: c.cookie + 201, ack: 102, rst: true, ackf: true, window: 500}
			}},
		}},
		{name: "backend rst in the window", steps: []step{
			{"rst", fromBackend(201+1000, nil), "XDP_TX", "challenge_ack", est, toBackend},
			{"the backend's answer: rst at the challenge's ack", fromBackend(201, nil), "XDP_PASS", "closed", closing, nil},
		}},
		{name: "backend rst out of the window", steps: []step{
			{"rst", fromBackend(201+0x40000000, nil), "XDP_DROP", "rst_out_of_window", est, nil},
			{"rst behind, further than the client's window from the backend's next", fromBackend(0xffff00c9 /* 201 - 0x10000 */, nil), "XDP_DROP", "rst_out_of_window", est, nil},
		}},
		{name: "backend syn on established", steps: []step{
			{"syn", fromBackend(9000, func(s *seg) { s.rst, s.syn = false, true }), "XDP_TX", "challenge_ack", est, toBackend},
		}},
		{name: "ipv6 client rst in the window", v6: true, steps: []step{
			{"rst", fromClient(102+1000, nil), "XDP_TX", "challenge_ack", est, toClient},
		}},
		{name: "ipv6 backend rst in the window", v6: true, steps: []step{
			{"rst", fromBackend(201+1000, nil), "XDP_TX", "challenge_ack", est, toBackend},
		}},
		{name: "waiting for the backend, client rst off the cookie ack's sequence", waiting: true, steps: []step{
			{"rst", fromClient(3, nil), "XDP_DROP", "rst_out_of_window", waiting, nil},
			{"rst at the cookie ack's sequence", fromClient(2, nil), "XDP_DROP", "closed", gone, nil},
		}},
		{name: "waiting for the backend, backend rst not acknowledging our syn", waiting: true, steps: []step{
			{"rst, wrong ack", fromBackend(0, func(s *seg) { s.ackf, s.ack = true, 3 }), "XDP_DROP", "rst_out_of_window", waiting, nil},
			{"rst without ack", fromBackend(0, func(s *seg) { s.ack = 2 }), "XDP_DROP", "rst_out_of_window", waiting, nil},
			{"rst acknowledging our syn", fromBackend(0, func(s *seg) { s.ackf, s.ack = true, 2 }), "XDP_PASS", "backend_refused", gone, func(c conn) want {
				return want{from: "vip", to: "client", seq: c.cookie + 1, ack: 2, rst: true, ackf: true}
			}},
		}},
		// The client aborts with 2,000 bytes in flight: the backend's
		// ACKs for them reach a socket that is gone, which answers each
		// with a RST at its ack; all but the last pass the proxy behind
		// what the backend has acknowledged since. They are stale, not
		// an attack: dropped as rst_stale, on a closing entry and on an
		// established one (the abort itself lost on the way).
		{name: "client aborts with data in flight", steps: append(clientFlight(), []step{
			{"the abort: rst at its next", fromClient(2102, nil), "XDP_PASS", "closed", closing, nil},
			{"the answer to the first ack, behind", fromClient(1102, nil), "XDP_DROP", "rst_stale", closing, nil},
			{"the answer to the last ack", fromClient(2102, nil), "XDP_PASS", "to_backend", closing, nil},
			{"behind, further than the backend's window", fromClient(0xffff0836 /* 2102 - 0x10000 */, nil), "XDP_DROP", "rst_out_of_window", closing, nil},
		}...)},
		{name: "client gone with data in flight, its abort lost", steps: append(clientFlight(), []step{
			{"the answer to the first ack, behind", fromClient(1102, nil), "XDP_DROP", "rst_stale", est, nil},
			{"the answer to the last ack", fromClient(2102, nil), "XDP_PASS", "closed", closing, nil},
		}...)},
		{name: "backend aborts with data in flight", steps: append(backendFlight(), []step{
			{"the abort: rst at its next", fromBackend(2201, nil), "XDP_PASS", "closed", closing, nil},
			{"the answer to the first ack, behind", fromBackend(1201, nil), "XDP_DROP", "rst_stale", closing, nil},
			{"the answer to the last ack", fromBackend(2201, nil), "XDP_PASS", "to_client", closing, nil},
		}...)},
	}
	var results []fixture.Result
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, vip := netip.AddrPortFrom(client4, uint16(47000+i)), netip.AddrPortFrom(svc4, 80)
			if tc.v6 {
				client, vip = netip.AddrPortFrom(client6, uint16(47000+i)), netip.AddrPortFrom(svc6, 443)
			}
			c := openConn(t, p, ns, client, vip, tc.waiting)
			names := map[string]netip.AddrPort{"client": c.client, "vip": c.vip, "backend": c.backend}
			for _, st := range tc.steps {
				before := p.stats(t)
				in := st.seg(c).frame(t)
				v, out, err := ns.run(p.objs.XdpSynproxy, in)
				if err != nil {
					t.Fatal(err)
				}
				if v != st.verdict {
					t.Errorf("%s: %s, want %s", st.name, v, st.verdict)
				}
				if after := p.stats(t); after[st.stat] != before[st.stat]+1 {
					t.Errorf("%s: %s %d -> %d, want one more", st.name, st.stat, before[st.stat], after[st.stat])
				}
				var cv maps.ConnVal
				state := gone
				if err := p.m.Conns.Lookup(c.key, &cv); err == nil {
					state = maps.ConnStateNames[maps.ConnState(cv.State)]
				}
				if state != st.state {
					t.Errorf("%s: entry %s, want %s", st.name, state, st.state)
				}
				if st.out != nil && v == st.verdict {
					w := st.out(c)
					g := parseOut(t, out) // checks the IP and TCP checksums too
					if g.src != names[w.from] || g.dst != names[w.to] || g.seq != w.seq || g.ack != w.ack || g.rst != w.rst || g.ackf != w.ackf ||
						g.syn || g.fin || len(g.payload) != 0 || (!w.rst && g.window != w.window) || g.ts {
						t.Errorf("%s: sent %+v, want %+v (%s -> %s)", st.name, g, w, names[w.from], names[w.to])
					}
				}
				results = append(results, fixture.Result{Name: tc.name + ": " + st.name, Prog: "xdp_synproxy", In: fixture.Hex(in), Verdict: v, Out: fixture.Hex(out)})
			}
		})
	}
	fixture.Check(t, filepath.Join(testenv.RepoRoot(), "testdata", "synproxy", "rst.golden.json"), results)
}

// TestSynproxyTrackingPickup: the sequence tracking of an entry last
// tracked by another host (the peer before a failover: another token in
// trk) may be behind the connection by what moved since the entry was
// last replicated. With this host's own token, a RST at the connection's
// real next sequence would then be out of the window and dropped; with
// the peer's, it gets a challenge ACK instead, and the side's next segment
// re-anchors the tracking, after which a RST at the new next resets.
func TestSynproxyTrackingPickup(t *testing.T) {
	p := loadSynproxyWith(t, map[string]any{"cfg_challenge_ns": uint64(0)})
	ns := newIsolatedNetns(t)
	c := openConn(t, p, ns, netip.AddrPortFrom(client4, 49000), netip.AddrPortFrom(svc4, 80), false)
	var cv maps.ConnVal
	if err := p.m.Conns.Lookup(c.key, &cv); err != nil {
		t.Fatal(err)
	}
	if cv.Cnxt != 102 || cv.Cuna != 102 || cv.Bnxt != c.bisn+201 || cv.Buna != c.bisn+201 || cv.Trk == 0 {
		t.Fatalf("tracking after the exchange: %+v", cv)
	}
	// 1 MiB behind, as a replica can be.
	stale := cv
	stale.Cnxt -= 1 << 20
	stale.Cuna -= 1 << 20
	put := func(v maps.ConnVal) {
		t.Helper()
		if err := p.m.Conns.Put(c.key, v); err != nil {
			t.Fatal(err)
		}
	}
	run := func(what string, s seg, want, stat string) []byte {
		t.Helper()
		before := p.stats(t)
		v, out, err := ns.run(p.objs.XdpSynproxy, s.frame(t))
		if err != nil || v != want {
			t.Fatalf("%s: %s %v, want %s", what, v, err, want)
		}
		if after := p.stats(t); after[stat] != before[stat]+1 {
			t.Errorf("%s: %s not counted", what, stat)
		}
		return out
	}
	rst := func(seq uint32) seg { return seg{src: c.client, dst: c.vip, seq: seq, rst: true, ws: -1} }
	put(stale)
	run("stale, own token: rst at the real next", rst(102), "XDP_DROP", "rst_out_of_window")
	stale.Trk ^= 2 // another host's (tokens are odd)
	put(stale)
	out := run("stale, the peer's token: rst at the real next", rst(102), "XDP_TX", "challenge_ack")
	if g := parseOut(t, out); g.src != c.vip || g.dst != c.client || g.ack != stale.Cuna || g.seq != c.cookie+201 || g.rst {
		t.Errorf("challenge %+v, want ack %d (what the tracking knows)", g, stale.Cuna)
	}
	run("the client's next segment", seg{src: c.client, dst: c.vip, seq: 102, ack: c.cookie + 201, ackf: true, window: 502, ws: -1, payload: make([]byte, 10)}, "XDP_PASS", "to_backend")
	if err := p.m.Conns.Lookup(c.key, &cv); err != nil || cv.Cnxt != 112 || cv.Trk != stale.Trk^2 {
		t.Fatalf("after the client's segment: next %d, token %#x (%v), want 112 and this host's %#x", cv.Cnxt, cv.Trk, err, stale.Trk^2)
	}
	run("rst at the re-anchored next", rst(112), "XDP_PASS", "closed")
}

// TestSynproxyExpireSkipsEmpty: the daemon's sweep (ExpireIfAny) runs
// sp_expire only when the table holds an entry (the program's run count,
// from the kernel's BPF stats); an entry idle past its timeout still goes.
func TestSynproxyExpireSkipsEmpty(t *testing.T) {
	p := loadSynproxy(t)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Skipf("BPF run statistics (BPF_ENABLE_STATS): %v", err)
	}
	defer stats.Close()
	runs := func() uint64 {
		st, err := p.objs.SpExpire.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.RunCount
	}
	later := maps.TAINow() + uint64(maps.DefaultTimeouts.Established)*2
	key := maps.ConnKey{Cport: 42200, Vport: 80, Proto: 6}
	for _, c := range []struct {
		what    string
		entry   bool
		swept   bool
		deleted uint32
	}{
		{"empty table", false, false, 0},
		{"one idle entry", true, true, 1},
		{"empty again", false, false, 0},
	} {
		if c.entry {
			if err := p.m.Conns.Put(key, maps.ConnVal{}); err != nil {
				t.Fatal(err)
			}
		}
		before := runs()
		n, _, swept, err := maps.ExpireIfAny(p.objs.SpExpire, p.m.Conns, later, maps.DefaultTimeouts)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		ran := runs() - before
		if swept != c.swept || n != c.deleted || ran != map[bool]uint64{true: 1}[c.swept] {
			t.Errorf("%s: swept %v (sp_expire ran %d times), %d deleted; want swept %v, %d deleted", c.what, swept, ran, n, c.swept, c.deleted)
		}
	}
}
