package bpf_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
)

// BenchmarkMigrateStage: what the migrate stage costs a packet, with
// BPF_PROG_TEST_RUN and a repeat count (the kernel times the loop), in
// rotated rounds, medians: the chain's floor (the entry and one stage
// that declines), the stage declining a packet to an address that is no
// endpoint, forwarding one to an endpoint that is not migrating (from
// this CPU's mig_fast slot: TTL, MACs, redirect), and redirecting one to
// a migrating endpoint (to the source: the migration record, the next-hop
// cache). The same build with mig_fast left out (cfg_fast 0) runs in the
// same rounds: what a packet whose slot missed costs (the endpoint's
// record and its forward cache).
//
// TANDEM_MIG_VARIANTS (paths of other builds of migrate.c, comma-separated)
// adds builds to the rounds, as TANDEM_SP_VARIANTS does for the SYN proxy:
// how the profile in docs/migration.md was taken, with parts stubbed out.
func BenchmarkMigrateStage(b *testing.B) {
	type build struct {
		name string
		f    *migFixture
	}
	builds := []build{{"", newMigFixture(b)}}
	// The same build with the per-CPU cache (mig_fast) left out: what a
	// packet costs when its slot misses (the record's forward cache).
	builds = append(builds, build{"mig_fast off", newMigFixtureSpec(b, builds[0].f.gw, nil, func(spec *ebpf.CollectionSpec) error {
		return spec.Variables[bpf.MigrateVarCfgFast].Set(uint32(0))
	})})
	if v := os.Getenv("TANDEM_MIG_VARIANTS"); v != "" {
		for _, path := range strings.Split(v, ",") {
			spec, err := ebpf.LoadCollectionSpec(path)
			if err != nil {
				b.Fatalf("%s: %v", path, err)
			}
			builds = append(builds, build{filepath.Base(path), newMigFixtureSpec(b, builds[0].f.gw, spec, nil)})
		}
	}
	floor := declineChain(b, 1)
	type run struct {
		name  string
		frame []byte
		f     *migFixture
		prog  *benchProg
		want  uint32 // 0: any (a stubbed variant)
		ns    []float64
	}
	runs := []*run{{name: "floor: entry + one declining stage", frame: udp4to(b, migOther), f: builds[0].f, prog: floor, want: 2}}
	for i, bd := range builds {
		f := bd.f
		if err := f.gw.Do(func() error {
			if err := f.mm.SetEndpoint(migEP4, hopS4); err != nil {
				return err
			}
			return f.mm.SetEndpoint(migEP6, hopS6)
		}); err != nil {
			b.Fatal(err)
		}
		migrating := netipMustMigrate(b, f)
		want := func(v uint32) uint32 {
			if i > 1 {
				return 0
			}
			return v
		}
		name := func(s string) string {
			if i > 0 {
				return bd.name + ": " + s
			}
			return s
		}
		runs = append(runs,
			&run{name: name("migrate, not an endpoint (declines)"), frame: udp4to(b, migOther), f: f, want: want(2)},
			&run{name: name("migrate, endpoint not migrating (ipv4)"), frame: udp4to(b, migEP4), f: f, want: want(4)},
			&run{name: name("migrate, endpoint not migrating (ipv6)"), frame: udp6to(b, migEP6), f: f, want: want(4)},
			&run{name: name("migrate, migrating endpoint (to the source)"), frame: udp4to(b, migrating), f: f, want: want(4)},
		)
	}
	// The stage decrements the TTL of what it forwards, in the one buffer
	// every run of a call shares: frames start at TTL 255 and a call runs
	// 250 times, so each run forwards (none sees an expired TTL).
	for _, x := range runs {
		setTTL255(x.frame)
	}
	const rounds, repeat = 201, 250
	// One namespace for every build (entering one costs more than a
	// round), entered once a round.
	for b.Loop() {
		for r := range rounds {
			err := builds[0].f.gw.Do(func() error {
				for i := range runs {
					x := runs[(i+r)%len(runs)]
					prog := x.f.objs.XdpMigrate
					if x.prog != nil {
						prog = x.prog.prog
					}
					ret, d, err := prog.Benchmark(x.frame, repeat, nil)
					if err != nil {
						return err
					}
					if x.want != 0 && ret != x.want {
						return fmt.Errorf("%s: verdict %d, want %d", x.name, ret, x.want)
					}
					x.ns = append(x.ns, float64(d.Nanoseconds()))
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	base := median(runs[0].ns)
	fmt.Printf("migrate stage, ns/packet (medians of %d rounds of %d runs):\n", rounds, repeat)
	for _, x := range runs {
		fmt.Printf("  %-60s %6.1f  (%+.1f over the floor)\n", x.name, median(x.ns), median(x.ns)-base)
	}
	for _, r := range []bench.Result{
		{Name: "migrate stage, endpoint not migrating (ipv4 udp, forwarded: next-hop cache, rewrite, redirect), prog.Run", Unit: "ns/pkt", Value: median(runs[2].ns),
			Anchor: "the chain's floor: entry + one declining stage, same runs", AnchorValue: base, Goal: "within 20 ns of the floor"},
		{Name: "migrate stage, endpoint not migrating (ipv6 udp, forwarded), prog.Run", Unit: "ns/pkt", Value: median(runs[3].ns),
			Anchor: "the chain's floor: entry + one declining stage, same runs", AnchorValue: base, Goal: "within 20 ns of the floor"},
		{Name: "migrate stage, endpoint not migrating (ipv4 udp), its per-CPU slot missed (mig_fast off: the record's forward cache), prog.Run", Unit: "ns/pkt", Value: median(runs[6].ns),
			Anchor: "the chain's floor: entry + one declining stage, same runs", AnchorValue: base, Goal: "record only"},
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
