package bpf_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/synflood"
)

// presynObject is synproxy.c before issue 15's work on the SYN path
// (commit a64ea0b), built by bpf2go with gen.go's flags: the anchor of
// BenchmarkSynproxySynRun and BenchmarkSynproxySynFlood.
const presynObject = "testdata/synproxy_presyn.o"

type synBuild struct {
	name string
	p    *proxy
	ns   []float64 // one per round
}

// synBuilds loads the current build, the anchor (presynObject) and the
// builds TANDEM_SP_VARIANTS names (paths of other builds of synproxy.c,
// comma-separated: how the profile in docs/synproxy.md was taken, with
// parts stubbed out), each with the fixture services and secrets.
func synBuilds(b *testing.B) []*synBuild {
	b.Helper()
	builds := []*synBuild{{name: "now", p: loadSynproxy(b)}}
	paths := []string{presynObject}
	if v := os.Getenv("TANDEM_SP_VARIANTS"); v != "" {
		paths = append(paths, strings.Split(v, ",")...)
	}
	for i, path := range paths {
		spec, err := ebpf.LoadCollectionSpec(path)
		if err != nil {
			b.Fatalf("%s: %v", path, err)
		}
		name := filepath.Base(path)
		if i == 0 {
			name = "presyn"
		}
		builds = append(builds, &synBuild{name: name, p: loadSynproxySpec(b, withMaps(b, spec), nil)})
	}
	return builds
}

// BenchmarkSynproxySynRun: a SYN answered, the program's own run time
// (bench.RunTime) per BPF_PROG_TEST_RUN call, the current build against
// the build before the SYN work (presynObject) in the same rounds: the
// same frame, 16 rounds of 4,096 calls with the order rotated, the
// median round of each. The program is the chain's entry with the proxy
// as its stage, as an interface runs it.
func BenchmarkSynproxySynRun(b *testing.B) {
	builds := synBuilds(b)
	for _, f := range []struct {
		name string
		o    synOpts
	}{
		{"ipv4 syn (mss, sack, ts, ws)", synOpts{mss: 1460, ws: 7, sack: true, tsval: 1, isn: 1}},
		{"ipv6 syn (mss, sack, ts, ws)", synOpts{mss: 1440, ws: 7, sack: true, tsval: 1, isn: 1, v6: true}},
		{"ipv4 syn (mss, nop, ws, nop, nop, sack)", synOpts{mss: 1460, ws: 8, sack: true, isn: 1}},
	} {
		frame := f.o.segment(b, nil)
		b.Run(f.name, func(b *testing.B) {
			const n, rounds = 1 << 12, 16
			for _, bd := range builds {
				bd.ns = nil
			}
			for b.Loop() {
				for r := range rounds {
					for k := range builds {
						bd := builds[(r+k)%len(builds)]
						prog := bd.p.objs.XdpSynproxy
						before := bd.p.stats(b)["syn_answered"]
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
						if got := bd.p.stats(b)["syn_answered"] - before; got != n {
							b.Fatalf("build %s: %d SYNs answered of %d: the benchmark did not run the SYN path", bd.name, got, n)
						}
						bd.ns = append(bd.ns, ns)
					}
				}
			}
			now, anchor := median(builds[0].ns), median(builds[1].ns)
			b.ReportMetric(now, "ns/syn")
			for _, bd := range builds[1:] {
				b.ReportMetric(median(bd.ns), bd.name+"-ns/syn")
			}
			if _, err := bench.Record(bench.Result{Name: fmt.Sprintf("xdp_synproxy %s, program run time per BPF_PROG_TEST_RUN call (issue 15)", f.name), Unit: "ns/syn", Value: now,
				Anchor: "the build before issue 15's SYN work (" + presynObject + "), same frame, interleaved rounds", AnchorValue: anchor, Goal: "record only (the flood's figure carries the goal)"}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkSynproxySynFlood: SYNs answered under a live flood
// (tools/synflood: XDP live frames, random sources, Linux's option
// layout) on a veth, the gateway's chain entry with the proxy as its
// stage, the current build against presynObject (and TANDEM_SP_VARIANTS)
// swapped through one XDP link between floods, rounds interleaved with
// the order rotated: the kernel-measured run time per SYN (a
// tail-called stage's time is its entry's), medians. The generator's
// side drops the SYN-ACKs in XDP.
func BenchmarkSynproxySynFlood(b *testing.B) {
	builds := synBuilds(b)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "gen"}, {Name: "gw"}},
		Links: []lab.LinkSpec{{TxOff: true,
			A: lab.End{Host: "gen", Iface: "eth0", Addrs: []string{"10.58.0.1/24"}},
			B: lab.End{Host: "gw", Iface: "eth0", Addrs: []string{"10.58.0.2/24"}}}},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	gen, gw := l.Host("gen"), l.Host("gw")
	drop, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { drop.Close() })
	attach := func(h *lab.Host, prog *ebpf.Program) (link.Link, net.HardwareAddr, int) {
		var xl link.Link
		var mac net.HardwareAddr
		var idx int
		if err := h.Do(func() error {
			i, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			mac, idx = i.HardwareAddr, i.Index
			xl, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: i.Index})
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { xl.Close() })
		return xl, mac, idx
	}
	// The SYN-ACKs XDP_TX sends into the veth need an XDP program on the
	// generator's end; it drops them.
	_, genMAC, genIdx := attach(gen, drop)
	xl, gwMAC, _ := attach(gw, builds[0].p.objs.XdpSynproxy)
	var flood *synflood.Generator
	if err := gen.Do(func() (err error) {
		flood, err = synflood.New(genMAC, gwMAC, netip.AddrPortFrom(svc4, 80))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { flood.Close() })

	const rounds, n = 7, 400_000
	for b.Loop() {
		for r := range rounds {
			for k := range builds {
				bd := builds[(r+k)%len(builds)]
				prog := bd.p.objs.XdpSynproxy
				if err := xl.Update(prog); err != nil {
					b.Fatal(err)
				}
				before := bd.p.stats(b)
				ns, err := bench.RunTime(prog, func() error {
					return gen.Do(func() error { return flood.Send(genIdx, n) })
				})
				if err != nil {
					b.Fatalf("%s: %v", bd.name, err)
				}
				// A veth may drop a frame when its ring is full: the
				// answers are checked against the SYNs that arrived,
				// every one of which must have been answered.
				after := bd.p.stats(b)
				if got, bad := after["syn_answered"]-before["syn_answered"], after["bad_checksum"]-before["bad_checksum"]; bd.name == "now" && (got < n/2 || bad != 0) {
					b.Fatalf("build %s: %d SYNs answered of %d sent, %d bad checksums: the flood did not run the SYN path", bd.name, got, n, bad)
				}
				bd.ns = append(bd.ns, ns)
			}
		}
	}
	now, anchor := median(builds[0].ns), median(builds[1].ns)
	var line []string
	for _, bd := range builds {
		line = append(line, fmt.Sprintf("%s %.1f (rounds %.0f)", bd.name, median(bd.ns), bd.ns))
	}
	fmt.Printf("SYN under a live flood, kernel-measured ns per SYN, medians of %d floods of %d: %s\n", rounds, n, strings.Join(line, "; "))
	b.ReportMetric(now, "ns/syn")
	for _, bd := range builds[1:] {
		b.ReportMetric(median(bd.ns), bd.name+"-ns/syn")
	}
	if _, err := bench.Record(bench.Result{Name: "xdp_synproxy SYN under a live SYN flood, program run time (kernel-measured, veth lab, issue 15)", Unit: "ns/SYN", Value: now,
		Anchor: "the build before issue 15's SYN work (" + presynObject + "), same floods, interleaved", AnchorValue: anchor, Goal: "<= 100 ns"}); err != nil {
		b.Fatal(err)
	}
}
