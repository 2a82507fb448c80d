package bpf_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/synflood"
	"github.com/tandem-net/tandem/tools/testenv"
)

// maxDecline is how many declining stages the benchmark chains: every
// slot but the synctest one.
const maxDecline = 7

// benchProg is one program the chain benchmark runs, with the chain maps
// whose counters prove the packet went the whole way (nil: none).
type benchProg struct {
	name string
	prog *ebpf.Program
	cm   *chain.Maps
	ns   []float64 // ns per run, one per round
}

// BenchmarkXDPChain measures what the XDP feature chain costs a packet no
// stage claims, with BPF_PROG_TEST_RUN (prog.Run with a repeat count) on
// one frame for every program, in interleaved rounds, medians reported:
//
//   - xdp_pass alone, the anchor: the cheapest XDP program there is;
//   - the chain's entry with no stage;
//   - the entry with k = 1..7 stages that all decline (xdp_decline in
//     slots 0..k-1): the slope over k is what one hop costs;
//   - the same with chain_next as first written (chainbench.c's
//     indirect copies: one tail-call site, the key in a register), which
//     the JIT cannot make a direct jump;
//   - the same k declining stages as noinline bpf-to-bpf calls in one
//     program (chainbench.c's xdp_mono, the monolith issue 12 rejects):
//     its slope is what a hop would cost without tail calls;
//   - an interface's real chain, the gate (slot 0) and the SYN proxy
//     (slot 3), both declining: a UDP datagram and a TCP segment to an
//     address that is no VIP and no service, of no proxied flow.
//
// Nothing here asserts a time; the chain counters are checked so the
// figures are of the path they name.
func BenchmarkXDPChain(b *testing.B) {
	testenv.RequireRoot(b)
	ip := ip4(client4, other4, layers.IPProtocolUDP)
	udpFrame := serialize(b, eth(layers.EthernetTypeIPv4), ip, udp(ip), payload)
	// A plain ACK, not a SYN: the proxy finds no service and looks for a
	// proxied flow it is the backend's side of.
	ip = ip4(client4, other4, layers.IPProtocolTCP)
	ack := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, Ack: 1, ACK: true, Window: 502}
	ack.SetNetworkLayerForChecksum(ip)
	tcpFrame := serialize(b, eth(layers.EthernetTypeIPv4), ip, ack, payload)

	cspec, err := bpf.LoadChain()
	if err != nil {
		b.Fatal(err)
	}
	var pass struct {
		P *ebpf.Program `ebpf:"xdp_pass"`
	}
	if err := cspec.LoadAndAssign(&pass, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pass.P.Close() })

	var chains, indirects, monos []*benchProg
	for k := 0; k <= maxDecline; k++ {
		chains = append(chains, declineChain(b, k))
		indirects = append(indirects, indirectChain(b, k))
		monos = append(monos, monoChain(b, k))
	}
	gp := realChain(b)

	anchor := &benchProg{name: "xdp_pass", prog: pass.P}
	udpProgs := slices.Concat([]*benchProg{anchor}, chains, indirects, monos)
	udpProgs = append(udpProgs, &benchProg{name: "gate+synproxy", prog: gp.entry, cm: gp.cm})
	const rounds, repeat = 21, 1 << 15
	tcpAnchor := &benchProg{name: "xdp_pass (tcp)", prog: pass.P}
	tcpReal := &benchProg{name: "gate+synproxy (tcp)", prog: gp.entry, cm: gp.cm}
	for b.Loop() {
		gateBefore := gp.nonVIP(b)
		measure(b, udpProgs, udpFrame, rounds, repeat)
		measure(b, []*benchProg{tcpAnchor, tcpReal}, tcpFrame, rounds, repeat)
		// The gate saw every packet of the real chain and found no VIP.
		if got, want := gp.nonVIP(b)-gateBefore, uint64(2*rounds*repeat); got < want {
			b.Fatalf("gate counted %d packets to a non-VIP, want %d: the real chain did not run the gate", got, want)
		}
	}

	med := func(p *benchProg) float64 { return median(p.ns) }
	floor := med(anchor)
	ks := make([]float64, 0, maxDecline)
	var cy, iy, my []float64
	fmt.Printf("XDP chain, ns/packet (medians of %d rounds of %d runs; anchor xdp_pass %.0f ns):\n", rounds, repeat, floor)
	fmt.Printf("  %-6s %16s %16s %16s\n", "stages", "chain", "indirect", "mono (call)")
	for k := 0; k <= maxDecline; k++ {
		c, d, m := med(chains[k]), med(indirects[k]), med(monos[k])
		fmt.Printf("  %-6d %8.0f %6.2fx %8.0f %6.2fx %8.0f %6.2fx\n", k, c, c/floor, d, d/floor, m, m/floor)
		if k > 0 {
			ks = append(ks, float64(k))
			cy, iy, my = append(cy, c), append(iy, d), append(my, m)
		}
	}
	hop, base := leastSquares(ks, cy)
	indirect, indirectBase := leastSquares(ks, iy)
	call, callBase := leastSquares(ks, my)
	fmt.Printf("  per declining stage (slope over 1..%d): chain %.2f ns (intercept %.1f), indirect tail calls %.2f ns (intercept %.1f), bpf-to-bpf call %.2f ns (intercept %.1f)\n",
		maxDecline, hop, base, indirect, indirectBase, call, callBase)
	b.ReportMetric(hop, "ns/hop")
	b.ReportMetric(indirect, "ns/indirect-hop")
	b.ReportMetric(call, "ns/call")

	entry := med(chains[0])
	realUDP, realTCP := med(udpProgs[len(udpProgs)-1]), med(tcpReal)
	b.ReportMetric(realUDP, "ns/pkt-gate+synproxy")
	for _, r := range []bench.Result{
		{Name: "xdp chain entry, no stage (ipv4 udp), prog.Run", Unit: "ns/pkt", Value: entry,
			Anchor: "xdp_pass (returns XDP_PASS), same runs", AnchorValue: floor,
			Goal: "record only (parse once into the per-CPU context, count, pass)"},
		{Name: "xdp chain gate + SYN proxy, both declining (ipv4 udp to a non-VIP), prog.Run", Unit: "ns/pkt", Value: realUDP,
			Anchor: "xdp_pass (returns XDP_PASS), same runs", AnchorValue: floor,
			Goal: "record only (what a packet no feature claims pays)"},
		{Name: "xdp chain gate + SYN proxy, both declining (ipv4 tcp ack to a non-VIP, no flow), prog.Run", Unit: "ns/pkt", Value: realTCP,
			Anchor: "xdp_pass (returns XDP_PASS), same runs", AnchorValue: med(tcpAnchor),
			Goal: "record only (what a packet no feature claims pays)"},
		{Name: "xdp chain per-hop cost (a declining stage, tail call), prog.Run", Unit: "ns", Value: hop,
			Anchor: "the same stage as a noinline bpf-to-bpf call in one program, same runs", AnchorValue: call,
			Goal: "record only (slope over 1..7 declining stages, least squares)"},
		{Name: "xdp chain per-hop cost, one tail-call site with a variable key (indirect jump), prog.Run", Unit: "ns", Value: indirect,
			Anchor: "the chain's per-hop cost (a constant key per site: direct jumps), same runs", AnchorValue: hop,
			Goal: "record only (why chain_next uses bpf_tail_call_static)"},
	} {
		if _, err := bench.Record(r); err != nil {
			b.Fatal(err)
		}
	}
}

// measure runs every program on frame with repeat runs per call, rounds
// times, each round starting at the next program so none always runs
// first; it appends each call's ns per run to the program's figures and
// checks its chain counters: every run ended unclaimed (the stack's
// slot), no stage claimed and no tail call missed.
func measure(b *testing.B, progs []*benchProg, frame []byte, rounds, repeat int) {
	b.Helper()
	before := make([]chain.Stat, len(progs))
	for i, p := range progs {
		if p.cm != nil {
			before[i] = readStats(b, p.cm)[chain.Slots]
		}
	}
	for r := range rounds {
		for j := range progs {
			p := progs[(r+j)%len(progs)]
			ret, d, err := p.prog.Benchmark(frame, repeat, nil)
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			if ret != 2 {
				b.Fatalf("%s: returned %d, want XDP_PASS", p.name, ret)
			}
			p.ns = append(p.ns, float64(d.Nanoseconds()))
		}
	}
	for i, p := range progs {
		if p.cm == nil {
			continue
		}
		st := readStats(b, p.cm)
		// At least: a signal interrupts a test run (EINTR) after some
		// runs, and cilium/ebpf starts it again.
		if got, want := st[chain.Slots].Claimed-before[i].Claimed, uint64(rounds*repeat); got < want {
			b.Fatalf("%s: %d packets reached the end of the chain, want %d", p.name, got, want)
		}
		for slot, s := range st[:chain.Slots] {
			if s.Missed != 0 || s.Claimed != 0 {
				b.Fatalf("%s: slot %d claimed %d, missed %d: every stage should decline", p.name, slot, s.Claimed, s.Missed)
			}
		}
	}
}

func readStats(b *testing.B, cm *chain.Maps) []chain.Stat {
	b.Helper()
	st, err := cm.ReadStats()
	if err != nil {
		b.Fatal(err)
	}
	return st
}

// declineChain is a chain of k xdp_decline stages in slots 0..k-1 behind
// its entry (k = 0: the entry alone).
func declineChain(b *testing.B, k int) *benchProg {
	b.Helper()
	cm := newChainMaps(b)
	for slot := range k {
		spec, err := bpf.LoadChain()
		if err != nil {
			b.Fatal(err)
		}
		if err := spec.Variables[bpf.ChainVarCfgSlot].Set(int32(slot)); err != nil {
			b.Fatal(err)
		}
		p, err := chain.LoadStage(spec, bpf.ChainProgXdpDecline, cm, "")
		if err != nil {
			b.Fatal(err)
		}
		err = cm.Set(uint32(slot), p)
		p.Close() // the program array holds it
		if err != nil {
			b.Fatal(err)
		}
	}
	entry, err := chain.LoadEntry(cm, 1<<k-1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { entry.Close() })
	return &benchProg{name: fmt.Sprintf("chain %d", k), prog: entry, cm: cm}
}

// indirectChain is declineChain built from chainbench.c's copies of the
// entry and the declining stage whose tail calls share one call site with
// a variable key (chain_next as first written).
func indirectChain(b *testing.B, k int) *benchProg {
	b.Helper()
	cm := newChainMaps(b)
	load := func(prog, name string, v any) *ebpf.Program {
		spec, err := bpf.LoadChainbench()
		if err != nil {
			b.Fatal(err)
		}
		if err := spec.Variables[name].Set(v); err != nil {
			b.Fatal(err)
		}
		p, err := chain.LoadStage(spec, prog, cm, "")
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	for slot := range k {
		p := load(bpf.ChainbenchProgXdpDeclineIndirect, bpf.ChainbenchVarCfgSlot, int32(slot))
		err := cm.Set(uint32(slot), p)
		p.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	entry := load(bpf.ChainbenchProgXdpEntryIndirect, bpf.ChainbenchVarCfgStages, uint32(1<<k-1))
	b.Cleanup(func() { entry.Close() })
	return &benchProg{name: fmt.Sprintf("indirect %d", k), prog: entry, cm: cm}
}

// monoChain is xdp_mono calling k declining stage functions.
func monoChain(b *testing.B, k int) *benchProg {
	b.Helper()
	spec, err := bpf.LoadChainbench()
	if err != nil {
		b.Fatal(err)
	}
	if err := spec.Variables[bpf.ChainbenchVarCfgStages].Set(uint32(1<<k - 1)); err != nil {
		b.Fatal(err)
	}
	cm := newChainMaps(b)
	var o bpf.ChainbenchObjects
	if err := spec.LoadAndAssign(&o, &ebpf.CollectionOptions{MapReplacements: cm.Replacements(spec)}); err != nil {
		b.Fatalf("load xdp_mono: %+v", err)
	}
	b.Cleanup(func() { o.Close() })
	return &benchProg{name: fmt.Sprintf("mono %d", k), prog: o.XdpMono, cm: cm}
}

// gateProxyChain is an interface's chain running the gate and the SYN
// proxy, loaded as the loader loads them: one chain's maps, the proxy
// reading the gate's vip_gate, the fixture VIPs and services set. Both
// are loaded; only the slots in stages are filled and run.
type gateProxyChain struct {
	cm    *chain.Maps
	entry *ebpf.Program
	gate  *bpf.VipgateObjects
}

func realChain(b *testing.B) *gateProxyChain {
	b.Helper()
	return stagesChain(b, 1<<chain.SlotGate|1<<chain.SlotSynproxy)
}

func stagesChain(b *testing.B, stages uint32) *gateProxyChain {
	b.Helper()
	cm := newChainMaps(b)
	gspec, err := bpf.LoadVipgate()
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range gspec.Maps {
		m.Pinning = ebpf.PinNone
	}
	if err := gspec.Variables[bpf.VipgateVarCfgGateMode].Set(bpf.VipgateGateModeGATE_ENFORCE); err != nil {
		b.Fatal(err)
	}
	var gate bpf.VipgateObjects
	if err := gspec.LoadAndAssign(&gate, &ebpf.CollectionOptions{MapReplacements: cm.Replacements(gspec)}); err != nil {
		b.Fatalf("load gate: %+v", err)
	}
	b.Cleanup(func() { gate.Close() })
	vm := &maps.VIPMaps{Gate: gate.VipGate, Counters: gate.VipStats, Stats: gate.Stats}
	if err := vm.SetVIPs(map[netip.Addr]bool{vipOwned: true, vipStandby: false, vip6: true}); err != nil {
		b.Fatal(err)
	}

	sspec, err := bpf.LoadSynproxy()
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range sspec.Maps {
		m.Pinning = ebpf.PinNone
	}
	inner := sspec.Maps[bpf.SynproxyMapSyncRings].InnerMap
	inner.MaxEntries = 1 << 16
	repl := cm.Replacements(sspec)
	repl[bpf.SynproxyMapVipGate] = gate.VipGate // shared by pin name in the loader
	var sp bpf.SynproxyObjects
	if err := sspec.LoadAndAssign(&sp, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		b.Fatalf("load synproxy: %+v", err)
	}
	sync := &maps.SyncMaps{Rings: sp.SyncRings, Epoch: sp.SyncEpoch, Overflow: sp.SyncOverflow}
	if err := sync.SetupRings(inner); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sync.Close(); sp.Close() })
	pm := maps.SynproxyMapsOf(&sp.SynproxyMaps)
	if _, err := pm.SetService(svc4, 80, backends4); err != nil {
		b.Fatal(err)
	}
	if err := pm.SetCookieKeys(spKeys, 0); err != nil {
		b.Fatal(err)
	}

	for slot, p := range map[uint32]*ebpf.Program{chain.SlotGate: gate.XdpVipgate, chain.SlotSynproxy: sp.XdpSynproxy} {
		if stages&(1<<slot) == 0 {
			continue
		}
		if err := cm.Set(slot, p); err != nil {
			b.Fatal(err)
		}
	}
	entry, err := chain.LoadEntry(cm, stages)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { entry.Close() })
	return &gateProxyChain{cm: cm, entry: entry, gate: &gate}
}

// nonVIP is the gate's count of packets to no VIP, over CPUs.
func (c *gateProxyChain) nonVIP(b *testing.B) uint64 {
	b.Helper()
	var per []uint64
	if err := c.gate.Stats.Lookup(bpf.VipgateStatReasonSTAT_PASS_NON_VIP, &per); err != nil {
		b.Fatal(err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// median of xs (left as it is).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// leastSquares fits y = slope*x + intercept.
func leastSquares(x, y []float64) (slope, intercept float64) {
	n := float64(len(x))
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	slope = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	return slope, (sy - slope*sx) / n
}

// BenchmarkXDPChainLive is the chain with live frames on a veth: a SYN
// flood (tools/synflood) to an address that is no VIP and no service
// reaches the gateway's XDP hook, which runs in turn xdp_pass, the chain's
// entry alone and the gate + SYN proxy chain (both declining: no VIP, no
// service, no flow), swapped through one XDP link between floods. The
// figure is each program's own run time per packet as the kernel measures
// it (BPF_ENABLE_STATS; a tail-called stage's time is its entry's), in
// interleaved rounds, medians.
func BenchmarkXDPChainLive(b *testing.B) {
	testenv.RequireRoot(b)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "gen"}, {Name: "gw"}},
		Links: []lab.LinkSpec{{TxOff: true,
			A: lab.End{Host: "gen", Iface: "eth0", Addrs: []string{"10.57.0.1/24"}},
			B: lab.End{Host: "gw", Iface: "eth0", Addrs: []string{"10.57.0.2/24"}}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	gen, gw := l.Host("gen"), l.Host("gw")

	cspec, err := bpf.LoadChain()
	if err != nil {
		b.Fatal(err)
	}
	var pass struct {
		P *ebpf.Program `ebpf:"xdp_pass"`
	}
	if err := cspec.LoadAndAssign(&pass, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pass.P.Close() })
	entry := declineChain(b, 0)
	gp := realChain(b)
	gateOnly, proxyOnly := stagesChain(b, 1<<chain.SlotGate), stagesChain(b, 1<<chain.SlotSynproxy)
	progs := []*benchProg{{name: "xdp_pass", prog: pass.P}, entry, {name: "gate+synproxy", prog: gp.entry, cm: gp.cm},
		{name: "gate", prog: gateOnly.entry, cm: gateOnly.cm}, {name: "synproxy", prog: proxyOnly.entry, cm: proxyOnly.cm}}

	// One XDP link on the gateway's side, its program swapped per flood
	// (a veth needs an XDP program on the receiving end for frames XDP
	// transmits into it).
	var xl link.Link
	var gwMAC net.HardwareAddr
	if err := gw.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		gwMAC = i.HardwareAddr
		xl, err = link.AttachXDP(link.XDPOptions{Program: pass.P, Interface: i.Index})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { xl.Close() })
	var flood *synflood.Generator
	var ifindex int
	if err := gen.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		ifindex = i.Index
		flood, err = synflood.New(i.HardwareAddr, gwMAC, netip.MustParseAddrPort("10.57.0.200:80"))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { flood.Close() })

	const rounds, n = 7, 200_000
	for b.Loop() {
		before := make([]chain.Stat, len(progs))
		for i, p := range progs {
			if p.cm != nil {
				before[i] = readStats(b, p.cm)[chain.Slots]
			}
		}
		gateBefore := gp.nonVIP(b)
		for r := range rounds {
			for j := range progs {
				p := progs[(r+j)%len(progs)]
				if err := xl.Update(p.prog); err != nil {
					b.Fatal(err)
				}
				ns, err := bench.RunTime(p.prog, func() error {
					return gen.Do(func() error { return flood.Send(ifindex, n) })
				})
				if err != nil {
					b.Fatalf("%s: %v", p.name, err)
				}
				p.ns = append(p.ns, ns)
			}
		}
		// What reached the chains went through every stage unclaimed; a
		// veth may drop a frame when its ring is full, so the counts
		// are checked against each other, not against n.
		for i, p := range progs {
			if p.cm == nil {
				continue
			}
			st := readStats(b, p.cm)
			if st[chain.Slots].Claimed == before[i].Claimed {
				b.Fatalf("%s: no packet reached the end of the chain", p.name)
			}
			for slot, s := range st[:chain.Slots] {
				if s.Missed != 0 || s.Claimed != 0 {
					b.Fatalf("%s: slot %d claimed %d, missed %d: every stage should decline", p.name, slot, s.Claimed, s.Missed)
				}
			}
		}
		if got, want := gp.nonVIP(b)-gateBefore, readStats(b, gp.cm)[chain.Slots].Claimed-before[2].Claimed; got != want {
			b.Fatalf("the gate counted %d packets to a non-VIP, %d reached the end of its chain", got, want)
		}
	}
	floor, e, g := median(progs[0].ns), median(progs[1].ns), median(progs[2].ns)
	fmt.Printf("XDP chain under a SYN flood on a veth, kernel-measured ns/packet (medians of %d floods of %d): xdp_pass %.1f, entry alone %.1f (%.2fx), gate + SYN proxy declining %.1f (%.2fx); entry + gate alone %.1f, entry + SYN proxy alone %.1f\n",
		rounds, n, floor, e, e/floor, g, g/floor, median(progs[3].ns), median(progs[4].ns))
	b.ReportMetric(g, "ns/pkt-gate+synproxy")
	for _, r := range []bench.Result{
		{Name: "xdp chain entry, no stage, program run time under a SYN flood (kernel-measured, veth lab)", Unit: "ns/pkt", Value: e,
			Anchor: "xdp_pass, same flood", AnchorValue: floor, Goal: "record only"},
		{Name: "xdp chain gate + SYN proxy, both declining, program run time under a SYN flood to a non-VIP (kernel-measured, veth lab)", Unit: "ns/pkt", Value: g,
			Anchor: "xdp_pass, same flood", AnchorValue: floor, Goal: "record only (what a packet no feature claims pays)"},
	} {
		if _, err := bench.Record(r); err != nil {
			b.Fatal(err)
		}
	}
}
