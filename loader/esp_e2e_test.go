package loader_test

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/lab"
)

// rawESP sends ESP packets from h to vip4 with the given SPI and
// sequence numbers (a raw IP socket of protocol 50: the kernel writes
// the IP header).
func rawESP(t *testing.T, h *lab.Host, spi uint32, seqs ...uint32) {
	t.Helper()
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, 50)
		if err != nil {
			return fmt.Errorf("raw ESP socket: %w", err)
		}
		defer unix.Close(fd)
		for _, s := range seqs {
			b := make([]byte, 8+32)
			binary.BigEndian.PutUint32(b, spi)
			binary.BigEndian.PutUint32(b[4:], s)
			if err := unix.Sendto(fd, b, 0, &unix.SockaddrInet4{Addr: vip4.As4()}); err != nil {
				return fmt.Errorf("send ESP seq %d: %w", s, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestESPFilterLab: the gateway's eth0 runs the gate and the ESP filter
// (-i eth0 --esp-iface eth0); with an SA's verified state in esp_sa,
// ESP from the client that replays a received number or falls below the
// window is dropped and counted, a new number passes, the window does
// not move for any packet, and tandem status and tandem sa list show it.
func TestESPFilterLab(t *testing.T) {
	l := gatewayLab(t)
	gw, client := l.Host("gw"), l.Host("client")
	mustTandem(t, gw, "up", "--once", "--bpffs", gw.BPFFS(), "-i", "eth0", "--esp-iface", "eth0", "--vip", vip4.String())

	m, err := maps.OpenSAMaps(maps.Pins{Root: gw.BPFFS()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	sa := maps.SAState{Dst: vip4, SPI: 0x1234, Seq: 100, Window: 64, Bitmap: make([]uint32, 2), OSeq: 7}
	sa.SetBit(100)
	sa.SetBit(99)
	if _, err := m.PutSA(sa); err != nil {
		t.Fatal(err)
	}
	rawESP(t, client, 0x1234, 100, 99, 30, 101, 5000, 98)
	rawESP(t, client, 0x9999, 100) // no such SA

	var got []struct {
		SPI        string `json:"spi"`
		Top        uint64 `json:"top"`
		DropReplay uint64 `json:"drop_replay"`
		DropStale  uint64 `json:"drop_stale"`
		Passed     uint64 `json:"passed"`
		OSeq       uint64 `json:"oseq"`
		Version    uint64 `json:"version"`
	}
	r := mustTandem(t, gw, "sa", "list", "--json", "--bpffs", gw.BPFFS())
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("sa list --json: %v\n%s", err, r.stdout)
	}
	if len(got) != 1 {
		t.Fatalf("sa list: %d SAs, want 1\n%s", len(got), r.stdout)
	}
	s := got[0]
	// 100, 99: replays; 30: stale; 101, 5000, 98: passed to the kernel
	// (which has no such SA and drops them; the filter never moved).
	if s.SPI != "0x00001234" || s.DropReplay != 2 || s.DropStale != 1 || s.Passed != 3 || s.Top != 100 || s.OSeq != 7 || s.Version != 1 {
		t.Fatalf("sa list: %+v; want spi 0x00001234, 2 replays, 1 stale, 3 passed, top 100 (no packet moves it), oseq 7, version 1", s)
	}
	text := mustTandem(t, gw, "sa", "list", "--bpffs", gw.BPFFS()).stdout
	if !strings.Contains(text, "0x00001234") || !strings.Contains(text, "2/64") {
		t.Fatalf("sa list:\n%s", text)
	}
	st := chainOf(t, gw, "eth0")
	if st[chain.SlotESP].Claimed != 3 {
		t.Fatalf("chain: the ESP stage claimed %d packets, want 3: %+v", st[chain.SlotESP].Claimed, st)
	}
	stat := status(t, gw)
	if n := stat.Features["esp"]["no_sa"]; n != 1 {
		t.Fatalf("status: esp no_sa %d, want 1: %v", n, stat.Features)
	}
}
