package migrate_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/migrate"
	"github.com/tandem-net/tandem/tools/bench"
)

// BenchmarkFlushRouted: the switch's flush of 30,000 held packets to a
// routed location (IP-in-IP: the template pushes the outer header in user
// space) against the same to a segment hop, into a segment host whose XDP
// drops them (the gateway's side alone), alternated, three times each.
func BenchmarkFlushRouted(b *testing.B) {
	frame := frame64(b)
	const n = 30000
	flush := func(to migrate.Location) time.Duration {
		w := newWorldSink(b, 65536, 32<<20, 1)
		var took time.Duration
		w.do(b, func() error {
			if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
				return err
			}
			if err := w.ctl.Start(ep4, to); err != nil {
				return err
			}
			if err := w.ctl.Blackout(ep4); err != nil {
				return err
			}
			if _, err := w.entry.Run(&ebpf.RunOptions{Data: frame, Repeat: n}); err != nil {
				return err
			}
			start := time.Now()
			err := w.ctl.Switch(ep4)
			took = time.Since(start)
			return err
		})
		if l, _ := w.ctl.List(); l[0].Migration.Flushed != n {
			b.Fatalf("flushed %d, want %d", l[0].Migration.Flushed, n)
		}
		return took
	}
	for b.Loop() {
		var seg, routed []time.Duration
		for range 3 {
			seg = append(seg, flush(migrate.Location{Hop: hopD}))
			routed = append(routed, flush(migrate.Location{Hop: routedHost, Encap: migrate.EncapIPIP}))
		}
		fmt.Printf("flush of %d held packets: segment hop %v, routed (IP-in-IP) %v\n", n, seg, routed)
		mid := func(d []time.Duration) time.Duration {
			s := append([]time.Duration(nil), d...)
			for i := range s {
				for j := i + 1; j < len(s); j++ {
					if s[j] < s[i] {
						s[i], s[j] = s[j], s[i]
					}
				}
			}
			return s[len(s)/2]
		}
		if _, err := bench.Record(bench.Result{Name: "migrate hold: time to flush 30,000 held packets to a routed location (IP-in-IP), into a sink", Unit: "ms",
			Value: float64(mid(routed).Microseconds()) / 1000, Anchor: "the same to a segment hop, same run", AnchorValue: float64(mid(seg).Microseconds()) / 1000, Goal: "under 50 ms"}); err != nil {
			b.Fatal(err)
		}
	}
}
