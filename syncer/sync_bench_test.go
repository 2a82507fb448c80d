package syncer_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/bench"
)

func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// connected returns a primary engine streaming to a standby over a mutual
// TLS session on loopback.
func connected(b *testing.B, ring uint32) (*host, *syncer.Engine, *syncer.Sender, syncer.Map) {
	h := newHost2(b, ring)
	certs := pairCertsTB(b)
	peer := newPeerMapTB(b, h)
	rcv := &syncer.Receiver{TLS: tlsConfigTB(b, certs, "standby"), Applier: syncer.NewApplier(peer), Log: discard}
	ln := listen(b)
	go rcv.Serve(ln)
	s, err := syncer.Dial(context.Background(), ln.Addr().String(), tlsConfigTB(b, certs, "primary"), syncer.Hello{Generation: 1}, 1<<23)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(); ln.Close() })
	e, err := syncer.NewEngine(h.sync, h.reg)
	if err != nil {
		b.Fatal(err)
	}
	return h, e, s, peer
}

// BenchmarkReplication: 1,000,000 changes (64 per packet) with a 10 ms tick,
// streamed to a standby over TLS on loopback: deltas per second end to end,
// and the lag from a tick to the standby's acknowledgement of it.
func BenchmarkReplication(b *testing.B) {
	const n, per, tickEvery = 1_000_000, 64, 10 * time.Millisecond
	for b.Loop() {
		h, e, s, _ := connected(b, 32<<20)
		var (
			mu   sync.Mutex
			wg   sync.WaitGroup
			lags []time.Duration
		)
		start := time.Now()
		next := start
		k := uint32(0)
		for k < n {
			for time.Now().Before(next) && k < n {
				h.send(b, frame(bpf.SynctestSynctestOpST_UPSERT, k, per, 1), 1)
				k += per
			}
			next = next.Add(tickEvery)
			t0 := time.Now()
			if err := e.Tick(s.Send); err != nil {
				b.Fatal(err)
			}
			s.Flush()
			seq := e.Seq()
			wg.Add(1)
			go func(seq uint64, t0 time.Time) {
				defer wg.Done()
				if s.WaitAcked(seq, time.Minute) == nil {
					mu.Lock()
					lags = append(lags, time.Since(t0))
					mu.Unlock()
				}
			}(seq, t0)
		}
		if err := s.WaitAcked(e.Seq(), time.Minute); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		wg.Wait()
		rate := float64(e.Stats.Deltas) / took.Seconds()
		slices.Sort(lags)
		p := func(q float64) time.Duration { return lags[int(q*float64(len(lags)-1))] }
		bench.Record(bench.Result{Name: "replication deltas/s (1M changes, TLS, loopback)", Unit: "deltas/s", Value: rate,
			Anchor: "goal", AnchorValue: 1_000_000, Goal: "at least 1,000,000 deltas/s"})
		bench.Record(bench.Result{Name: "replication lag p50", Unit: "ticks", Value: float64(p(0.5)) / float64(tickEvery),
			Anchor: "goal", AnchorValue: 3, Goal: "p99 within 3 ticks"})
		bench.Record(bench.Result{Name: "replication lag p99", Unit: "ticks", Value: float64(p(0.99)) / float64(tickEvery),
			Anchor: "goal", AnchorValue: 3, Goal: "p99 within 3 ticks"})
	}
}

// BenchmarkTickVsFullScan: the CPU a tick costs for a 1,000,000-entry
// table in which 1% of the entries change per second, against the prior
// art this design replaces: a full scan and diff of the table every tick.
func BenchmarkTickVsFullScan(b *testing.B) {
	const n, tick, seconds = 1_000_000, 10 * time.Millisecond, 2
	for b.Loop() {
		h := newHost2(b, 32<<20)
		e, _ := syncer.NewEngine(h.sync, h.reg)
		for k := uint32(0); k < n; k += 64 {
			h.send(b, frame(bpf.SynctestSynctestOpST_UPSERT, k, 64, 1), 1)
			if k%(64*1000) == 0 {
				e.Tick(func(syncer.Delta) error { return nil })
			}
		}
		e.Tick(func(syncer.Delta) error { return nil })
		// 1% of the table per second: 10,000 changes/s, 100 per tick.
		changesPerTick := uint32(n / 100 * int(tick) / int(time.Second))
		// Each runs for the same wall time; a step slower than a tick
		// runs back to back and shows as a core's worth of CPU a second.
		run := func(step func()) (time.Duration, int) {
			c0, start := cpuTime(), time.Now()
			k, ticks := uint32(0), 0
			for next := start; time.Since(start) < seconds*time.Second; ticks++ {
				for i := uint32(0); i < changesPerTick; i += 50 {
					h.send(b, frame(bpf.SynctestSynctestOpST_UPSERT, k%n, 50, 1), 1)
					k += 7919 * 50
				}
				step()
				next = next.Add(tick)
				time.Sleep(time.Until(next))
			}
			return time.Duration(float64(cpuTime()-c0) / time.Since(start).Seconds()), ticks
		}
		ours, ourTicks := run(func() { e.Tick(func(syncer.Delta) error { return nil }) })
		prev := map[uint32][]byte{}
		scan, scanTicks := run(func() {
			var key uint32
			val := make([]byte, h.objs.SyncTest.ValueSize())
			it := h.objs.SyncTest.Iterate()
			changed := 0
			for it.Next(&key, &val) {
				if old, ok := prev[key]; !ok || !slices.Equal(old[:8], val[:8]) {
					prev[key] = slices.Clone(val)
					changed++
				}
			}
		})
		b.Logf("ticks done in %ds: tandem %d, full scan %d (of %d wanted)", seconds, ourTicks, scanTicks, seconds*int(time.Second/tick))
		bench.Record(bench.Result{Name: "sync CPU, 1M entries, 1%/s changing", Unit: "ms CPU/s", Value: float64(ours.Microseconds()) / 1000,
			Anchor: "full scan and diff every 10 ms tick", AnchorValue: float64(scan.Microseconds()) / 1000, Goal: "a small fraction of the scan"})
	}
}

// BenchmarkFullResync: a full resync of 1,000,000 entries to a standby
// over TLS on loopback.
func BenchmarkFullResync(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		h, e, s, peer := connected(b, 32<<20)
		for k := uint32(0); k < n; k += 64 {
			h.send(b, frame(bpf.SynctestSynctestOpST_UPSERT, k, 64, 1), 1)
			if k%(64*1000) == 0 {
				e.Tick(func(syncer.Delta) error { return nil })
			}
		}
		e.Tick(func(syncer.Delta) error { return nil })
		start := time.Now()
		if err := e.Full(s.Send); err != nil {
			b.Fatal(err)
		}
		s.Flush()
		if err := s.WaitAcked(e.Seq(), 5*time.Minute); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		if err := peer.M.Lookup(uint32(n-1), new(bpf.SynctestSynctestVal)); err != nil {
			b.Fatalf("standby lacks the last entry: %v", err)
		}
		bench.Record(bench.Result{Name: "full resync of 1M entries", Unit: "s", Value: took.Seconds(),
			Anchor: "goal", AnchorValue: 2, Goal: "under 2 s"})
	}
}
