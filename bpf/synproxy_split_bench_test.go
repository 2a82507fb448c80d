package bpf_test

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/tools/bench"
)

// presplitObject is synproxy.c as it was before it was split into
// bpf/synproxy/*.h (commit af9654b), built by bpf2go with the flags in
// gen.go: the anchor of BenchmarkSynproxySplit.
const presplitObject = "testdata/synproxy_presplit.o"

// BenchmarkSynproxySplit: the SYN proxy's cost per SYN answered and per
// established segment each way, the split build against the pre-split
// one, in the same run: the same frames, one proxy each with the same
// services and keys, rounds interleaved so that whatever else the machine
// does falls on both, and the median round of each. The figure is the
// program's own run time (bench.RunTime); the goal is no regression
// beyond noise. The noise is measured too: a second load of the
// pre-split build runs in the same rounds, and its ratio to the first is
// recorded beside the split's.
func BenchmarkSynproxySplit(b *testing.B) {
	old, err := ebpf.LoadCollectionSpec(presplitObject)
	if err != nil {
		b.Fatalf("%s: %v", presplitObject, err)
	}
	// The split build, the pre-split one, and the pre-split one again.
	builds := []*proxy{loadSynproxy(b), loadSynproxySpec(b, old, nil), loadSynproxySpec(b, old.Copy(), nil)}
	ns := newIsolatedNetns(b)
	type frame struct {
		name, stat string
		in         [3][]byte // per build: the established ones name its connection
	}
	var frames []frame
	syn := synOpts{mss: 1460, ws: 7, sack: true, tsval: 1, isn: 1}.segment(b, nil)
	frames = append(frames, frame{"ipv4 syn (mss, sack, ts, ws)", "syn_answered", [3][]byte{syn, syn, syn}})
	payload := make([]byte, 1448)
	var fwd, rev [3][]byte
	for i, p := range builds {
		client, vip, backend, cookie, bisn := establish(b, p, ns, 45000)
		fwd[i] = seg{src: client, dst: vip, seq: 2, ack: cookie + 1, ackf: true, window: 500, ws: -1, ts: true, tsval: 12, tsecr: cookie, payload: payload}.frame(b)
		rev[i] = seg{src: backend, dst: client, seq: bisn + 1, ack: 2, ackf: true, window: 500, ws: -1, ts: true, tsval: 100, tsecr: 12, payload: payload}.frame(b)
	}
	frames = append(frames, frame{"established client to backend", "to_backend", fwd}, frame{"established backend to client", "to_client", rev})
	for _, f := range frames {
		b.Run(f.name, func(b *testing.B) {
			// One run per call: repeats would run on the frame the first
			// run rewrote.
			const n, rounds = 1 << 12, 16
			per := func(i int) (d float64) {
				p := builds[i]
				prog := p.objs.XdpSynproxy
				done := make(chan struct{})
				before := p.stats(b)[f.stat]
				ns.req <- func() {
					defer close(done)
					var err error
					d, err = bench.RunTime(prog, func() error {
						for range n {
							if _, err := prog.Run(&ebpf.RunOptions{Data: f.in[i]}); err != nil {
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
				if got := p.stats(b)[f.stat] - before; got != n {
					b.Fatalf("build %d: %s moved by %d of %d runs: the benchmark did not run the path it names", i, f.stat, got, n)
				}
				return d
			}
			// The median of the rounds: a burst of other work on the
			// machine lands in one round, not in the figure.
			var split, presplit, again float64
			for b.Loop() {
				var d [3][]float64
				for r := range rounds {
					// Rotate which build goes first.
					for k := range 3 {
						i := (r + k) % 3
						d[i] = append(d[i], per(i))
					}
				}
				split, presplit, again = median(d[0]), median(d[1]), median(d[2])
			}
			b.ReportMetric(split, "ns/pkt")
			b.ReportMetric(presplit, "presplit-ns/pkt")
			if _, err := bench.Record(bench.Result{Name: fmt.Sprintf("xdp_synproxy %s, split build vs pre-split build, program run time", f.name), Unit: "ns/pkt", Value: split,
				Anchor: "pre-split synproxy.c (" + presplitObject + "), same frames, interleaved rounds", AnchorValue: presplit, Goal: "no regression beyond noise"}); err != nil {
				b.Fatal(err)
			}
			if _, err := bench.Record(bench.Result{Name: fmt.Sprintf("xdp_synproxy %s, pre-split build vs itself (the noise of the split comparison)", f.name), Unit: "ns/pkt", Value: again,
				Anchor: "pre-split synproxy.c, another load, same rounds", AnchorValue: presplit, Goal: "record only (how far from 1 a ratio of equal builds lands)"}); err != nil {
				b.Fatal(err)
			}
		})
	}
}
