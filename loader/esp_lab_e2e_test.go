package loader_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/esplab"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
	"github.com/tandem-net/tandem/xfrm"
)

// espLabUp builds an esplab lab (skipping, named, on a kernel without
// ESP) and runs tandem's ESP stage on the owner's eth0.
func espLabUp(t testing.TB, spec esplab.Spec) *esplab.Lab {
	t.Helper()
	testenv.RequireRoot(t)
	lab.Sweep()
	l, err := esplab.New(spec)
	if errors.Is(err, esplab.ErrNoESP) {
		testenv.RequireFeature(t, esplab.Feature, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	gw := l.OwnerHost()
	if r := tandem(t, gw, "up", "--once", "--bpffs", gw.BPFFS(), "--esp-iface", "eth0"); r.code != 0 {
		t.Fatalf("tandem up: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { tandem(t, gw, "down", "--bpffs", gw.BPFFS()) })
	return l
}

// espFeed keeps esp_sa equal to the gateway's kernel SAs at the level
// that exists on this branch (the daemon's SA follower is wired
// elsewhere): xfrm.Follow puts each SA (a new one with ReplaceSA) and
// deletes what the kernel deletes; the replay tracer (fexit, else
// kprobes; else the kernel's aevents through the follower) copies the
// kernel's verified state on every packet.
type espFeed struct {
	m      *maps.SAMaps
	mu     sync.Mutex
	known  map[xfrm.SAID]xfrm.SA
	source string
	sync   *maps.SyncMaps // the dirty rings the tracer marks (nil with aevents)
	errs   []error
	encap  bool             // the lab's SAs are ESP in UDP 4500: esp_sa keys them so
	tr     *loader.ESPTrace // nil with aevents
}

// espSyncRings opens the datapath's sync maps under root and sets up
// the dirty rings, as the daemon does.
func espSyncRings(t testing.TB, root string) *maps.SyncMaps {
	t.Helper()
	s, err := maps.OpenSyncMaps(maps.Pins{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	inner, err := maps.RingSpec(maps.DefaultRingBytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetupRings(inner); err != nil {
		t.Fatal(err)
	}
	return s
}

func newESPFeed(t testing.TB, h *lab.Host) *espFeed {
	t.Helper()
	m, err := maps.OpenSAMaps(maps.Pins{Root: h.BPFFS()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	f := &espFeed{m: m, known: map[xfrm.SAID]xfrm.SA{}}
	fd, ino, err := esplab.NetNS(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFD(fd) })
	f.source, _ = loader.ESPSource()
	if f.source == loader.ESPSourceFexit || f.source == loader.ESPSourceKprobe {
		sm := espSyncRings(t, h.BPFFS())
		f.sync = sm
		tr, err := loader.LoadESPTrace(loader.ESPTraceOptions{Mode: f.source, NetNS: ino, Maps: map[string]*ebpf.Map{
			"esp_sa": m.SA, "sync_rings": sm.Rings, "sync_epoch": sm.Epoch, "sync_overflow": sm.Overflow,
		}})
		if err != nil {
			t.Fatalf("load the replay tracer (%s): %v", f.source, err)
		}
		t.Cleanup(func() { tr.Close() })
		f.tr = tr
	}
	t.Logf("replay state source: %s", f.source)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- xfrm.Follow(ctx, fd, nil, f.source == loader.ESPSourceAEvents, xfrm.Handler{Put: f.put, Delete: f.del})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("follow: %v", err)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, err := range f.errs {
			t.Errorf("esp feed: %v", err)
		}
	})
	return f
}

func (f *espFeed) put(sa xfrm.SA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := xfrm.SAID{Dst: sa.Dst, SPI: sa.SPI, Proto: sa.Proto}
	if sa.Proto != 50 {
		return
	}
	old, known := f.known[id]
	if known && !sa.ESN && old.ESN {
		sa.ESN, sa.Encap = old.ESN, old.Encap // a NEWAE carries the id and the replay state only
	}
	s := maps.SAState{Dst: sa.Dst, SPI: sa.SPI, Encap: sa.Encap, ESN: sa.ESN, Seq: sa.Replay.Seq, SeqHi: sa.Replay.SeqHi,
		Window: sa.Replay.Window, Bitmap: sa.Replay.Bitmap, OSeq: sa.Replay.OSeq, OSeqHi: sa.Replay.OSeqHi}
	if sa.Replay.Legacy {
		var bm uint32
		if len(sa.Replay.Bitmap) > 0 {
			bm = sa.Replay.Bitmap[0]
		}
		s.Bitmap = nil
		if err := s.FromLegacy(sa.Replay.Seq, sa.Replay.OSeq, bm, sa.Replay.Window); err != nil {
			f.errs = append(f.errs, err)
			return
		}
	}
	var err error
	if known {
		_, err = f.m.PutSA(s)
	} else {
		err = f.m.ReplaceSA(s)
	}
	if err != nil {
		f.errs = append(f.errs, fmt.Errorf("put SA 0x%x: %w", sa.SPI, err))
		return
	}
	f.known[id] = sa
}

func (f *espFeed) del(id xfrm.SAID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id.Mark = xfrm.Mark{}
	sa, ok := f.known[id]
	if !ok {
		return
	}
	delete(f.known, id)
	if err := f.m.DeleteSA(id.Dst, id.SPI, sa.Encap); err != nil {
		f.errs = append(f.errs, fmt.Errorf("delete SA 0x%x: %w", id.SPI, err))
	}
}

// get reads an SA's entry in esp_sa.
func (f *espFeed) get(t testing.TB, id xfrm.SAID) (maps.SAState, bool) {
	t.Helper()
	s, ok, err := f.m.GetSA(id.Dst, id.SPI, f.encap)
	if err != nil {
		t.Fatal(err)
	}
	return s, ok
}

// waitSA waits until esp_sa's entry for id satisfies cond.
func (f *espFeed) waitSA(t testing.TB, id xfrm.SAID, what string, cond func(maps.SAState, bool) bool) maps.SAState {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, ok := f.get(t, id)
		if cond(s, ok) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("esp_sa entry of SA 0x%x (present %v, top %d): never %s", id.SPI, ok, s.Top(), what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCounters waits until cond holds on the kernel's counters of id on
// h, and returns them.
func waitCounters(t testing.TB, h *lab.Host, id xfrm.SAID, what string, cond func(esplab.Counters) bool) esplab.Counters {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := esplab.Read(h, id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(c) {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel counters of SA 0x%x on %s %+v: never %s", id.SPI, h.Name, c, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestESPLabReplay: a remote peer, a gateway with tandem's ESP stage on
// its eth0 and real ESP SAs (ip xfrm, static keys), a steady numbered
// stream through them; esp_sa fed as the XFRM side feeds it (follower and
// tracer). A captured ESP frame sent again is dropped at XDP (the SA's
// drop_replay moves by one) and the kernel's replay counters do not move;
// a forged frame with a huge sequence number and a bad ICV is passed by
// the stage, refused by the kernel on its ICV, and moves neither window:
// later packets pass. A rekey under the stream (a new SPI added, the old
// deleted) is followed: the new SA enters esp_sa and the old leaves, and
// a replay on the new SA is dropped too. The stream loses nothing: the
// stage never dropped a packet the kernel would accept.
func TestESPLabReplay(t *testing.T) {
	for _, spec := range []esplab.Spec{
		{ESN: true, Window: 128},
		{Window: 64, IPv6: true, Tunnel: true},
		{ESN: true, Window: 128, Encap: true},
	} {
		t.Run(fmt.Sprintf("esn=%v,window=%d,ipv6=%v,tunnel=%v,encap=%v", spec.ESN, spec.Window, spec.IPv6, spec.Tunnel, spec.Encap), func(t *testing.T) {
			espLabReplay(t, spec)
		})
	}
}

func espLabReplay(t *testing.T, spec esplab.Spec) {
	l := espLabUp(t, spec)
	gw := l.OwnerHost()
	feed := newESPFeed(t, gw)
	feed.encap = spec.Encap
	feed.waitSA(t, l.In, "put by the follower", func(_ maps.SAState, ok bool) bool { return ok })

	s, err := l.StartStream(100)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReceived(20, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	// replay checks one captured frame of SA id: dropped at XDP, the
	// kernel's counters unmoved.
	replay := func(id xfrm.SAID) {
		t.Helper()
		frame, err := esplab.Capture(l.Peer, "eth0", id.SPI, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _, seq, _ := esplab.ESPAt(frame)
		// The stage judges against what the kernel has verified: wait
		// until esp_sa holds the captured number.
		feed.waitSA(t, id, fmt.Sprintf("at or past the captured %d", seq), func(s maps.SAState, ok bool) bool { return ok && s.Seq >= seq })
		k0, err := esplab.Read(gw, id)
		if err != nil {
			t.Fatal(err)
		}
		x0, _ := feed.get(t, id)
		if err := esplab.Send(l.Peer, "eth0", frame); err != nil {
			t.Fatal(err)
		}
		x1 := feed.waitSA(t, id, "counting the replay", func(s maps.SAState, _ bool) bool { return s.DropReplay+s.DropStale > x0.DropReplay+x0.DropStale })
		if x1.DropReplay != x0.DropReplay+1 || x1.DropStale != x0.DropStale {
			t.Fatalf("the stage's drops of SA 0x%x: replay %d -> %d, stale %d -> %d; want one replay", id.SPI, x0.DropReplay, x1.DropReplay, x0.DropStale, x1.DropStale)
		}
		k1, err := esplab.Read(gw, id)
		if err != nil {
			t.Fatal(err)
		}
		if d := k1.Sub(k0); d.Replay != 0 || d.Window != 0 || d.SeqError != 0 || d.Integrity != 0 {
			t.Fatalf("the kernel saw the replay of %d the stage dropped: %+v", seq, d)
		}
		t.Logf("SA 0x%x: the replay of %d dropped at XDP; the kernel's replay counters unmoved", id.SPI, seq)
	}
	replay(l.In)

	t.Run("forged", func(t *testing.T) {
		frame, err := esplab.Capture(l.Peer, "eth0", l.In.SPI, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		k0, err := esplab.Read(gw, l.In)
		if err != nil {
			t.Fatal(err)
		}
		huge := uint32(k0.Top) + 1<<30
		forged, err := esplab.Forge(frame, huge)
		if err != nil {
			t.Fatal(err)
		}
		x0, _ := feed.get(t, l.In)
		if err := esplab.Send(l.Peer, "eth0", forged); err != nil {
			t.Fatal(err)
		}
		k1 := waitCounters(t, gw, l.In, "counting a bad ICV", func(c esplab.Counters) bool { return c.Integrity > k0.Integrity })
		if d := k1.Sub(k0); d.Integrity != 1 || d.Replay != 0 || k1.Top >= uint64(huge) {
			t.Fatalf("after the forged %d: kernel %+v (moved %+v); want one bad ICV, the window below it", huge, k1, d)
		}
		// Later packets still pass, judged against the same window.
		if err := s.WaitReceived(s.Received()+20, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		x1, _ := feed.get(t, l.In)
		if x1.Top() >= uint64(huge) || x1.DropReplay != x0.DropReplay || x1.DropStale != x0.DropStale || x1.Passed <= x0.Passed {
			t.Fatalf("esp_sa after the forged %d: top %d, drops %d/%d -> %d/%d, passed %d -> %d; want the window unmoved by it, no drop, later packets passed",
				huge, x1.Top(), x0.DropReplay, x0.DropStale, x1.DropReplay, x1.DropStale, x0.Passed, x1.Passed)
		}
	})

	if spec.Encap {
		// IKE on the ESP-in-UDP port (the non-ESP marker, SPI 0): the
		// stage passes it untouched and counts it; the kernel hands it
		// to the socket on 4500, marker and all.
		t.Run("ike", func(t *testing.T) {
			frame, err := esplab.Capture(l.Peer, "eth0", l.In.SPI, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			msg := []byte("tandem IKE_SA_INIT stand-in")
			ike, err := esplab.IKE(frame, msg)
			if err != nil {
				t.Fatal(err)
			}
			st0 := espStats(t, feed)
			c := l.EncapConn(gw)
			if err := esplab.Send(l.Peer, "eth0", ike); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			b := make([]byte, 256)
			n, from, err := c.ReadFrom(b)
			if err != nil {
				t.Fatalf("the IKE datagram never reached the gateway's socket on 4500: %v (esp counters %v)", err, espStats(t, feed))
			}
			if want := append([]byte{0, 0, 0, 0}, msg...); string(b[:n]) != string(want) {
				t.Fatalf("the gateway's socket got % x from %v, want % x", b[:n], from, want)
			}
			st1 := espStats(t, feed)
			if st1["ike"] != st0["ike"]+1 || st1["drop_replay"] != st0["drop_replay"] || st1["drop_stale"] != st0["drop_stale"] {
				t.Fatalf("esp counters %v -> %v: want one IKE passed, no drop", st0, st1)
			}
			t.Logf("an IKE datagram (non-ESP marker) passed by the stage untouched, read from %v", from)
		})
	}

	t.Run("rekey", func(t *testing.T) {
		old := l.In
		next := old
		next.SPI++
		if err := l.AddInbound(next.SPI); err != nil {
			t.Fatal(err)
		}
		// The peer sends with the newest SA; once it does, the old one
		// goes (as IKE deletes it after the switch).
		feed.waitSA(t, next, "put by the follower", func(_ maps.SAState, ok bool) bool { return ok })
		switched := false
		for deadline := time.Now().Add(10 * time.Second); !switched && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			x, _ := feed.get(t, next)
			switched = x.Top() > 0
		}
		t.Logf("the peer switched to the new SA before the old one was deleted: %v", switched)
		if err := l.DeleteInbound(old.SPI); err != nil {
			t.Fatal(err)
		}
		l.In = next
		feed.waitSA(t, old, "deleted", func(_ maps.SAState, ok bool) bool { return !ok })
		feed.waitSA(t, next, "advanced by the peer's packets", func(s maps.SAState, ok bool) bool { return ok && s.Top() > 0 })
		replay(next)
	})

	r := s.Stop(5 * time.Second)
	if r.Lost != 0 || r.Dup != 0 {
		t.Fatalf("stream: %v; the stage dropped packets the kernel would accept (or the lab lost them: esp counters %v)", r, espStats(t, feed))
	}
	t.Logf("stream: %v", r)
	st := espStats(t, feed)
	if st["drop_replay"] != 2 || st["drop_stale"] != 0 || st["unjudged"] != 0 {
		t.Fatalf("esp counters %v: want exactly the two replays dropped", st)
	}
}

func closeFD(fd int) { unix.Close(fd) }

func espStats(t testing.TB, f *espFeed) map[string]uint64 {
	st, err := f.m.ESPStats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}
