package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/fixture"
	"github.com/tandem-net/tandem/tools/testenv"
)

var (
	spKeys = [2][8]byte{{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}, {1, 2, 3, 4, 5, 6, 7, 8}}
	svc4   = netip.MustParseAddr("10.0.0.100")
	svc6   = netip.MustParseAddr("2001:db8::100")
	// Backends on a subnet no route leads to: the fixture runner's
	// namespace has none, so a rewritten packet is left to the kernel
	// (XDP_PASS) rather than redirected.
	backends4 = []netip.AddrPort{netip.MustParseAddrPort("10.9.0.1:8080"), netip.MustParseAddrPort("10.9.0.2:8080")}
	backends6 = []netip.AddrPort{netip.MustParseAddrPort("[fd09::1]:8443"), netip.MustParseAddrPort("[fd09::2]:8443")}
)

type proxy struct {
	objs *bpf.SynproxyObjects
	m    *maps.SynproxyMaps
	sync *maps.SyncMaps
	cm   *chain.Maps // the chain objs.XdpSynproxy runs behind
}

// loadSynproxy loads the SYN proxy unpinned with services on svc4:80 and
// svc6:443 and the fixture secrets, slot 0 in use.
func loadSynproxy(t testing.TB) *proxy {
	t.Helper()
	return loadSynproxyWith(t, nil)
}

// loadSynproxyWith also sets load-time constants (cfg_*), and lets
// tweaks change the spec (map sizes) before it is loaded.
func loadSynproxyWith(t testing.TB, consts map[string]any, tweaks ...func(*ebpf.CollectionSpec)) *proxy {
	t.Helper()
	testenv.RequireRoot(t)
	spec, err := bpf.LoadSynproxy()
	if err != nil {
		t.Fatal(err)
	}
	return loadSynproxySpec(t, spec, consts, tweaks...)
}

// loadSynproxySpec is loadSynproxyWith for a spec read elsewhere (another
// build of synproxy.c, for the benchmarks).
func loadSynproxySpec(t testing.TB, spec *ebpf.CollectionSpec, consts map[string]any, tweaks ...func(*ebpf.CollectionSpec)) *proxy {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tw := range tweaks {
		tw(spec)
	}
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	inner := spec.Maps[bpf.SynproxyMapSyncRings].InnerMap
	inner.MaxEntries = 1 << 16
	var objs bpf.SynproxyObjects
	cm := newChainMaps(t)
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: cm.Replacements(spec)}); err != nil {
		t.Fatalf("load (the verifier must accept every program): %+v", err)
	}
	// The proxy's XDP program is a stage: tests run it behind the
	// chain's entry, as an interface runs it.
	objs.XdpSynproxy = singleStage(t, cm, chain.SlotSynproxy, objs.XdpSynproxy)
	p := &proxy{objs: &objs, m: maps.SynproxyMapsOf(&objs.SynproxyMaps), cm: cm,
		sync: &maps.SyncMaps{Rings: objs.SyncRings, Epoch: objs.SyncEpoch, Overflow: objs.SyncOverflow}}
	if err := p.sync.SetupRings(inner); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.sync.Close(); objs.Close() })
	for _, s := range []struct {
		vip      netip.Addr
		port     uint16
		backends []netip.AddrPort
	}{{svc4, 80, backends4}, {svc6, 443, backends6}} {
		if _, err := p.m.SetService(s.vip, s.port, s.backends); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.m.SetCookieKeys(spKeys, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

type synOpts struct {
	mss    uint16
	ws     int // -1: none
	sack   bool
	tsval  uint32 // 0: no timestamps
	vlan   bool
	v6     bool
	client netip.Addr
	port   uint16
	isn    uint32
}

func (o synOpts) tcpOptions() []layers.TCPOption {
	var opts []layers.TCPOption
	if o.mss != 0 {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: binary.BigEndian.AppendUint16(nil, o.mss)})
	}
	if o.sack {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2})
	}
	if o.tsval != 0 {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, o.tsval), 0)})
	}
	if o.ws >= 0 {
		opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
			layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{byte(o.ws)}})
	}
	return opts
}

// segment builds a TCP segment from the client to the service.
func (o synOpts) segment(t testing.TB, set func(*layers.TCP)) []byte {
	t.Helper()
	var nl gopacket.NetworkLayer
	var ipl gopacket.SerializableLayer
	et, dst, dport := layers.EthernetTypeIPv4, svc4, uint16(80)
	client := o.client
	if o.v6 {
		et, dst, dport = layers.EthernetTypeIPv6, svc6, 443
		if !client.IsValid() {
			client = client6
		}
		ip := ip6(client, dst, layers.IPProtocolTCP)
		nl, ipl = ip, ip
	} else {
		if !client.IsValid() {
			client = client4
		}
		ip := ip4(client, dst, layers.IPProtocolTCP)
		nl, ipl = ip, ip
	}
	port := o.port
	if port == 0 {
		port = 40000
	}
	tl := &layers.TCP{SrcPort: layers.TCPPort(port), DstPort: layers.TCPPort(dport), Seq: o.isn, SYN: true, Window: 64240, Options: o.tcpOptions()}
	if set != nil {
		set(tl)
	}
	tl.SetNetworkLayerForChecksum(nl)
	if o.vlan {
		e := eth(layers.EthernetTypeDot1Q)
		return serialize(t, e, &layers.Dot1Q{VLANIdentifier: 7, Type: et}, ipl, tl)
	}
	return serialize(t, eth(et), ipl, tl)
}

// flow is the cookie flow of o's segment.
func (o synOpts) flow() maps.CookieFlow {
	f := maps.CookieFlow{Client: client4, VIP: svc4, ClientPort: 40000, VIPPort: 80, ClientISN: o.isn}
	if o.v6 {
		f.Client, f.VIP, f.VIPPort = client6, svc6, 443
	}
	if o.client.IsValid() {
		f.Client = o.client
	}
	if o.port != 0 {
		f.ClientPort = o.port
	}
	return f
}

func (p *proxy) stats(t testing.TB) map[string]uint64 {
	t.Helper()
	s, err := p.m.ProxyStats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSynproxySynAck: every SYN to a service is answered in place with a
// SYN-ACK of window 0 whose ISN is a cookie that decodes, with our keys,
// to what the client offered; options mirror the offer; checksums are
// valid; the bytes are pinned by a golden file.
func TestSynproxySynAck(t *testing.T) {
	p := loadSynproxy(t)
	cases := []struct {
		name string
		o    synOpts
		want maps.CookieOpts
	}{
		{"ipv4 linux-like (mss, sack, ts, ws 7)", synOpts{mss: 1460, ws: 7, sack: true, tsval: 12345, isn: 1000}, maps.CookieOpts{MSS: 1460, WScale: 7, SACK: true}},
		{"ipv4 no options", synOpts{ws: -1, isn: 0xffffffff}, maps.CookieOpts{MSS: 536, WScale: maps.CookieWSNone}},
		{"ipv4 mss 1400 ws 14 no ts", synOpts{mss: 1400, ws: 14, isn: 7}, maps.CookieOpts{MSS: 1220, WScale: 14}},
		{"ipv4 ws above 14 is 14", synOpts{mss: 1460, ws: 20, isn: 8}, maps.CookieOpts{MSS: 1460, WScale: 14}},
		{"ipv4 in a vlan", synOpts{mss: 1460, ws: 2, sack: true, tsval: 1, vlan: true, isn: 9}, maps.CookieOpts{MSS: 1460, WScale: 2, SACK: true}},
		{"ipv6 mss 1440 sack ts", synOpts{mss: 1440, ws: -1, sack: true, tsval: 99, v6: true, isn: 0x80000000}, maps.CookieOpts{MSS: 1440, WScale: maps.CookieWSNone, SACK: true}},
		{"ipv6 ws 0", synOpts{mss: 1220, ws: 0, v6: true, isn: 5}, maps.CookieOpts{MSS: 1220, WScale: 0}},
		{"ipv6 linux-like (mss, sack, ts, ws 7)", synOpts{mss: 1440, ws: 7, sack: true, tsval: 4242, v6: true, isn: 11}, maps.CookieOpts{MSS: 1440, WScale: 7, SACK: true}},
		// Linux's layout from an IPv4-mapped source: its cookie hashes the
		// flow as IPv4 (cookie_mac, maps.CheckCookie), in place or not.
		{"ipv6 linux-like from an ipv4-mapped source", synOpts{mss: 1440, ws: 7, sack: true, tsval: 4243, v6: true, isn: 12, client: netip.MustParseAddr("::ffff:198.51.100.9")}, maps.CookieOpts{MSS: 1440, WScale: 7, SACK: true}},
	}
	var results []fixture.Result
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := c.o.segment(t, nil)
			verdict, out, err := fixture.Run(p.objs.XdpSynproxy, in)
			if err != nil {
				t.Fatal(err)
			}
			if verdict != "XDP_TX" {
				t.Fatalf("verdict %s, want XDP_TX", verdict)
			}
			pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
			e := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if !bytes.Equal(e.SrcMAC, macB) || !bytes.Equal(e.DstMAC, macA) {
				t.Errorf("MACs not swapped: %s -> %s", e.SrcMAC, e.DstMAC)
			}
			if c.o.vlan && pkt.Layer(layers.LayerTypeDot1Q) == nil {
				t.Errorf("the VLAN tag is gone")
			}
			tl, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if tl == nil {
				t.Fatalf("no TCP in the answer: %s", pkt)
			}
			if !tl.SYN || !tl.ACK || tl.RST || tl.FIN || tl.Window != 0 || tl.Ack != c.o.isn+1 || tl.SrcPort != layers.TCPPort(c.o.flow().VIPPort) || tl.DstPort != 40000 {
				t.Errorf("SYN-ACK: syn %v ack %v window %d ack %d ports %d->%d", tl.SYN, tl.ACK, tl.Window, tl.Ack, tl.SrcPort, tl.DstPort)
			}
			got, ok := maps.CheckCookie(spKeys, c.o.flow(), tl.Seq)
			if !ok || got != c.want {
				t.Errorf("cookie %#08x decodes to %+v (valid %v), want %+v", tl.Seq, got, ok, c.want)
			}
			if want := maps.Cookie(spKeys[0], 0, c.o.flow(), maps.CookieOpts{MSS: c.o.mss, WScale: wsOpt(c.o.ws), SACK: c.o.sack}); want != tl.Seq {
				t.Errorf("the datapath's cookie %#08x, Go's %#08x", tl.Seq, want)
			}
			seen := map[layers.TCPOptionKind][]byte{}
			for _, o := range tl.Options {
				seen[o.OptionType] = o.OptionData
			}
			mss := uint16(1460)
			if c.o.v6 {
				mss = 1440
			}
			if d := seen[layers.TCPOptionKindMSS]; len(d) != 2 || binary.BigEndian.Uint16(d) != mss {
				t.Errorf("MSS option %x, want %d", d, mss)
			}
			if _, ok := seen[layers.TCPOptionKindSACKPermitted]; ok != c.o.sack {
				t.Errorf("SACK permitted: %v, the client offered %v", ok, c.o.sack)
			}
			if d, ok := seen[layers.TCPOptionKindWindowScale]; ok != (c.o.ws >= 0) || (ok && d[0] != 7) {
				t.Errorf("window scale %x (present %v), the client offered %d", d, ok, c.o.ws)
			}
			if d, ok := seen[layers.TCPOptionKindTimestamps]; ok != (c.o.tsval != 0) || (ok && binary.BigEndian.Uint32(d[4:]) != c.o.tsval) {
				t.Errorf("timestamps %x (present %v), the client sent tsval %d", d, ok, c.o.tsval)
			}
			checksumsOK(t, pkt)
			results = append(results, fixture.Result{Name: c.name, Prog: "xdp_synproxy", In: fixture.Hex(in), Verdict: verdict, Out: fixture.Hex(out)})
		})
	}
	if s := p.stats(t); s["syn_answered"] != uint64(len(cases)) {
		t.Errorf("syn_answered %d, want %d", s["syn_answered"], len(cases))
	}
	fixture.Check(t, filepath.Join(testenv.RepoRoot(), "testdata", "synproxy", "synack.golden.json"), results)
}

// wsOpt is a fixture's window scale as a cookie carries it.
func wsOpt(ws int) uint8 {
	if ws < 0 {
		return maps.CookieWSNone
	}
	return uint8(min(ws, 14))
}

// checksumsOK verifies the IP header checksum (IPv4) and the TCP checksum
// over the pseudo header, straight from the bytes.
func checksumsOK(t *testing.T, pkt gopacket.Packet) {
	t.Helper()
	sum := func(b []byte, s uint32) uint32 {
		for i := 0; i+1 < len(b); i += 2 {
			s += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			s += uint32(b[len(b)-1]) << 8
		}
		return s
	}
	fold := func(s uint32) uint16 {
		for s > 0xffff {
			s = s&0xffff + s>>16
		}
		return uint16(s)
	}
	tl := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	seg := append(append([]byte{}, tl.Contents...), tl.Payload...)
	var pseudo []byte
	if ip, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		if fold(sum(ip.Contents, 0)) != 0xffff {
			t.Errorf("IPv4 header checksum %#04x is wrong", ip.Checksum)
		}
		if int(ip.Length) != len(ip.Contents)+len(seg) {
			t.Errorf("IPv4 total length %d, header+segment %d", ip.Length, len(ip.Contents)+len(seg))
		}
		pseudo = append(append(append([]byte{}, ip.SrcIP.To4()...), ip.DstIP.To4()...), 0, 6, byte(len(seg)>>8), byte(len(seg)))
	} else {
		ip := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		if int(ip.Length) != len(seg) {
			t.Errorf("IPv6 payload length %d, segment %d", ip.Length, len(seg))
		}
		pseudo = append(append(append([]byte{}, ip.SrcIP...), ip.DstIP...), 0, 0, byte(len(seg)>>8), byte(len(seg)), 0, 0, 0, 6)
	}
	if fold(sum(seg, sum(pseudo, 0))) != 0xffff {
		t.Errorf("TCP checksum %#04x is wrong", tl.Checksum)
	}
}

// ack is the client's third handshake packet for o, echoing cookie.
func (o synOpts) ack(t testing.TB, cookie uint32) []byte {
	return o.segment(t, func(l *layers.TCP) {
		l.SYN, l.ACK, l.Seq, l.Ack, l.Window = false, true, o.isn+1, cookie+1, 502
		var opts []layers.TCPOption
		if o.tsval != 0 {
			opts = append(opts, layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1}, layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
				layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, o.tsval+1), cookie)})
		}
		l.Options = opts
	})
}

// synCookie runs o's SYN and returns the cookie the proxy answered with.
func (p *proxy) synCookie(t testing.TB, o synOpts) uint32 {
	t.Helper()
	_, out, err := fixture.Run(p.objs.XdpSynproxy, o.segment(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	tl := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeTCP).(*layers.TCP)
	return tl.Seq
}

// TestSynproxyOptionLayouts: a SYN with Linux's option layout is answered
// in place (syn_fast), one with any other layout, or with link padding
// after it, by the general path (the option walk, the SYN-ACK built in
// scratch memory): the same SYN-ACK, byte for byte, for each set of
// values.
func TestSynproxyOptionLayouts(t *testing.T) {
	p := loadSynproxy(t)
	for _, o := range []synOpts{
		{mss: 1460, ws: 7, sack: true, tsval: 0xdeadbeef, isn: 7},
		{mss: 1220, ws: 0, sack: true, tsval: 1, isn: 8, v6: true},
		{mss: 536, ws: 15, sack: true, tsval: 0xffffffff, isn: 9},
	} {
		linux := o.segment(t, nil)
		// The same options in another order: MSS, NOP, WS, SACK_PERM, TS.
		other := o.segment(t, func(l *layers.TCP) {
			opts := o.tcpOptions()
			l.Options = []layers.TCPOption{opts[0], opts[3], opts[4], opts[1], opts[2]}
		})
		if bytes.Equal(linux[len(linux)-20:], other[len(other)-20:]) {
			t.Fatal("the two layouts are the same bytes")
		}
		_, a, err := fixture.Run(p.objs.XdpSynproxy, linux)
		if err != nil {
			t.Fatal(err)
		}
		_, b, err := fixture.Run(p.objs.XdpSynproxy, other)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%+v: Linux's layout answered\n%x\nanother layout\n%x", o, a, b)
		}
		// Six bytes of link padding: not the fast path's frame (the
		// general path trims it), the same answer.
		_, c, err := fixture.Run(p.objs.XdpSynproxy, append(bytes.Clone(linux), 0, 0, 0, 0, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, c) {
			t.Errorf("%+v: Linux's layout answered\n%x\nwith padding after it\n%x", o, a, c)
		}
	}
}

// TestSynproxyCookieAck: a valid cookie ACK makes a connection entry with
// what the cookie carried and queues it for the state sync; a repeat is a
// duplicate; forged and expired cookies are counted and dropped; a cookie
// made just before a rotation still validates after it.
func TestSynproxyCookieAck(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	run := func(frame []byte) string {
		t.Helper()
		v, _, err := ns.run(p.objs.XdpSynproxy, frame)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	o := synOpts{mss: 1460, ws: 7, sack: true, tsval: 777, isn: 0xfffffffe} // the ISN wraps at +1
	cookie := p.synCookie(t, o)
	if v := run(o.ack(t, cookie)); v != "XDP_PASS" {
		t.Fatalf("cookie ACK: %s, want XDP_PASS (the backend SYN, no route in the fixture namespace)", v)
	}
	key := maps.ConnKey{Caddr: client4.As16(), Vaddr: svc4.As16(), Cport: maps.HostPort(40000), Vport: maps.HostPort(80), Proto: 6}
	var cv maps.ConnVal
	if err := p.m.Conns.Lookup(key, &cv); err != nil {
		t.Fatalf("no connection entry after a valid cookie ACK: %v", err)
	}
	if cv.ClientIsn != o.isn || cv.Cookie != cookie || cv.Mss != 1460 || cv.Wscale != 7 || cv.Flags != 1|2|4 || cv.State != 1 || cv.Sync.Version != 1 || cv.Backend >= 2 ||
		netip.AddrPortFrom(netip.AddrFrom16(cv.Baddr).Unmap(), maps.HostPort(cv.Bport)) != backends4[cv.Backend] || cv.ClientTsval != o.tsval+1 || cv.ClientWin != 502 {
		t.Errorf("connection entry %+v", cv)
	}
	var recs []maps.SyncRec
	if _, err := p.sync.Drain(func(r *maps.SyncRec) { recs = append(recs, *r) }); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].MapId != uint32(bpf.SynproxySyncMapIdSYNC_MAP_CONN) || recs[0].KeyLen != 40 {
		t.Errorf("dirty ring records %+v, want one for the connection entry", recs)
	}
	if v := run(o.ack(t, cookie)); v != "XDP_DROP" || p.stats(t)["client_waiting_dropped"] != 1 {
		t.Errorf("repeated ACK within the retry interval: %s, client_waiting_dropped %d", v, p.stats(t)["client_waiting_dropped"])
	}

	// Forged: another flow's cookie, a flipped MAC bit, a flipped option bit.
	o2 := synOpts{mss: 1460, ws: -1, isn: 50, port: 40001}
	c2 := p.synCookie(t, o2)
	for i, c := range []uint32{cookie, c2 ^ 0x80000000, c2 ^ 0x10} {
		if v := run(o2.ack(t, c)); v != "XDP_DROP" {
			t.Errorf("forged cookie %d: %s", i, v)
		}
	}
	if n := p.stats(t)["cookie_bad"]; n != 3 {
		t.Errorf("cookie_bad %d, want 3", n)
	}
	// Rotation: once, the cookie still validates (overlap); twice, it
	// has expired.
	o3 := synOpts{mss: 536, ws: -1, isn: 60, port: 40002}
	c3 := p.synCookie(t, o3)
	o4 := synOpts{mss: 536, ws: -1, isn: 70, port: 40003}
	c4 := p.synCookie(t, o4)
	if err := p.m.RotateCookieKey([8]byte{9, 9, 9, 9, 9, 9, 9, 9}); err != nil {
		t.Fatal(err)
	}
	if v := run(o3.ack(t, c3)); v != "XDP_PASS" || p.stats(t)["cookie_ok"] != 2 {
		t.Errorf("a cookie from before one rotation: %s, cookie_ok %d", v, p.stats(t)["cookie_ok"])
	}
	if err := p.m.RotateCookieKey([8]byte{7, 7, 7, 7, 7, 7, 7, 7}); err != nil {
		t.Fatal(err)
	}
	if v := run(o4.ack(t, c4)); v != "XDP_DROP" || p.stats(t)["cookie_bad"] != 4 {
		t.Errorf("a cookie from before two rotations: %s, cookie_bad %d", v, p.stats(t)["cookie_bad"])
	}
}

// partialCsum returns an untagged IPv4 TCP frame with its TCP checksum
// field set the way CHECKSUM_PARTIAL leaves it: the folded sum of the
// pseudo header alone, not complemented.
func partialCsum(frame []byte) []byte {
	f := bytes.Clone(frame)
	ip := f[14:]
	tcpLen := int(binary.BigEndian.Uint16(ip[2:])) - int(ip[0]&0xf)*4
	sum := uint32(6) + uint32(tcpLen)
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[int(ip[0]&0xf)*4+16:], uint16(sum))
	return f
}

// flip returns frame with one bit of byte off flipped.
func flip(frame []byte, off int) []byte {
	f := bytes.Clone(frame)
	f[off] ^= 0x10
	return f
}

// TestSynproxyOthers: what is not a handshake to a service passes or is
// counted and dropped; so is a SYN whose checksum is wrong, and a
// backend's segment that no state explains.
func TestSynproxyOthers(t *testing.T) {
	p := loadSynproxy(t)
	o := synOpts{mss: 1460, ws: -1, isn: 1}
	// A live connection, for the backend's strays.
	client, _, backend, _, bisn := establish(t, p, newIsolatedNetns(t), 47000)
	cases := []struct {
		name, want, stat string
		frame            []byte
	}{
		{"syn to a non-service port", "XDP_PASS", "", o.segment(t, func(l *layers.TCP) { l.DstPort = 81 })},
		{"udp", "XDP_PASS", "", serialize(t, eth(layers.EthernetTypeIPv4), ip4(client4, svc4, layers.IPProtocolUDP), udp(ip4(client4, svc4, layers.IPProtocolUDP)))},
		{"fin without a connection", "XDP_DROP", "bad_flags", o.segment(t, func(l *layers.TCP) { l.SYN, l.FIN, l.ACK = false, true, true })},
		{"syn+fin", "XDP_DROP", "bad_flags", o.segment(t, func(l *layers.TCP) { l.FIN = true })},
		{"rst", "XDP_DROP", "bad_flags", o.segment(t, func(l *layers.TCP) { l.SYN, l.RST = false, true })},
		// A bit flipped on the way: in the checksum, in the window, in
		// the IPv6 source address (the pseudo header).
		{"syn, tcp checksum wrong", "XDP_DROP", "bad_checksum", flip(o.segment(t, nil), 14+20+16)},
		{"syn, window corrupted", "XDP_DROP", "bad_checksum", flip(o.segment(t, nil), 14+20+14)},
		{"ipv6 syn, source corrupted", "XDP_DROP", "bad_checksum", flip(synOpts{mss: 1440, ws: 7, sack: true, tsval: 5, isn: 1, v6: true}.segment(t, nil), 14+8+15)},
		{"syn, checksum intact", "XDP_TX", "syn_answered", o.segment(t, nil)},
		// A local socket's SYN on a veth with tx offload: the checksum
		// field holds only the pseudo header's sum.
		{"syn, pseudo-header sum only (tx offload)", "XDP_TX", "syn_answered", partialCsum(o.segment(t, nil))},
		// Found by FuzzSynproxyXDP (testdata/fuzz/FuzzSynproxyXDP/d1a65cd2c3804160):
		// a SYN without ACK from the backend of a live connection was
		// dropped without a counter. Now it draws a challenge ACK (RFC
		// 5961 section 4), counted.
		{"backend syn without ack on a live connection", "XDP_TX", "challenge_ack",
			seg{src: backend, dst: client, seq: bisn + 1, syn: true, window: 300, ws: -1}.frame(t)},
	}
	for _, c := range cases {
		before := p.stats(t)
		v, _, err := fixture.Run(p.objs.XdpSynproxy, c.frame)
		if err != nil {
			t.Fatal(err)
		}
		if v != c.want {
			t.Errorf("%s: %s, want %s", c.name, v, c.want)
		}
		if c.stat != "" && p.stats(t)[c.stat] != before[c.stat]+1 {
			t.Errorf("%s: %s not counted", c.name, c.stat)
		}
	}
	// Without a secret nothing is answered.
	if err := p.m.SetCookieKeys([2][8]byte{}, 0); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := fixture.Run(p.objs.XdpSynproxy, o.segment(t, nil)); v != "XDP_DROP" || p.stats(t)["no_secret"] != 1 {
		t.Errorf("SYN without a secret: %s", v)
	}
}

// BenchmarkSynproxySyn: ns per SYN answered, the program's own run time
// as the kernel measures it (BPF_ENABLE_STATS), against the XDP floor (a
// program that only drops) in the same run.
func BenchmarkSynproxySyn(b *testing.B) {
	p := loadSynproxy(b)
	// The floor drops: with live frames an XDP_PASS would go up the stack.
	drop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer drop.Close()
	for name, o := range map[string]synOpts{
		"ipv4 syn (mss, sack, ts, ws)": {mss: 1460, ws: 7, sack: true, tsval: 1, isn: 1},
		"ipv6 syn (mss, sack, ts, ws)": {mss: 1440, ws: 7, sack: true, tsval: 1, isn: 1, v6: true},
		"ipv4 syn (no options)":        {ws: -1, isn: 1},
	} {
		frame := o.segment(b, nil)
		b.Run(name, func(b *testing.B) {
			// One run per call: repeats would run on the SYN-ACK the first
			// run made, and live frames recycle only a batch here.
			const n = 1 << 14
			per := func(prog *ebpf.Program) float64 {
				ns, err := bench.RunTime(prog, func() error {
					for range n {
						if _, err := prog.Run(&ebpf.RunOptions{Data: frame}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				return ns
			}
			var syn, floor float64
			for b.Loop() {
				before := p.stats(b)["syn_answered"]
				syn, floor = per(p.objs.XdpSynproxy), per(drop)
				if got := p.stats(b)["syn_answered"] - before; got != n {
					b.Fatalf("%d SYNs answered of %d: the benchmark did not run the SYN path", got, n)
				}
			}
			b.ReportMetric(syn, "ns/syn")
			if _, err := bench.Record(bench.Result{Name: "xdp_synproxy " + name + ", program run time", Unit: "ns/syn", Value: syn,
				Anchor: "xdp return XDP_DROP, same runs", AnchorValue: floor, Goal: "record only (the floor is what any XDP program costs)"}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestSynproxyGate: a VIP under election (an entry in vip_gate) is served
// only while this host owns it: a SYN and a cookie ACK to a VIP the gate
// says the peer owns are dropped and counted, then answered once the
// entry flips; a VIP with no entry is served as before.
func TestSynproxyGate(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	key := maps.KeyOf(svc4)
	set := func(owned uint32) {
		t.Helper()
		if err := p.objs.VipGate.Put(key, maps.VIPEntry{Owned: owned}); err != nil {
			t.Fatal(err)
		}
	}
	client := netip.AddrPortFrom(client4, 45000)
	syn := seg{src: client, dst: netip.AddrPortFrom(svc4, 80), seq: 1, syn: true, window: 64240, mss: 1460, ws: 7, ts: true, tsval: 5}
	set(0)
	if v, _, err := ns.run(p.objs.XdpSynproxy, syn.frame(t)); err != nil || v != "XDP_DROP" {
		t.Fatalf("SYN to a VIP the peer owns: %s %v", v, err)
	}
	ack := seg{src: client, dst: netip.AddrPortFrom(svc4, 80), seq: 2, ack: 12345, ackf: true, window: 502, ws: -1}
	if v, _, err := ns.run(p.objs.XdpSynproxy, ack.frame(t)); err != nil || v != "XDP_DROP" {
		t.Fatalf("ACK to a VIP the peer owns: %s %v", v, err)
	}
	if st := p.stats(t); st["not_owner"] != 2 || st["syn_answered"] != 0 || st["cookie_bad"] != 0 {
		t.Errorf("counters while not the owner: %v", st)
	}
	set(1)
	if v, _, err := ns.run(p.objs.XdpSynproxy, syn.frame(t)); err != nil || v != "XDP_TX" {
		t.Fatalf("SYN once the owner: %s %v", v, err)
	}
	if err := p.objs.VipGate.Delete(key); err != nil {
		t.Fatal(err)
	}
	syn6 := seg{src: netip.AddrPortFrom(client6, 45001), dst: netip.AddrPortFrom(svc6, 443), seq: 1, syn: true, window: 64240, mss: 1440, ws: -1}
	if v, _, err := ns.run(p.objs.XdpSynproxy, syn6.frame(t)); err != nil || v != "XDP_TX" {
		t.Fatalf("SYN to a VIP not under election: %s %v", v, err)
	}
	if st := p.stats(t); st["not_owner"] != 2 || st["syn_answered"] != 2 {
		t.Errorf("counters after: %v", st)
	}
}

// TestSynproxySynPayload: a SYN with a payload (TCP Fast Open data) has
// its checksum verified over every byte, not only the 60 of an
// options-only SYN: corrupted anywhere, it is dropped and counted; intact
// (any length, odd ones too) or carrying only the pseudo header's sum
// (a local socket's, tx offload), it is answered, the payload unread.
// Pinned by testdata/synproxy/syn_payload.golden.json.
func TestSynproxySynPayload(t *testing.T) {
	p := loadSynproxy(t)
	data := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + 1)
		}
		return b
	}
	syn := func(n int) []byte {
		s := seg{src: netip.AddrPortFrom(client4, 48000), dst: netip.AddrPortFrom(svc4, 80), seq: 77, syn: true, window: 64240, mss: 1460, ws: 7, sackPerm: true, ts: true, tsval: 5, payload: data(n)}
		return s.frame(t)
	}
	syn6 := seg{src: netip.AddrPortFrom(client6, 48001), dst: netip.AddrPortFrom(svc6, 443), seq: 78, syn: true, window: 64240, mss: 1440, ws: -1, payload: data(1000)}.frame(t)
	const l4 = 14 + 20 // the IPv4 frames' TCP header
	cases := []struct {
		name, want, stat string
		frame            []byte
	}{
		{"16 bytes, intact", "XDP_TX", "syn_answered", syn(16)},
		{"16 bytes, a payload bit flipped", "XDP_DROP", "bad_checksum", flip(syn(16), l4+40+3)},
		{"1400 bytes, intact", "XDP_TX", "syn_answered", syn(1400)},
		{"1400 bytes, the last byte's bit flipped", "XDP_DROP", "bad_checksum", flip(syn(1400), l4+40+1399)},
		{"1400 bytes, the 61st byte's bit flipped", "XDP_DROP", "bad_checksum", flip(syn(1400), l4+60)},
		{"3 bytes (odd length), intact", "XDP_TX", "syn_answered", syn(3)},
		{"3 bytes (odd length), the last byte's bit flipped", "XDP_DROP", "bad_checksum", flip(syn(3), l4+40+2)},
		{"1400 bytes, pseudo-header sum only (tx offload)", "XDP_TX", "syn_answered", partialCsum(syn(1400))},
		{"ipv6, 1000 bytes, intact", "XDP_TX", "syn_answered", syn6},
		{"ipv6, 1000 bytes, a bit flipped", "XDP_DROP", "bad_checksum", flip(syn6, 14+40+20+500)},
	}
	var results []fixture.Result
	for _, c := range cases {
		before := p.stats(t)
		v, out, err := fixture.Run(p.objs.XdpSynproxy, c.frame)
		if err != nil {
			t.Fatal(err)
		}
		if v != c.want {
			t.Errorf("%s: %s, want %s", c.name, v, c.want)
		}
		if after := p.stats(t); after[c.stat] != before[c.stat]+1 {
			t.Errorf("%s: %s not counted", c.name, c.stat)
		}
		if v == "XDP_TX" {
			pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
			if tl, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); tl == nil || !tl.SYN || !tl.ACK || tl.Window != 0 || len(tl.Payload) != 0 {
				t.Errorf("%s: the answer is not a SYN-ACK of window 0 without payload: %s", c.name, pkt)
			}
			checksumsOK(t, pkt)
		}
		results = append(results, fixture.Result{Name: c.name, Prog: "xdp_synproxy", In: fixture.Hex(c.frame), Verdict: v, Out: fixture.Hex(out)})
	}
	fixture.Check(t, filepath.Join(testenv.RepoRoot(), "testdata", "synproxy", "syn_payload.golden.json"), results)
}
