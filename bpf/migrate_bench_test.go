package bpf_test

import (
	"fmt"
	"testing"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
)

// BenchmarkMigrateStage: what the migrate stage costs a packet, with
// BPF_PROG_TEST_RUN and a repeat count (the kernel times the loop), in
// rotated rounds, medians: the chain's floor (the entry and one stage
// that declines), the stage declining a packet to an address that is no
// endpoint, forwarding one to an endpoint that is not migrating (FIB and
// neighbour lookup, TTL, MACs, redirect), and redirecting one to a
// migrating endpoint (to the source: one more hash lookup).
func BenchmarkMigrateStage(b *testing.B) {
	f := newMigFixture(b)
	floor := declineChain(b, 1)
	if err := f.gw.Do(func() error {
		if err := f.mm.SetEndpoint(migEP4, hopS4); err != nil {
			return err
		}
		return f.mm.SetEndpoint(migEP6, hopS6)
	}); err != nil {
		b.Fatal(err)
	}
	migrating := netipMustMigrate(b, f)
	type run struct {
		name  string
		frame []byte
		prog  *benchProg
		want  uint32
		ns    []float64
	}
	runs := []*run{
		{name: "floor: entry + one declining stage", frame: udp4to(b, migOther), prog: floor, want: 2},
		{name: "migrate, not an endpoint (declines)", frame: udp4to(b, migOther), want: 2},
		{name: "migrate, endpoint not migrating (ipv4)", frame: udp4to(b, migEP4), want: 4},
		{name: "migrate, endpoint not migrating (ipv6)", frame: udp6to(b, migEP6), want: 4},
		{name: "migrate, migrating endpoint (to the source)", frame: udp4to(b, migrating), want: 4},
	}
	// The stage decrements the TTL of what it forwards, in the one buffer
	// every run of a call shares: frames start at TTL 255 and a call runs
	// 250 times, so each run forwards (none sees an expired TTL).
	for _, x := range runs {
		setTTL255(x.frame)
	}
	const rounds, repeat = 201, 250
	for b.Loop() {
		for r := range rounds {
			for i := range runs {
				x := runs[(i+r)%len(runs)]
				prog := f.objs.XdpMigrate
				if x.prog != nil {
					prog = x.prog.prog
				}
				err := f.gw.Do(func() error {
					ret, d, err := prog.Benchmark(x.frame, repeat, nil)
					if err != nil {
						return err
					}
					if ret != x.want {
						return fmt.Errorf("%s: verdict %d, want %d", x.name, ret, x.want)
					}
					x.ns = append(x.ns, float64(d.Nanoseconds()))
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	base := median(runs[0].ns)
	fmt.Printf("migrate stage, ns/packet (medians of %d rounds of %d runs):\n", rounds, repeat)
	for _, x := range runs {
		fmt.Printf("  %-48s %6.1f  (%+.1f over the floor)\n", x.name, median(x.ns), median(x.ns)-base)
	}
	for _, r := range []bench.Result{
		{Name: "migrate stage, endpoint not migrating (ipv4 udp, forwarded: next-hop cache, rewrite, redirect), prog.Run", Unit: "ns/pkt", Value: median(runs[2].ns),
			Anchor: "the chain's floor: entry + one declining stage, same runs", AnchorValue: base, Goal: "within 20 ns of the floor"},
		{Name: "migrate stage, not an endpoint (declines), prog.Run", Unit: "ns/pkt", Value: median(runs[1].ns),
			Anchor: "the chain's floor: entry + one declining stage, same runs", AnchorValue: base, Goal: "record only"},
		{Name: "migrate stage, migrating endpoint (redirected to the source), prog.Run", Unit: "ns/pkt", Value: median(runs[4].ns),
			Anchor: "the chain's floor: entry + one declining stage, same runs", AnchorValue: base, Goal: "record only"},
	} {
		if _, err := bench.Record(r); err != nil {
			b.Fatal(err)
		}
	}
}

// setTTL255 sets an IPv4 TTL or IPv6 hop limit of an untagged frame
// to 255 (and fixes the IPv4 header checksum).
func setTTL255(f []byte) {
	switch f[12] {
	case 0x08:
		if f[13] != 0 {
			return
		}
		f[14+8] = 255
		f[14+10], f[14+11] = 0, 0
		var sum uint32
		for i := 14; i < 34; i += 2 {
			sum += uint32(f[i])<<8 | uint32(f[i+1])
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		c := ^uint16(sum)
		f[14+10], f[14+11] = byte(c>>8), byte(c)
	case 0x86:
		f[14+7] = 255
	}
}

// netipMustMigrate puts a second IPv4 endpoint in a migration (migrating:
// packets to the source) and returns it.
func netipMustMigrate(b *testing.B, f *migFixture) (ep netipAddr) {
	ep = mustAddr("10.98.0.51")
	err := f.gw.Do(func() error {
		if err := f.mm.SetEndpoint(ep, hopS4); err != nil {
			return err
		}
		return f.mm.PutMigration(ep, &maps.MigVal{State: uint32(bpf.MigrateMigStateIdMIG_MIGRATING), From: maps.MigLocOf(hopS4), To: maps.MigLocOf(hopD4)}, false)
	})
	if err != nil {
		b.Fatal(err)
	}
	return ep
}
