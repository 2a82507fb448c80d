package daemon

import (
	"fmt"
	"net/netip"
	"testing"

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
