package loader_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/esplab"
	"github.com/tandem-net/tandem/xfrm"
)

// busyTicks is the machine's CPU time in use (every CPU, every mode but
// idle and iowait), in USER_HZ ticks, from /proc/stat: softirq work, where
// both the XDP stage and the kernel's ESP receive run, is charged to no
// process.
func busyTicks(t testing.TB) uint64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	fs := strings.Fields(sc.Text()) // cpu user nice system idle iowait irq softirq steal ...
	var busy uint64
	for i, v := range fs[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i != 3 && i != 4 && i < 8 {
			busy += n
		}
	}
	return busy
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkESPReplayCPU: the CPU a dropped replay costs when tandem's XDP
// stage drops it, against the kernel dropping it itself (its
// pre-decryption replay check), the same flood of one captured ESP frame
// sent again and again from the peer, in the same run: rounds alternate
// between the SA in esp_sa (the stage drops) and not (the stage declines,
// no_sa, and the kernel drops). The CPU is the machine's busy time
// (/proc/stat) over the flood, so both include the sender and the
// segment's bridge; the difference is the receiver's. Only the ratio
// means anything in the TCG VM. Each round checks who dropped: the
// stage's counter or the kernel's.
func BenchmarkESPReplayCPU(b *testing.B) {
	l := espLabUp(b, esplab.Spec{ESN: true, Window: 128})
	gw := l.OwnerHost()
	m, err := maps.OpenSAMaps(maps.Pins{Root: gw.BPFFS()})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	s, err := l.StartStream(100)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.WaitReceived(10, 60*time.Second); err != nil {
		b.Fatal(err)
	}
	frame, err := esplab.Capture(l.Peer, "eth0", l.In.SPI, 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if r := s.Stop(5 * time.Second); r.Lost != 0 {
		b.Fatalf("stream: %v", r)
	}
	sa, err := esplab.SA(gw, l.In)
	if err != nil {
		b.Fatal(err)
	}
	state := maps.SAState{Dst: sa.Dst, SPI: sa.SPI, ESN: sa.ESN, Seq: sa.Replay.Seq, SeqHi: sa.Replay.SeqHi, Window: sa.Replay.Window,
		Bitmap: sa.Replay.Bitmap, OSeq: sa.Replay.OSeq, OSeqHi: sa.Replay.OSeqHi}

	n := 20000 / espBenchScale()
	flood := make([][]byte, n)
	for i := range flood {
		flood[i] = frame
	}
	const rounds = 5
	var xdp, kern []float64
	for b.Loop() {
		for r := range 2 * rounds {
			inXDP := r%2 == 0
			if inXDP {
				if err := m.ReplaceSA(state); err != nil {
					b.Fatal(err)
				}
			} else if err := m.DeleteSA(state.Dst, state.SPI, false); err != nil {
				b.Fatal(err)
			}
			st0, err := m.ESPStats()
			if err != nil {
				b.Fatal(err)
			}
			k0, err := esplab.Read(gw, l.In)
			if err != nil {
				b.Fatal(err)
			}
			t0 := busyTicks(b)
			if err := esplab.Send(l.Peer, "eth0", flood...); err != nil {
				b.Fatal(err)
			}
			// Until the drops stop moving (a frame the segment lost is
			// no one's drop): the CPU is read at the last change.
			var (
				dropped, last uint64
				t1            = busyTicks(b)
				changed       = time.Now()
			)
			for deadline := time.Now().Add(120 * time.Second); time.Since(changed) < time.Second; time.Sleep(50 * time.Millisecond) {
				k1, err := esplab.Read(gw, l.In)
				if err != nil {
					b.Fatal(err)
				}
				st1, err := m.ESPStats()
				if err != nil {
					b.Fatal(err)
				}
				kd := uint64(k1.Sub(k0).Replay + k1.Sub(k0).Window)
				xd := st1["drop_replay"] + st1["drop_stale"] - st0["drop_replay"] - st0["drop_stale"]
				if inXDP && kd != 0 || !inXDP && xd != 0 {
					b.Fatalf("round %d (the SA in esp_sa: %v): the stage dropped %d, the kernel %d", r, inXDP, xd, kd)
				}
				if kd+xd != last {
					last, changed, t1 = kd+xd, time.Now(), busyTicks(b)
				}
				dropped = kd + xd
				if time.Now().After(deadline) {
					b.Fatalf("round %d: the drops never settled (%d of %d)", r, dropped, n)
				}
			}
			if dropped < uint64(n)/2 {
				b.Fatalf("round %d: %d of %d replays reached a dropper", r, dropped, n)
			}
			per := float64(t1-t0) * 1e9 / 100 / float64(dropped) // USER_HZ 100: ns per frame
			if inXDP {
				xdp = append(xdp, per)
			} else {
				kern = append(kern, per)
			}
		}
	}
	x, k := medianOf(xdp), medianOf(kern)
	fmt.Printf("CPU per dropped replay (machine busy time / frames, %d frames a round, medians of %d rounds): XDP stage %.0f ns, kernel %.0f ns\n", n, rounds, x, k)
	if _, err := bench.Record(bench.Result{
		Name: "CPU per dropped ESP replay, XDP stage vs the kernel's replay check (esplab flood of one captured frame)", Unit: "ns/replay",
		Value: x, Anchor: "the kernel dropping the same flood (the SA not in esp_sa), same run", AnchorValue: k,
		Goal: "below the anchor (in the TCG VM a ratio only; both include the sender and the bridge)",
	}); err != nil {
		b.Fatal(err)
	}
}

func espBenchScale() int {
	s, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE"))
	if err != nil || s < 1 {
		return 1
	}
	return s
}

// BenchmarkESPSyncTick: 10,000 SAs on the gateway, all in esp_sa, ESP
// traffic on 10 of them: what one sync tick reads with the dirty marking
// (the replay tracer marks a changed SA once per tick; the drain reads
// the records and looks up each entry) against the polling anchor, a
// periodic dump of every SA over XFRM netlink, same traffic, interleaved
// ticks. Counted (SAs read per tick) and timed (per tick, medians).
func BenchmarkESPSyncTick(b *testing.B) {
	const total, flows = 10000, 10
	l := espLabUp(b, esplab.Spec{ESN: true, Window: 128, FlowSAs: flows, IdleSAs: total - flows - 2})
	gw := l.OwnerHost()
	feed := newESPFeed(b, gw)
	if feed.sync == nil {
		b.Skipf("skipped: kernel feature %q missing: the replay source is %s", "fexit on xfrm_replay_advance/xfrm_replay_overflow", feed.source)
	}
	for deadline := time.Now().Add(300 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		all, err := feed.m.ListSAs()
		if err != nil {
			b.Fatal(err)
		}
		if len(all) == total {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("esp_sa holds %d SAs, want %d", len(all), total)
		}
	}
	fd, _, err := esplab.NetNS(gw)
	if err != nil {
		b.Fatal(err)
	}
	defer closeFD(fd)
	conn, err := xfrm.Dial(fd)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	drain := func() (int, time.Duration) {
		start := time.Now()
		if _, err := feed.sync.AdvanceEpoch(); err != nil {
			b.Fatal(err)
		}
		keys := map[string]bool{}
		if _, err := feed.sync.Drain(func(r *maps.SyncRec) { keys[string(r.Key[:r.KeyLen])] = true }); err != nil {
			b.Fatal(err)
		}
		var v maps.SAVal
		for k := range keys {
			var key maps.SAKey
			copy(key.Daddr[:], k[:16])
			key.Spi = uint32(k[16]) | uint32(k[17])<<8 | uint32(k[18])<<16 | uint32(k[19])<<24
			key.Proto, key.Encap = k[20], k[21]
			if err := feed.m.SA.Lookup(&key, &v); err != nil {
				b.Fatalf("read a marked SA: %v", err)
			}
		}
		return len(keys), time.Since(start)
	}
	drain()
	var streams []*esplab.Stream
	for i := range flows {
		s, err := l.StartFlow(i, 50)
		if err != nil {
			b.Fatal(err)
		}
		streams = append(streams, s)
	}
	const ticks = 20
	var dirtyN, dumpN, dirtyT, dumpT []float64
	for b.Loop() {
		for range ticks {
			time.Sleep(200 * time.Millisecond) // a few packets on each flow
			n, d := drain()
			dirtyN, dirtyT = append(dirtyN, float64(n)), append(dirtyT, float64(d.Microseconds()))
			start := time.Now()
			sas, err := conn.List(nil)
			if err != nil {
				b.Fatal(err)
			}
			dumpN, dumpT = append(dumpN, float64(len(sas))), append(dumpT, float64(time.Since(start).Microseconds()))
		}
	}
	for _, s := range streams {
		if r := s.Stop(5 * time.Second); r.Lost != 0 {
			b.Logf("flow: %v", r)
		}
	}
	if medianOf(dirtyN) > flows {
		b.Fatalf("a tick read %v SAs, want at most the %d with traffic", dirtyN, flows)
	}
	fmt.Printf("sync tick, %d SAs, traffic on %d: dirty marking reads %v SAs (median %.0f µs); a dump reads %.0f (median %.0f µs)\n",
		total, flows, dirtyN, medianOf(dirtyT), medianOf(dumpN), medianOf(dumpT))
	for _, r := range []bench.Result{
		{Name: "ESP SAs read per sync tick, 10,000 SAs with traffic on 10: dirty marking vs a dump of every SA", Unit: "SAs/tick",
			Value: medianOf(dirtyN), Anchor: "a periodic XFRM dump of every SA (polling), same ticks", AnchorValue: medianOf(dumpN), Goal: "about 10, not 10,000"},
		{Name: "ESP sync tick time, 10,000 SAs with traffic on 10: dirty marking vs a dump of every SA", Unit: "µs/tick",
			Value: medianOf(dirtyT), Anchor: "a periodic XFRM dump of every SA (polling), same ticks", AnchorValue: medianOf(dumpT), Goal: "record only (in the TCG VM a ratio only)"},
	} {
		if _, err := bench.Record(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkESPTraceCost: the sync cost per ESP packet of the dirty
// marking, i.e. the replay tracer's: the same bursts of ESP from the peer
// to the gateway (UDP through the SAs, as fast as the peer sends), rounds
// alternating between the tracer attached (it copies the verified state
// into esp_sa and marks it dirty on every packet) and detached (the
// kernel's hooks run nothing), in the same run. The CPU is the machine's
// busy time (/proc/stat) over the burst, divided by the packets the
// gateway's kernel verified (its window top moved by that many); it
// includes the peer's encryption and the bridge, the same both ways, so
// the difference is the tracer's. Each round checks that the tracer
// copied (attached) or did not (detached). In the TCG VM a ratio only.
func BenchmarkESPTraceCost(b *testing.B) {
	l := espLabUp(b, esplab.Spec{ESN: true, Window: 128})
	gw := l.OwnerHost()
	feed := newESPFeed(b, gw)
	if feed.tr == nil {
		b.Skipf("skipped: kernel feature %q missing: the replay source is %s", "fexit on xfrm_replay_advance/xfrm_replay_overflow", feed.source)
	}
	feed.waitSA(b, l.In, "put by the follower", func(_ maps.SAState, ok bool) bool { return ok })
	const port = 7599
	var sink, src *net.UDPConn
	if err := gw.Do(func() (err error) {
		sink, err = net.ListenUDP("udp", &net.UDPAddr{IP: l.StreamDst.AsSlice(), Port: port})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	if err := l.Peer.Do(func() (err error) {
		src, err = net.DialUDP("udp", &net.UDPAddr{IP: l.StreamSrc.AsSlice()}, &net.UDPAddr{IP: l.StreamDst.AsSlice(), Port: port})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	n := 20000 / espBenchScale()
	payload := make([]byte, 64)
	const rounds = 5
	var on, off []float64
	for b.Loop() {
		for r := range 2 * rounds {
			attached := r%2 == 0
			if attached {
				if err := feed.tr.Attach(); err != nil {
					b.Fatal(err)
				}
			} else if err := feed.tr.Detach(); err != nil {
				b.Fatal(err)
			}
			k0, err := esplab.Read(gw, l.In)
			if err != nil {
				b.Fatal(err)
			}
			x0, _ := feed.get(b, l.In)
			t0 := busyTicks(b)
			for i := 0; i < n; i++ {
				if _, err := src.Write(payload); err != nil {
					time.Sleep(time.Millisecond) // ENOBUFS: the peer's queue is full
				}
			}
			var (
				last    = k0.Top
				t1      = busyTicks(b)
				changed = time.Now()
			)
			for deadline := time.Now().Add(120 * time.Second); time.Since(changed) < time.Second; time.Sleep(50 * time.Millisecond) {
				k1, err := esplab.Read(gw, l.In)
				if err != nil {
					b.Fatal(err)
				}
				if k1.Top != last {
					last, changed, t1 = k1.Top, time.Now(), busyTicks(b)
				}
				if time.Now().After(deadline) {
					b.Fatalf("round %d: the window never settled", r)
				}
			}
			adv := last - k0.Top
			if adv < uint64(n)/2 {
				b.Fatalf("round %d: the gateway verified %d of %d packets", r, adv, n)
			}
			x1, _ := feed.get(b, l.In)
			if attached && x1.Top() != last || !attached && x1.Top() != x0.Top() {
				b.Fatalf("round %d (tracer attached: %v): esp_sa's top %d -> %d, the kernel's %d -> %d", r, attached, x0.Top(), x1.Top(), k0.Top, last)
			}
			per := float64(t1-t0) * 1e7 / float64(adv) // USER_HZ 100: ns per packet
			if attached {
				on = append(on, per)
			} else {
				off = append(off, per)
			}
		}
	}
	if err := feed.tr.Attach(); err != nil {
		b.Fatal(err)
	}
	a, d := medianOf(on), medianOf(off)
	fmt.Printf("CPU per inbound ESP packet (machine busy time / packets verified, %d a round, medians of %d rounds): tracer attached %.0f ns %v, detached %.0f ns %v; the dirty marking costs %.0f ns a packet\n", n, rounds, a, on, d, off, a-d)
	if _, err := bench.Record(bench.Result{
		Name: "Sync cost per ESP packet of the dirty marking: CPU per inbound ESP packet, replay tracer attached vs detached (esplab burst)", Unit: "ns/packet",
		Value: a, Anchor: "the same bursts with the tracer detached, same run", AnchorValue: d,
		Goal: "record only: the difference is the tracer's cost (in the TCG VM a ratio only; both include the peer's encryption and the bridge)",
	}); err != nil {
		b.Fatal(err)
	}
}
