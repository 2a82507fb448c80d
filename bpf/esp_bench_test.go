package bpf_test

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/testenv"
)

// espChain is an interface's chain with the gate (slot 0, the fixture
// VIPs) and, when esp, the ESP stage (slot 2) with one SA to espGW4 (an
// owned VIP) holding a 1024-packet ESN window.
func espChain(b *testing.B, esp bool) (*ebpf.Program, *chain.Maps) {
	b.Helper()
	stages := uint32(1 << chain.SlotGate)
	if esp {
		stages |= 1 << chain.SlotESP
	}
	c := stagesChain(b, 1<<chain.SlotGate)
	if !esp {
		return c.entry, c.cm
	}
	spec, err := bpf.LoadEsp()
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	var objs bpf.EspObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: c.cm.Replacements(spec)}); err != nil {
		b.Fatalf("load esp: %+v", err)
	}
	b.Cleanup(func() { objs.Close() })
	mustPut(b, maps.SAMapsOf(&objs), espBenchSA())
	if err := c.cm.Set(chain.SlotESP, objs.XdpEsp); err != nil {
		b.Fatal(err)
	}
	entry, err := chain.LoadEntry(c.cm, stages)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { entry.Close() })
	return entry, c.cm
}

func espBenchSA() maps.SAState {
	top := uint64(9)<<32 | 100000
	s := window(espGW4, 0xbe1c, true, top, 1024)
	for d := uint64(0); d < 1024; d += 2 {
		s.SetBit(uint32(top - d))
	}
	return s
}

// BenchmarkXDPESP measures what the ESP stage costs an ESP packet, with
// BPF_PROG_TEST_RUN on one frame per case, interleaved rounds, medians:
// the chain's floor (the entry, no stage), the chain with the gate only
// (what an ESP packet to a VIP pays today), and the gate and the ESP
// stage on a packet it judges and passes (a new sequence number: the
// common case), one it drops (a replay), and ESP to an SA it does not
// hold. The verdicts and the chain counters are checked so the figures
// are of the path they name; nothing asserts a time.
func BenchmarkXDPESP(b *testing.B) {
	testenv.RequireRoot(b)
	sa := espBenchSA()
	fresh := espFrame(b, espGW4, sa.SPI, sa.Seq+1)
	replay := espFrame(b, espGW4, sa.SPI, sa.Seq-2)
	unknown := espFrame(b, espGW4, sa.SPI+1, sa.Seq+1)
	floor := declineChain(b, 0)
	gateOnly, _ := espChain(b, false)
	withESP, cm := espChain(b, true)

	type bcase struct {
		name  string
		prog  *ebpf.Program
		frame []byte
		want  uint32
		ns    []float64
	}
	cases := []*bcase{
		{name: "chain entry, no stage", prog: floor.prog, frame: fresh, want: xdpPass},
		{name: "gate only", prog: gateOnly, frame: fresh, want: xdpPass},
		{name: "gate + esp, judged and passed", prog: withESP, frame: fresh, want: xdpPass},
		{name: "gate + esp, replay dropped", prog: withESP, frame: replay, want: xdpDrop},
		{name: "gate + esp, no such SA", prog: withESP, frame: unknown, want: xdpPass},
	}
	const rounds, repeat = 21, 1 << 15
	before, err := cm.ReadStats()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		for r := range rounds {
			for j := range cases {
				c := cases[(r+j)%len(cases)]
				ret, d, err := c.prog.Benchmark(c.frame, repeat, nil)
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				if ret != c.want {
					b.Fatalf("%s: returned %d, want %d", c.name, ret, c.want)
				}
				c.ns = append(c.ns, float64(d.Nanoseconds()))
			}
		}
	}
	after, err := cm.ReadStats()
	if err != nil {
		b.Fatal(err)
	}
	if got := after[chain.SlotESP].Claimed - before[chain.SlotESP].Claimed; got < uint64(rounds*repeat) {
		b.Fatalf("the ESP stage claimed %d packets, want at least %d (the replays)", got, rounds*repeat)
	}
	med := make([]float64, len(cases))
	fmt.Printf("XDP ESP stage, ns/packet (medians of %d rounds of %d runs):\n", rounds, repeat)
	for i, c := range cases {
		med[i] = median(c.ns)
		fmt.Printf("  %-32s %6.1f\n", c.name, med[i])
	}
	b.ReportMetric(med[2], "ns/pkt-gate+esp")
	for _, r := range []bench.Result{
		{Name: "xdp esp stage: ESP judged and passed (gate + esp, 1024-packet ESN window), prog.Run", Unit: "ns/pkt", Value: med[2],
			Anchor: "the chain with the gate only, same frame, same runs", AnchorValue: med[1], Goal: "record only (what the stage adds to an ESP packet the kernel then decrypts)"},
		{Name: "xdp esp stage: ESP judged and passed (gate + esp), against the chain's floor, prog.Run", Unit: "ns/pkt", Value: med[2],
			Anchor: "the chain's entry with no stage, same frame, same runs", AnchorValue: med[0], Goal: "record only"},
		{Name: "xdp esp stage: replay dropped (gate + esp), prog.Run", Unit: "ns/pkt", Value: med[3],
			Anchor: "the chain's entry with no stage, same runs", AnchorValue: med[0], Goal: "record only (the kernel's own replay drop is measured with ESP in the VM)"},
	} {
		if _, err := bench.Record(r); err != nil {
			b.Fatal(err)
		}
	}
}
