package maps

import (
	"net/netip"
	"slices"
	"testing"
)

// TestSAStateRoundTrip: a state goes into esp_sa's key and value and
// comes back the same (SPI byte order, encap, ESN, the bitmap words).
func TestSAStateRoundTrip(t *testing.T) {
	for _, s := range []SAState{
		{Dst: netip.MustParseAddr("192.0.2.10"), SPI: 0xc0ffee01, ESN: true, Seq: 7, SeqHi: 3, Window: 128, Bitmap: []uint32{1, 2, 3, 0x80000000}, OSeq: 9, OSeqHi: 1},
		{Dst: netip.MustParseAddr("2001:db8::10"), SPI: 0x100, Encap: true, Seq: 70000, Window: 4096, Bitmap: make([]uint32, 128)},
	} {
		k := s.Key()
		if k.Spi&0xff != s.SPI>>24 {
			t.Fatalf("spi %#x: key holds %#x, want network order", s.SPI, k.Spi)
		}
		got := SAStateOf(k, s.Val())
		if got.Dst != s.Dst || got.SPI != s.SPI || got.Encap != s.Encap || got.ESN != s.ESN || got.Top() != s.Top() || got.OTop() != s.OTop() ||
			got.Window != s.Window || !slices.Equal(got.Bitmap, s.Bitmap) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
		}
	}
}

// TestFromLegacy: the kernel's 32-bit legacy bitmap (bit d: top-d
// arrived) lands on the same numbers in the ring layout.
func TestFromLegacy(t *testing.T) {
	for _, c := range []struct {
		seq, bitmap, window uint32
		set                 []uint32 // distances below the top
	}{
		{100, 0b1011, 32, []uint32{0, 1, 3}},
		{100, 0x80000001, 32, []uint32{0, 31}},
		{5, 0xff, 16, []uint32{0, 1, 2, 3, 4}}, // numbers at or below 0 do not exist
		{1000, 0x10, 8, []uint32{4}},
	} {
		var s SAState
		if err := s.FromLegacy(c.seq, 7, c.bitmap, c.window); err != nil {
			t.Fatal(err)
		}
		for d := uint32(0); d < c.window; d++ {
			if want := slices.Contains(c.set, d); s.Bit(d) != want {
				t.Errorf("seq %d bitmap %#x window %d: bit top-%d %v, want %v", c.seq, c.bitmap, c.window, d, s.Bit(d), want)
			}
		}
	}
	var s SAState
	if err := s.FromLegacy(1, 1, 1, 64); err == nil {
		t.Fatal("a legacy window of 64 was taken; the kernel's legacy state holds 32 at most")
	}
}
