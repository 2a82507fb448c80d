package traffic

import (
	"net/netip"
	"testing"
)

func here(f func() error) error { return f() }

// TestMissingIn: a flood to an echo server misses nothing in any
// stretch; a flood to a port nobody serves misses every datagram of
// every stretch, and only the ones sent.
func TestMissingIn(t *testing.T) {
	srv, err := ListenEcho(here, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	to := srv.conn.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort()
	f, err := StartFlood(here, to, FloodConfig{Max: 200})
	if err != nil {
		t.Fatal(err)
	}
	f.Wait()
	if r := f.Stop(5e9); r.Lost() != 0 {
		t.Fatalf("lost %d of %d on loopback", r.Lost(), r.Sent)
	}
	if n := f.MissingIn(0, 200); n != 0 || f.Dups() != 0 {
		t.Errorf("an answered flood: %d missing, %d doubled", n, f.Dups())
	}

	srv.Close()
	f, err = StartFlood(here, to, FloodConfig{Max: 50, Window: 64})
	if err != nil {
		t.Fatal(err)
	}
	f.Wait()
	f.Stop(0)
	for _, tc := range []struct{ from, to, want uint64 }{{0, 50, 50}, {10, 20, 10}, {40, 1000, 10}, {60, 70, 0}} {
		if n := f.MissingIn(tc.from, tc.to); n != tc.want {
			t.Errorf("MissingIn(%d, %d) = %d, want %d", tc.from, tc.to, n, tc.want)
		}
	}
}
