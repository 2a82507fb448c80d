package bpf_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/testenv"
)

var (
	espGW4   = netip.MustParseAddr("10.0.0.100")
	espGW6   = netip.MustParseAddr("2001:db8::100")
	espPeer4 = netip.MustParseAddr("198.51.100.7")
	espPeer6 = netip.MustParseAddr("2001:db8:1::7")
)

// loadESP loads the ESP stage unpinned behind a chain entry.
func loadESP(t testing.TB) (*bpf.EspObjects, *maps.SAMaps) {
	t.Helper()
	testenv.RequireRoot(t)
	spec, err := bpf.LoadEsp()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	var objs bpf.EspObjects
	cm := newChainMaps(t)
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: cm.Replacements(spec)}); err != nil {
		t.Fatalf("load (the verifier must accept every program): %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	objs.XdpEsp = singleStage(t, cm, chain.SlotESP, objs.XdpEsp)
	return &objs, maps.SAMapsOf(&objs)
}

// espPayload is an ESP header and a few bytes of "ciphertext".
func espPayload(spi, seq uint32) gopacket.Payload {
	b := make([]byte, 8+16)
	binary.BigEndian.PutUint32(b, spi)
	binary.BigEndian.PutUint32(b[4:], seq)
	return b
}

// espFrame is ESP over IP to dst.
func espFrame(t testing.TB, dst netip.Addr, spi, seq uint32) []byte {
	if dst.Is4() {
		return serialize(t, eth(layers.EthernetTypeIPv4), ip4(espPeer4, dst, layers.IPProtocolESP), espPayload(spi, seq))
	}
	return serialize(t, eth(layers.EthernetTypeIPv6), ip6(espPeer6, dst, layers.IPProtocolESP), espPayload(spi, seq))
}

// udpFrame is a UDP datagram to dst:dport carrying raw.
func udpFrame(t testing.TB, dst netip.Addr, dport uint16, raw []byte) []byte {
	var ip gopacket.NetworkLayer
	var e *layers.Ethernet
	if dst.Is4() {
		ip, e = ip4(espPeer4, dst, layers.IPProtocolUDP), eth(layers.EthernetTypeIPv4)
	} else {
		ip, e = ip6(espPeer6, dst, layers.IPProtocolUDP), eth(layers.EthernetTypeIPv6)
	}
	u := &layers.UDP{SrcPort: 4500, DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(ip)
	return serialize(t, e, ip.(gopacket.SerializableLayer), u, gopacket.Payload(raw))
}

func natTFrame(t testing.TB, dst netip.Addr, spi, seq uint32) []byte {
	return udpFrame(t, dst, 4500, espPayload(spi, seq))
}

// window returns a state with top seq (64 bits), window w and the given
// sequence numbers (64 bits, in the window) received.
func window(dst netip.Addr, spi uint32, esn bool, top uint64, w uint32, got ...uint64) maps.SAState {
	s := maps.SAState{Dst: dst, SPI: spi, ESN: esn, Seq: uint32(top), SeqHi: uint32(top >> 32), Window: w, Bitmap: make([]uint32, (w+31)/32)}
	for _, g := range got {
		if top-g < uint64(w) {
			s.SetBit(uint32(g))
		}
	}
	return s
}

func mustPut(t testing.TB, m *maps.SAMaps, s maps.SAState) {
	t.Helper()
	if _, err := m.PutSA(s); err != nil {
		t.Fatal(err)
	}
}

func runVerdict(t testing.TB, p *ebpf.Program, frame []byte) uint32 {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: frame, Repeat: 1})
	if err != nil {
		t.Fatal(err)
	}
	return ret
}

const (
	xdpDrop = 1
	xdpPass = 2
)

// TestESPWindowEdges: the window's edges, bits set and unset, sizes 64 to
// 4096, ESN and not, across the 2^32 boundary, ESP over IP and in UDP.
func TestESPWindowEdges(t *testing.T) {
	objs, m := loadESP(t)
	type probe struct {
		seq  uint32
		want uint32
		why  string
	}
	type tc struct {
		name  string
		state maps.SAState
		probe []probe
	}
	var cases []tc
	for _, w := range []uint32{32, 64, 128, 1000, 1024, 4096} {
		top := uint64(10000)
		bottom := top - uint64(w) + 1
		st := window(espGW4, 0x1000+w, false, top, w, top, bottom, bottom+1, top-1)
		cases = append(cases, tc{fmt.Sprintf("w%d", w), st, []probe{
			{uint32(top), xdpDrop, "top, received"},
			{uint32(top) + 1, xdpPass, "just above"},
			{uint32(top) + 1000000, xdpPass, "far above (forged or not: the kernel's ICV decides)"},
			{uint32(bottom), xdpDrop, "first in window, received"},
			{uint32(bottom + 1), xdpDrop, "second in window, received"},
			{uint32(bottom + 2), xdpPass, "in window, not received"},
			{uint32(top - 2), xdpPass, "below top, not received"},
			{uint32(top - 1), xdpDrop, "below top, received"},
			{uint32(bottom - 1), xdpDrop, "just below the window"},
			{1, xdpDrop, "far below"},
			{0, xdpDrop, "sequence number 0"},
		}})
		// ESN, same subspace (case A) with high bits: below the window is
		// the next subspace, so it passes.
		st = window(espGW4, 0x2000+w, true, 5<<32|top, w, 5<<32|top, 5<<32|bottom)
		cases = append(cases, tc{fmt.Sprintf("esn-A-w%d", w), st, []probe{
			{uint32(top), xdpDrop, "top, received"},
			{uint32(bottom), xdpDrop, "first in window, received"},
			{uint32(bottom + 1), xdpPass, "in window, not received"},
			{uint32(top + 1), xdpPass, "just above"},
			{uint32(bottom - 1), xdpPass, "just below: inferred Th+1 (A2.2), the ICV decides"},
			{0, xdpPass, "0 with high bits 5: inferred 6<<32"},
		}})
		if w&(w-1) != 0 {
			continue // unjudged across the boundary (esn-w1000-wrap)
		}
		// ESN, the window spans the boundary (case B): top's low bits are
		// small, the window's bottom is in the previous subspace.
		top = 7<<32 | 3
		st = window(espGW4, 0x3000+w, true, top, w, top, top-3, top-4, top-uint64(w)+1)
		cases = append(cases, tc{fmt.Sprintf("esn-B-w%d", w), st, []probe{
			{3, xdpDrop, "top, received"},
			{0, xdpDrop, "low bits 0 of subspace 7: received"},
			{0xffffffff, xdpDrop, "last of subspace 6: received"},
			{0xfffffffe, xdpPass, "subspace 6, in window, not received"},
			{uint32(top - uint64(w) + 1), xdpDrop, "first in window (subspace 6), received"},
			{uint32(top - uint64(w)), xdpPass, "just below the window: inferred Th, far above"},
			{1, xdpPass, "in window, not received"},
			{4, xdpPass, "just above"},
		}})
	}
	// The kernel refuses sequence 0 of the first subspace outright.
	cases = append(cases, tc{"esn-first-zero", window(espGW4, 0x4000, true, 63, 64), []probe{{0, xdpDrop, "0 at seq_hi 0, top w-1"}, {1, xdpPass, "1"}}})
	// Before the SA's first packet: case B at seq_hi 0 infers no subspace.
	cases = append(cases, tc{"esn-B-hi0", window(espGW4, 0x4001, true, 5, 64, 5), []probe{{0xfffffff0, xdpPass, "a number before the SA"}, {5, xdpDrop, "top"}}})
	// A window of 0: the kernel checks nothing, nor does the stage.
	cases = append(cases, tc{"w0", window(espGW4, 0x4002, false, 100, 0), []probe{{100, xdpPass, "top"}, {0, xdpPass, "0"}}})
	// A window that does not divide 2^32, near the boundary: unjudged.
	cases = append(cases, tc{"esn-w1000-wrap", window(espGW4, 0x4003, true, 2<<32|10, 1000, 2<<32|10), []probe{{10, xdpPass, "top, but unjudged near the wrap"}}})
	// IPv6.
	cases = append(cases, tc{"v6", window(espGW6, 0x5000, false, 500, 64, 500, 450), []probe{{500, xdpDrop, "top"}, {450, xdpDrop, "received"}, {451, xdpPass, "not received"}, {436, xdpDrop, "below"}}})

	for _, c := range cases {
		mustPut(t, m, c.state)
		for _, p := range c.probe {
			t.Run(fmt.Sprintf("%s/%d", c.name, p.seq), func(t *testing.T) {
				before, _, _ := m.GetSA(c.state.Dst, c.state.SPI, false)
				if got := runVerdict(t, objs.XdpEsp, espFrame(t, c.state.Dst, c.state.SPI, p.seq)); got != p.want {
					t.Fatalf("%s: verdict %d, want %d", p.why, got, p.want)
				}
				after, _, _ := m.GetSA(c.state.Dst, c.state.SPI, false)
				if after.Top() != before.Top() || after.Version != before.Version || fmt.Sprint(after.Bitmap) != fmt.Sprint(before.Bitmap) {
					t.Fatalf("the packet moved the window: %d v%d -> %d v%d", before.Top(), before.Version, after.Top(), after.Version)
				}
				if dropped := after.DropReplay + after.DropStale - before.DropReplay - before.DropStale; dropped != map[uint32]uint64{xdpDrop: 1, xdpPass: 0}[p.want] {
					t.Fatalf("SA drop counters moved by %d", dropped)
				}
			})
		}
	}
}

// TestESPFrames: what reaches the SA lookup and what does not (RFC 3948).
func TestESPFrames(t *testing.T) {
	objs, m := loadESP(t)
	plain := window(espGW4, 0x100, false, 1000, 64, 1000)
	encap := plain
	encap.SPI, encap.Encap = 0x200, true
	mustPut(t, m, plain)
	mustPut(t, m, encap)
	cases := []struct {
		name  string
		frame []byte
		want  uint32
		stat  string
	}{
		{"esp replay", espFrame(t, espGW4, 0x100, 1000), xdpDrop, "drop_replay"},
		{"esp new", espFrame(t, espGW4, 0x100, 1001), xdpPass, "passed"},
		{"esp unknown spi", espFrame(t, espGW4, 0x101, 1000), xdpPass, "no_sa"},
		{"esp other daddr", espFrame(t, espPeer4, 0x100, 1000), xdpPass, "no_sa"},
		{"esp to an encap SA, not in UDP", espFrame(t, espGW4, 0x200, 1000), xdpPass, "no_sa"},
		{"natt replay", natTFrame(t, espGW4, 0x200, 1000), xdpDrop, "drop_replay"},
		{"natt stale", natTFrame(t, espGW4, 0x200, 900), xdpDrop, "drop_stale"},
		{"natt new", natTFrame(t, espGW4, 0x200, 1001), xdpPass, "passed"},
		{"natt to a plain SA", natTFrame(t, espGW4, 0x100, 1000), xdpPass, "no_sa"},
		{"ike (non-ESP marker)", udpFrame(t, espGW4, 4500, []byte{0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0}), xdpPass, "ike"},
		{"nat keepalive", udpFrame(t, espGW4, 4500, []byte{0xff}), xdpPass, "keepalive"},
		{"short esp in udp", udpFrame(t, espGW4, 4500, []byte{0, 0, 2, 0, 0}), xdpPass, "short"},
		{"udp to another port", udpFrame(t, espGW4, 4501, espPayload(0x200, 1000)), xdpPass, ""},
		{"short esp", serialize(t, eth(layers.EthernetTypeIPv4), ip4(espPeer4, espGW4, layers.IPProtocolESP), gopacket.Payload{0, 0, 1}), xdpPass, "short"},
		{"tcp", tcp4(t, espPeer4, espGW4), xdpPass, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, err := m.ESPStats()
			if err != nil {
				t.Fatal(err)
			}
			if got := runVerdict(t, objs.XdpEsp, c.frame); got != c.want {
				t.Fatalf("verdict %d, want %d", got, c.want)
			}
			after, _ := m.ESPStats()
			for k := range after {
				want := uint64(0)
				if k == c.stat {
					want = 1
				}
				if after[k]-before[k] != want {
					t.Errorf("esp_stats %s moved by %d, want %d", k, after[k]-before[k], want)
				}
			}
		})
	}
}

// TestESPPutNeverBackwards: esp_sa_put keeps the newest state whatever
// order snapshots come in, and marks only real changes.
func TestESPPutNeverBackwards(t *testing.T) {
	_, m := loadESP(t)
	get := func() maps.SAState {
		s, ok, err := m.GetSA(espGW4, 7, false)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		return s
	}
	steps := []struct {
		name    string
		state   maps.SAState
		want    maps.SAPutResult
		top     uint64
		bits    []uint32 // diffs below the top that must be set
		version uint64
	}{
		{"new", window(espGW4, 7, true, 1<<32|100, 64, 1<<32|100, 1<<32|90), maps.SAPutNew, 1<<32 | 100, []uint32{0, 10}, 1},
		{"older top", window(espGW4, 7, true, 1<<32|50, 64, 1<<32|50), maps.SAPutUnchanged, 1<<32 | 100, []uint32{0, 10}, 1},
		{"same top, more bits", window(espGW4, 7, true, 1<<32|100, 64, 1<<32|95), maps.SAPutAdvanced, 1<<32 | 100, []uint32{0, 5, 10}, 2},
		{"same again", window(espGW4, 7, true, 1<<32|100, 64, 1<<32|95), maps.SAPutUnchanged, 1<<32 | 100, []uint32{0, 5, 10}, 2},
		{"newer top", window(espGW4, 7, true, 2<<32|1, 64, 2<<32|1), maps.SAPutAdvanced, 2<<32 | 1, []uint32{0}, 3},
		{"window size differs: another SA", window(espGW4, 7, true, 5, 128, 5), maps.SAPutReplaced, 5, []uint32{0}, 4},
	}
	for _, s := range steps {
		got, err := m.PutSA(s.state)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got != s.want {
			t.Fatalf("%s: put %d, want %d", s.name, got, s.want)
		}
		st := get()
		if st.Top() != s.top || st.Version != s.version {
			t.Fatalf("%s: top %#x version %d, want %#x version %d", s.name, st.Top(), st.Version, s.top, s.version)
		}
		for _, d := range s.bits {
			if !st.Bit(d) {
				t.Fatalf("%s: bit top-%d lost", s.name, d)
			}
		}
	}
	// A new kernel SA under the same key: taken whole, lower top and all.
	if err := m.ReplaceSA(window(espGW4, 7, true, 3, 128, 3)); err != nil {
		t.Fatal(err)
	}
	if st := get(); st.Top() != 3 || st.Version != 5 || st.OTop() != 0 || !st.Bit(0) || st.Bit(2) || st.ESN != true {
		t.Fatalf("replace: %+v, want top 3, version 5, oseq 0, only 3 received", st)
	}
	// The outbound sequence only rises.
	s := get()
	for _, o := range []struct {
		o, want uint64
	}{{1000, 1000}, {10, 1000}, {3<<32 | 1, 3<<32 | 1}} {
		s.OSeq, s.OSeqHi = uint32(o.o), uint32(o.o>>32)
		if _, err := m.PutSA(s); err != nil {
			t.Fatal(err)
		}
		if got := get().OTop(); got != o.want {
			t.Fatalf("oseq put %#x: %#x, want %#x", o.o, got, o.want)
		}
	}
	big := window(espGW4, 8, false, 1, 8192)
	if _, err := m.PutSA(big); err == nil {
		t.Fatal("a window of 8192 was put; the stage judges at most 4096")
	}
	if err := m.DeleteSA(espGW4, 7, false); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := m.GetSA(espGW4, 7, false); ok {
		t.Fatal("deleted SA still there")
	}
}

// espScaled divides n by TANDEM_TEST_SCALE (the TCG VM of CI).
func espScaled(n int) int {
	if s, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE")); err == nil && s > 1 {
		return n / s
	}
	return n
}

// ---- the Go model of RFC 4303's window -------------------------------

// rfcWindow is the receiver's window as RFC 4303 describes it (3.4.3,
// A2), with 64-bit numbers and a set: independent of the kernel's ring.
type rfcWindow struct {
	esn  bool
	w    uint32
	top  uint64
	seen map[uint64]bool
}

// infer returns the 64-bit number of low bits seq (A2.2), and false when
// the inference would fall before the first subspace.
func (m *rfcWindow) infer(seq uint32) (uint64, bool) {
	if !m.esn {
		return uint64(seq), true
	}
	tl, th := uint32(m.top), uint32(m.top>>32)
	bottom := tl - m.w + 1
	if tl >= m.w-1 {
		if seq >= bottom {
			return uint64(th)<<32 | uint64(seq), true
		}
		return uint64(th+1)<<32 | uint64(seq), true
	}
	if seq >= bottom {
		if th == 0 {
			return 0, false
		}
		return uint64(th-1)<<32 | uint64(seq), true
	}
	return uint64(th)<<32 | uint64(seq), true
}

const (
	mPass = iota
	mReplay
	mStale
)

// check is the receiver's verdict before the ICV.
func (m *rfcWindow) check(seq uint32) int {
	if m.w == 0 {
		return mPass
	}
	if !m.esn && seq == 0 {
		return mStale
	}
	if m.esn && seq == 0 && m.top == uint64(m.w-1) {
		return mStale // Linux's extra rule for the first subspace
	}
	s, ok := m.infer(seq)
	if !ok || s > m.top {
		return mPass
	}
	if m.top-s >= uint64(m.w) {
		return mStale
	}
	if m.seen[s] {
		return mReplay
	}
	return mPass
}

// accept advances the window with an authenticated number.
func (m *rfcWindow) accept(s uint64) {
	if s > m.top {
		m.top = s
		for k := range m.seen {
			if m.top-k >= uint64(m.w) {
				delete(m.seen, k)
			}
		}
	}
	m.seen[s] = true
}

// kernelWindow is a port of Linux's xfrm_replay_advance_bmp/_esn: the
// ring of bits the kernel reports in XFRMA_REPLAY_ESN_VAL, which the
// stage reads.
type kernelWindow struct {
	esn        bool
	w          uint32
	seq, seqHi uint32
	bmp        []uint32
}

func (k *kernelWindow) flip(bitnr uint32, on bool) {
	if on {
		k.bmp[bitnr>>5] |= 1 << (bitnr & 31)
	} else {
		k.bmp[bitnr>>5] &^= 1 << (bitnr & 31)
	}
}

// advance records authenticated number s (its high bits as inferred).
func (k *kernelWindow) advance(s uint64) {
	seq, hi := uint32(s), uint32(s>>32)
	pos := (k.seq - 1) % k.w
	wrap := int64(hi) - int64(k.seqHi)
	if !k.esn {
		wrap = 0
	}
	var bitnr uint32
	if (wrap == 0 && seq > k.seq) || wrap > 0 {
		var diff uint32
		if wrap == 0 {
			diff = seq - k.seq
		} else {
			diff = ^k.seq + seq + 1
		}
		if diff < k.w {
			for i := uint32(1); i < diff; i++ {
				k.flip((pos+i)%k.w, false)
			}
		} else {
			for i := range k.bmp {
				k.bmp[i] = 0
			}
		}
		bitnr = (pos + diff) % k.w
		k.seq = seq
		if wrap > 0 {
			k.seqHi++
		}
	} else {
		diff := k.seq - seq
		if pos >= diff {
			bitnr = (pos - diff) % k.w
		} else {
			bitnr = k.w - (diff - pos)
		}
	}
	k.flip(bitnr, true)
}

// check is a port of xfrm_replay_check_bmp/_esn: mPass, or why the
// kernel refuses seq before decrypting.
func (k *kernelWindow) check(seq uint32) int {
	w, top := k.w, k.seq
	if w == 0 {
		return mPass
	}
	diff := top - seq
	if !k.esn {
		if seq == 0 {
			return mStale
		}
		if seq > top {
			return mPass
		}
	} else {
		bottom := top - w + 1
		if seq == 0 && k.seqHi == 0 && top == w-1 {
			return mStale
		}
		if top >= w-1 {
			if seq > top || seq < bottom {
				return mPass
			}
		} else {
			if seq > top && seq < bottom {
				return mPass
			}
			if seq >= bottom {
				diff = ^seq + top + 1
			}
		}
	}
	if diff >= w {
		return mStale
	}
	pos := (top - 1) % w
	var bitnr uint32
	if pos >= diff {
		bitnr = (pos - diff) % w
	} else {
		bitnr = w - (diff - pos)
	}
	if k.bmp[bitnr>>5]&(1<<(bitnr&31)) != 0 {
		return mReplay
	}
	return mPass
}

func (k *kernelWindow) state(dst netip.Addr, spi uint32) maps.SAState {
	return maps.SAState{Dst: dst, SPI: spi, ESN: k.esn, Seq: k.seq, SeqHi: k.seqHi, Window: k.w, Bitmap: append([]uint32(nil), k.bmp...)}
}

// TestESPWindowModel drives a receiver with random streams (in order,
// reordered, duplicated, replayed from far back; with and without ESN;
// starting below a 2^32 boundary so ESN streams cross it), puts the
// kernel's window into esp_sa now and then, and checks the stage against
// the RFC model: on the state just put, the stage's verdict is the
// model's for every probe; on a state that lags the receiver, the stage
// drops nothing the receiver would take as the number the sender sent.
func TestESPWindowModel(t *testing.T) {
	objs, m := loadESP(t)
	type run struct {
		seed uint64
		w    uint32
		esn  bool
	}
	var runs []run
	for i, w := range []uint32{64, 128, 256, 512, 1024, 2048, 4096} {
		runs = append(runs, run{uint64(i + 1), w, false}, run{uint64(i + 100), w, true})
	}
	runs = append(runs, run{7, 100, false}, run{8, 1000, true}, run{9, 48, true})
	packets := espScaled(3000)
	for _, r := range runs {
		t.Run(fmt.Sprintf("seed%d-w%d-esn%v", r.seed, r.w, r.esn), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(r.seed, uint64(r.w)))
			spi := uint32(r.seed<<16 | uint64(r.w))
			start := uint64(1)
			if r.esn {
				start = 1<<32 - uint64(packets)/2 // crosses the boundary halfway
			}
			model := &rfcWindow{esn: r.esn, w: r.w, top: start - 1, seen: map[uint64]bool{}}
			kern := &kernelWindow{esn: r.esn, w: r.w, seq: uint32(start - 1), seqHi: uint32((start - 1) >> 32), bmp: make([]uint32, (r.w+31)/32)}
			if start-1 == 0 {
				// An SA that has seen nothing: the kernel starts at 0.
				kern.seq, kern.seqHi = 0, 0
			}
			var sent []uint64
			next := start
			var snap maps.SAState
			var snapModel *rfcWindow
			for i := 0; i < packets; i++ {
				// The sender's next packet, or an old one again.
				var s uint64
				switch x := rng.IntN(10); {
				case x < 6 || len(sent) == 0:
					s = next
					next++
				case x < 8:
					s = next + uint64(rng.IntN(int(r.w)/2+1)) // reordered: a later one first
				default:
					s = sent[rng.IntN(len(sent))] // replayed
				}
				// The receiver: check, then (the ICV holds when the
				// inferred number is the one sent) advance.
				if model.check(uint32(s)) == mPass {
					if got, ok := model.infer(uint32(s)); ok && got == s {
						model.accept(s)
						kern.advance(s)
						sent = append(sent, s)
					}
				}
				if rng.IntN(50) == 0 || i == packets-1 {
					snap = kern.state(espGW4, spi)
					if snap.Top() != model.top {
						t.Fatalf("port of the kernel at %#x, model at %#x", snap.Top(), model.top)
					}
					// A fresh SA each time: the snapshot is what is tested.
					if err := m.DeleteSA(espGW4, spi, false); err != nil {
						t.Fatal(err)
					}
					mustPut(t, m, snap)
					snapModel = &rfcWindow{esn: model.esn, w: model.w, top: model.top, seen: map[uint64]bool{}}
					for k := range model.seen {
						snapModel.seen[k] = true
					}
					// Probes: every number around the window and a few far ones.
					probes := []uint32{0, 1, uint32(model.top) + 1, uint32(model.top) + 1<<31, uint32(model.top) - r.w, uint32(model.top) - r.w - 1}
					for d := uint32(0); d <= r.w+1; d += 1 + uint32(rng.IntN(3)) {
						probes = append(probes, uint32(model.top)-d)
					}
					for _, p := range probes {
						want, kwant := snapModel.check(p), kern.check(p)
						got := runVerdict(t, objs.XdpEsp, espFrame(t, espGW4, spi, p))
						unjudged := r.esn && r.w&(r.w-1) != 0 && (snap.Seq < r.w || snap.Seq > -r.w)
						switch {
						case got == xdpDrop && want == mPass:
							t.Fatalf("top %#x: seq %#x dropped, the model passes it", model.top, p)
						case got == xdpDrop && kwant == mPass:
							t.Fatalf("top %#x: seq %#x dropped, the kernel passes it", model.top, p)
						case got == xdpPass && kwant != mPass && !unjudged:
							t.Fatalf("top %#x: seq %#x passed, the kernel says %d", model.top, p, kwant)
						case got == xdpPass && want != mPass && r.w&(r.w-1) == 0:
							// A window that divides 2^32: the kernel's ring
							// is the RFC's window exactly.
							t.Fatalf("top %#x: seq %#x passed, the model says %d", model.top, p, want)
						}
					}
					continue
				}
				// Lag: the stage on the last snapshot against the receiver now.
				if snapModel != nil && rng.IntN(3) == 0 {
					p := uint32(s)
					if runVerdict(t, objs.XdpEsp, espFrame(t, espGW4, spi, p)) == xdpDrop && (model.check(p) == mPass || kern.check(p) == mPass) {
						// Allowed only when the receiver takes the low bits
						// for another number than the one the stage dropped
						// (its ICV then fails for the old packet).
						a, _ := snapModel.infer(p)
						b, ok := model.infer(p)
						if ok && a == b {
							t.Fatalf("lagging state (top %#x, now %#x): seq %#x dropped, the receiver would take it", snapModel.top, model.top, p)
						}
					}
				}
			}
		})
	}
}
