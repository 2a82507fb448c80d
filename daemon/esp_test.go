package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/testenv"
	"github.com/tandem-net/tandem/xfrm"
)

// TestESPStateRoundTrip: a kernel SA's replay state becomes the esp_sa
// snapshot and comes back as XFRM takes it on takeover, legacy SAs (a
// 32-bit bitmap from the top) and ESN ones (the kernel's ring) alike.
func TestESPStateRoundTrip(t *testing.T) {
	dst := netip.MustParseAddr("192.0.2.10")
	for _, tc := range []struct {
		name string
		sa   xfrm.SA
		err  bool
	}{
		{"legacy", xfrm.SA{SAID: xfrm.SAID{Dst: dst, SPI: 1, Proto: 50},
			Replay: xfrm.Replay{Seq: 100, OSeq: 7, Window: 32, Bitmap: []uint32{0b1011 | 1<<31}, Legacy: true}}, false},
		{"legacy low", xfrm.SA{SAID: xfrm.SAID{Dst: dst, SPI: 2, Proto: 50},
			Replay: xfrm.Replay{Seq: 3, Window: 32, Bitmap: []uint32{0b101}, Legacy: true}}, false},
		{"esn", xfrm.SA{SAID: xfrm.SAID{Dst: dst, SPI: 3, Proto: 50}, ESN: true, Encap: true,
			Replay: xfrm.Replay{Seq: 5, SeqHi: 2, OSeq: 9, OSeqHi: 1, Window: 128, Bitmap: []uint32{1, 2, 3, 4}}}, false},
		{"window too large", xfrm.SA{SAID: xfrm.SAID{Dst: dst, SPI: 4, Proto: 50},
			Replay: xfrm.Replay{Seq: 5, Window: 8192, Bitmap: make([]uint32, 256)}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := stateOf(tc.sa)
			if tc.err {
				if err == nil {
					t.Fatalf("stateOf %+v: no error", tc.sa.Replay)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Dst != dst || s.SPI != tc.sa.SPI || s.ESN != tc.sa.ESN || s.Encap != tc.sa.Encap || s.Top() != tc.sa.Replay.Top() || s.OTop() != tc.sa.Replay.OTop() {
				t.Fatalf("state %+v of %+v", s, tc.sa)
			}
			back := replayOf(s, tc.sa.Replay.Legacy)
			if fmt.Sprint(back.Bitmap) != fmt.Sprint(tc.sa.Replay.Bitmap) || back.Top() != tc.sa.Replay.Top() || back.OTop() != tc.sa.Replay.OTop() || back.Window != tc.sa.Replay.Window {
				t.Fatalf("back %+v, want %+v", back, tc.sa.Replay)
			}
		})
	}
}

// TestESPClaimNamesMissing: a takeover whose kernel lacks the synced SAs
// (here: all of them; this host has no ESP) installs nothing, names each
// one in one log line with its SPI and destination, counts them in the
// status file and never fails; an owner's claim does nothing.
func TestESPClaimNamesMissing(t *testing.T) {
	sam := loadSAMaps(t)
	// TEST-NET destinations and SPIs no host has: GETAE finds nothing.
	spis := []uint32{0x7e570001, 0x7e570002, 0x7e570003}
	for i, spi := range spis {
		s := maps.SAState{Dst: netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", 201+i)), SPI: spi, ESN: true, Seq: 100, Window: 128, OSeq: 50}
		s.SetBit(100)
		if _, err := sam.PutSA(s); err != nil {
			t.Fatal(err)
		}
	}
	var logs strings.Builder
	dir := t.TempDir()
	e := &espd{log: slog.New(slog.NewTextHandler(&logs, nil)), sam: sam, source: loader.ESPSourceAEvents, fstr: "all",
		sync: 10 * time.Millisecond, detect: 300 * time.Millisecond, safety: 2, state: ESPStatusFile(dir),
		known: map[xfrm.SAID]xfrm.SA{}, rates: map[maps.SAKey]espRate{}}

	e.active = true
	e.claim()
	if _, err := ReadESPStatus(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the owner's claim installed something (status: %v)", err)
	}

	e.active = false
	e.claim()
	st, err := ReadESPStatus(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastTakeover == nil || st.LastTakeover.SAs != 3 || st.LastTakeover.Missing != 3 || st.LastTakeover.Resumed != 0 || len(st.Missing) != 3 {
		t.Fatalf("status %+v, takeover %+v: want 3 SAs, 3 missing", st, st.LastTakeover)
	}
	lines := strings.Split(logs.String(), "\n")
	for i, spi := range spis {
		want := fmt.Sprintf("spi=0x%08x", spi)
		n := 0
		for _, l := range lines {
			if strings.Contains(l, "a synced SA is missing on this host") && strings.Contains(l, want) && strings.Contains(l, fmt.Sprintf("dst=192.0.2.%d", 201+i)) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d log lines name the missing SA %s:\n%s", n, want, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "missing=3") {
		t.Errorf("no takeover summary with missing=3:\n%s", logs.String())
	}
	// A second claim in the same standby period does nothing more.
	before := logs.Len()
	e.claim()
	if logs.Len() != before {
		t.Errorf("a second claim ran again:\n%s", logs.String()[before:])
	}
}

// loadSAMaps loads the ESP feature's maps and writers, unpinned.
func loadSAMaps(t *testing.T) *maps.SAMaps {
	t.Helper()
	testenv.RequireRoot(t)
	spec, err := bpf.LoadEsp()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	inner, err := maps.RingSpec(maps.DefaultRingBytes)
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps[bpf.EspMapSyncRings].InnerMap = inner
	var objs bpf.EspObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return maps.SAMapsOf(&objs)
}

// TestESPStandbyRates: the standby measures each SA's outbound rate from
// the replicated sequence numbers (the margin's rate): the delta over the
// time between samples, and a burst is remembered, halving each sample
// it is not reached.
func TestESPStandbyRates(t *testing.T) {
	sam := loadSAMaps(t)
	dst := netip.MustParseAddr("192.0.2.9")
	e := &espd{log: slog.New(slog.DiscardHandler), sam: sam, state: ESPStatusFile(t.TempDir()),
		known: map[xfrm.SAID]xfrm.SA{}, rates: map[maps.SAKey]espRate{}}
	at := time.Unix(1000, 0)
	for _, step := range []struct {
		oseq uint32
		dt   time.Duration
		want float64
	}{
		{100, 0, 0},                  // first sample: no rate yet
		{300, 2 * time.Second, 100},  // 200 in 2 s
		{300, 2 * time.Second, 50},   // idle: half the last
		{1300, 2 * time.Second, 500}, // a burst
		{1400, 2 * time.Second, 250}, // slower than half the burst: the halved burst
	} {
		at = at.Add(step.dt)
		s := maps.SAState{Dst: dst, SPI: 7, Window: 32, OSeq: step.oseq, Bitmap: []uint32{0}}
		if _, err := sam.PutSA(s); err != nil {
			t.Fatal(err)
		}
		e.sample(at)
		if got := e.rates[s.Key()].rate; got != step.want {
			t.Fatalf("oseq %d after %s: rate %g, want %g", step.oseq, step.dt, got, step.want)
		}
	}
	if m := xfrm.Margin(e.rates[(maps.SAState{Dst: dst, SPI: 7}).Key()].rate, 10*time.Millisecond, 990*time.Millisecond, 2); m != 500 {
		t.Fatalf("margin %d, want 250/s x 1 s x 2 = 500", m)
	}
}
