package loader_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
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

// udp4500 sends UDP datagrams from h to vip4:4500 (ESP in UDP, RFC 3948).
func udp4500(t *testing.T, h *lab.Host, payloads ...[]byte) {
	t.Helper()
	err := h.Do(func() error {
		// Unconnected: the gateway has no socket on 4500, and its port
		// unreachables must not fail the next write.
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 4500})
		if err != nil {
			return err
		}
		defer c.Close()
		for _, p := range payloads {
			if _, err := c.WriteToUDP(p, &net.UDPAddr{IP: vip4.AsSlice(), Port: 4500}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func espHeader(spi, seq uint32) []byte {
	b := make([]byte, 8+32)
	binary.BigEndian.PutUint32(b, spi)
	binary.BigEndian.PutUint32(b[4:], seq)
	return b
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
	// ESP in UDP 4500 to an SA configured for it: a replay is dropped; IKE
	// (the non-ESP marker) and a keepalive pass.
	natt := maps.SAState{Dst: vip4, SPI: 0x5678, Encap: true, Seq: 10, Window: 32, Bitmap: make([]uint32, 1)}
	natt.SetBit(10)
	if _, err := m.PutSA(natt); err != nil {
		t.Fatal(err)
	}
	udp4500(t, client, espHeader(0x5678, 10), espHeader(0, 0), []byte{0xff})

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
	if len(got) != 2 {
		t.Fatalf("sa list: %d SAs, want 2\n%s", len(got), r.stdout)
	}
	if n := got[1]; n.SPI != "0x00005678" || n.DropReplay != 1 || n.Passed != 0 {
		t.Fatalf("sa list: the UDP-encapsulated SA %+v; want 1 replay dropped", n)
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
	if st[chain.SlotESP].Claimed != 4 {
		t.Fatalf("chain: the ESP stage claimed %d packets, want 4: %+v", st[chain.SlotESP].Claimed, st)
	}
	stat := status(t, gw)
	if c := stat.Features["esp"]; c["no_sa"] != 1 || c["ike"] != 1 || c["keepalive"] != 1 || c["drop_replay"] != 3 || c["drop_stale"] != 1 {
		t.Fatalf("status: esp counters %v; want no_sa 1, ike 1, keepalive 1, drop_replay 3, drop_stale 1", c)
	}

	// down removes the ESP stage and every pin of the feature.
	m.Close()
	mustTandem(t, gw, "down", "--bpffs", gw.BPFFS())
	// The kernel detaches an unpinned link after an RCU grace period, in
	// a worker that takes the RTNL lock: with other labs' namespaces
	// coming and going on the same machine that can take seconds.
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if out, _ := gw.Cmd("ip", "-d", "link", "show", "eth0").CombinedOutput(); !bytes.Contains(out, []byte("prog/xdp")) {
			break
		}
	}
	assertClean(t, gw, "eth0", stat)
	var left []string
	filepath.WalkDir(gw.BPFFS(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Fatalf("pins left after down: %v", left)
	}
	if r := tandem(t, gw, "sa", "list", "--bpffs", gw.BPFFS()); r.code != 1 || !strings.Contains(r.stderr, "--esp-iface") {
		t.Fatalf("sa list without the filter: exit %d, stderr %q; want 1 and how to load it", r.code, r.stderr)
	}
}

// syncNode opens the sync of the datapath under root as the daemon does.
func syncNode(t *testing.T, root string) (*maps.SyncMaps, []syncer.Map) {
	t.Helper()
	pins := maps.Pins{Root: root}
	s, err := maps.OpenSyncMaps(pins)
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
	opened, err := maps.OpenSynced(pins)
	if err != nil {
		t.Fatal(err)
	}
	var regs []syncer.Map
	for r, o := range opened {
		t.Cleanup(o.Close)
		regs = append(regs, syncer.Map{ID: r.ID, Name: r.Name, M: o.Map, IO: o.IO, Read: o.Read, Write: o.Write})
	}
	return s, regs
}

// TestESPPutReplicates: user-space writes of SA state (PutSA, DeleteSA)
// reach the peer through the state sync's one path (dirty rings, engine,
// applier): a put that changes nothing sends nothing, an advance sends
// the new state, a delete a tombstone, and the peer ends with the
// primary's entries.
func TestESPPutReplicates(t *testing.T) {
	l := gatewayLab(t)
	gw, peer := l.Host("gw"), l.Host("client")
	t.Cleanup(func() { tandem(t, peer, "down", "--bpffs", peer.BPFFS()) })
	mustTandem(t, gw, "up", "--once", "--bpffs", gw.BPFFS(), "--esp-iface", "eth0")
	mustTandem(t, peer, "up", "--once", "--bpffs", peer.BPFFS(), "--esp-iface", "eth0")
	sm, regs := syncNode(t, gw.BPFFS())
	eng, err := syncer.NewEngine(sm, regs...)
	if err != nil {
		t.Fatal(err)
	}
	_, peerRegs := syncNode(t, peer.BPFFS())
	app := syncer.NewApplier(peerRegs...)
	m, err := maps.OpenSAMaps(maps.Pins{Root: gw.BPFFS()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pm, err := maps.OpenSAMaps(maps.Pins{Root: peer.BPFFS()})
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()

	sa := func(spi uint32, top uint64, got ...uint32) maps.SAState {
		s := maps.SAState{Dst: vip4, SPI: spi, ESN: true, Seq: uint32(top), SeqHi: uint32(top >> 32), Window: 128, Bitmap: make([]uint32, 4), OSeq: 10}
		for _, g := range got {
			s.SetBit(g)
		}
		return s
	}
	tick := func() []syncer.Delta {
		var ds []syncer.Delta
		if err := eng.Tick(func(d syncer.Delta) error { ds = append(ds, d); return nil }); err != nil {
			t.Fatal(err)
		}
		if err := app.ApplyBatch(ds); err != nil {
			t.Fatal(err)
		}
		return ds
	}
	steps := []struct {
		name   string
		do     func() error
		deltas int
	}{
		{"two new SAs", func() error {
			if _, err := m.PutSA(sa(1, 1<<32|500, 500, 499)); err != nil {
				return err
			}
			_, err := m.PutSA(sa(2, 7, 7))
			return err
		}, 2},
		{"an older snapshot", func() error { _, err := m.PutSA(sa(1, 1<<32|400, 400)); return err }, 0},
		{"an advance", func() error { _, err := m.PutSA(sa(1, 1<<32|600, 600, 550)); return err }, 1},
		{"a rekey: the old SA deleted", func() error { return m.DeleteSA(vip4, 2, false) }, 1},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if ds := tick(); len(ds) != s.deltas {
			t.Fatalf("%s: %d deltas, want %d", s.name, len(ds), s.deltas)
		}
		want, err := m.ListSAs()
		if err != nil {
			t.Fatal(err)
		}
		got, err := pm.ListSAs()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
			t.Fatalf("%s: the peer has\n%+v\nthe primary\n%+v", s.name, got, want)
		}
	}
	if got, _, _ := pm.GetSA(vip4, 1, false); got.Top() != 1<<32|600 || !got.Bit(50) || got.Bit(1) {
		t.Fatalf("peer's SA 1: top %#x; want 1<<32|600 with 550 received", got.Top())
	}
}
