package bpf_test

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/tools/bench"
)

// BenchmarkXDPGate measures the VIP gate's cost per packet with prog.Run
// against its anchor: an XDP program that only returns XDP_PASS, the floor
// of any XDP program on this kernel, run on the same frame in the same run.
func BenchmarkXDPGate(b *testing.B) {
	objs, _ := loadVipgate(b, bpf.VipgateGateModeGATE_ENFORCE)
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer pass.Close()
	frames := map[string][]byte{
		"ipv4 tcp to owned vip": tcp4(b, client4, vipOwned),
		"ipv6 tcp to owned vip": tcp6(b, client6, vip6),
		"ipv4 tcp to non-vip":   tcp4(b, client4, other4),
	}
	for name, frame := range frames {
		b.Run(name, func(b *testing.B) {
			const repeat = 1 << 16
			per := func(p *ebpf.Program) time.Duration {
				best := time.Duration(1 << 62)
				for range 5 {
					_, d, err := p.Benchmark(frame, repeat, nil)
					if err != nil {
						b.Fatal(err)
					}
					best = min(best, d)
				}
				return best
			}
			var gate, floor time.Duration
			for b.Loop() {
				gate, floor = per(objs.XdpVipgate), per(pass)
			}
			b.ReportMetric(float64(gate.Nanoseconds()), "ns/pkt")
			if _, err := bench.Record(bench.Result{
				Name: "xdp_vipgate " + name, Unit: "ns/pkt", Value: float64(gate.Nanoseconds()),
				Anchor: "xdp return XDP_PASS", AnchorValue: float64(floor.Nanoseconds()),
				Goal: "record only (the gate's cost over the XDP floor)",
			}); err != nil {
				b.Fatal(err)
			}
		})
	}
}
