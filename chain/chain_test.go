package chain_test

// The chain's semantics, run with BPF_PROG_TEST_RUN: which stage answers,
// what each slot's counters count, and what Set, Clear, LoadEntry and the
// readers do. The stages are the chain's own xdp_decline (declines every
// packet) and the gate's stage (claims a packet to a VIP this host does
// not own, with XDP_DROP; declines the rest).

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/testenv"
)

var (
	vipOwned   = netip.MustParseAddr("10.0.0.100")
	vipStandby = netip.MustParseAddr("10.0.0.200")
	client     = netip.MustParseAddr("198.51.100.7")
)

const (
	xdpDrop = 1
	xdpPass = 2
)

func newMaps(t *testing.T) *chain.Maps {
	t.Helper()
	testenv.RequireRoot(t)
	m, err := chain.NewMaps(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// decline loads the chain's xdp_decline for slot of m: it passes every
// packet to the next configured stage.
func decline(t *testing.T, m *chain.Maps, slot uint32) *ebpf.Program {
	t.Helper()
	spec, err := bpf.LoadChain()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables[bpf.ChainVarCfgSlot].Set(int32(slot)); err != nil {
		t.Fatal(err)
	}
	p, err := chain.LoadStage(spec, bpf.ChainProgXdpDecline, m, "")
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// gate loads the gate's stage for m, its maps unpinned, with vipOwned
// owned and vipStandby not.
func gate(t *testing.T, m *chain.Maps) *ebpf.Program {
	t.Helper()
	spec, err := bpf.LoadVipgate()
	if err != nil {
		t.Fatal(err)
	}
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
	}
	var objs bpf.VipgateObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: m.Replacements(spec)}); err != nil {
		t.Fatalf("load gate: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	vm := &maps.VIPMaps{Gate: objs.VipGate, Counters: objs.VipStats, Stats: objs.Stats}
	if err := vm.SetVIPs(map[netip.Addr]bool{vipOwned: true, vipStandby: false}); err != nil {
		t.Fatal(err)
	}
	return objs.XdpVipgate
}

func entry(t *testing.T, m *chain.Maps, stages uint32) *ebpf.Program {
	t.Helper()
	p, err := chain.LoadEntry(m, stages)
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// syn is an IPv4 TCP SYN from client to dst.
func syn(t *testing.T, dst netip.Addr) []byte {
	t.Helper()
	mac, _ := net.ParseMAC("02:00:00:00:00:0a")
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: client.AsSlice(), DstIP: dst.AsSlice()}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1, SYN: true, Window: 64240}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: layers.EthernetTypeIPv4}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func run(t *testing.T, p *ebpf.Program, frame []byte) uint32 {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret
}

// stats is what ReadStats should say: every slot zero but those given.
func stats(set map[uint32]chain.Stat) []chain.Stat {
	out := make([]chain.Stat, chain.Slots+1)
	for slot, s := range set {
		out[slot] = s
	}
	return out
}

func readStats(t *testing.T, m *chain.Maps) []chain.Stat {
	t.Helper()
	s, err := m.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestChainRun: one packet through a chain, table-driven over which
// slots the entry runs, which of them hold which stage, and the frame.
func TestChainRun(t *testing.T) {
	const (
		empty = iota
		declining
		gating
	)
	end := chain.Slots
	cases := []struct {
		name   string
		stages []uint32       // slots the entry runs
		fill   map[uint32]int // what each slot holds
		dst    netip.Addr
		want   uint32
		stats  map[uint32]chain.Stat
	}{
		{"no stage: straight to the stack", nil, nil, vipOwned, xdpPass,
			map[uint32]chain.Stat{end: {Claimed: 1}}},
		{"configured slot with no program: missed, passed", []uint32{chain.SlotMigrate}, nil, vipOwned, xdpPass,
			map[uint32]chain.Stat{chain.SlotMigrate: {Missed: 1}}},
		{"a missed slot ends the chain: later stages do not run", []uint32{chain.SlotGate, chain.SlotSynproxy},
			map[uint32]int{chain.SlotSynproxy: declining}, vipStandby, xdpPass,
			map[uint32]chain.Stat{chain.SlotGate: {Missed: 1}}},
		{"declining stages pass along to the stack", []uint32{chain.SlotGate, chain.SlotESP, chain.SlotSynproxy},
			map[uint32]int{chain.SlotGate: declining, chain.SlotESP: declining, chain.SlotSynproxy: declining}, vipStandby, xdpPass,
			map[uint32]chain.Stat{end: {Claimed: 1}}},
		{"a stage not configured is skipped even with a program", []uint32{chain.SlotSynproxy},
			map[uint32]int{chain.SlotGate: gating, chain.SlotSynproxy: declining}, vipStandby, xdpPass,
			map[uint32]chain.Stat{end: {Claimed: 1}}},
		{"the gate claims a standby VIP's packet: later stages never see it", []uint32{chain.SlotGate, chain.SlotSynproxy},
			map[uint32]int{chain.SlotGate: gating}, vipStandby, xdpDrop,
			map[uint32]chain.Stat{chain.SlotGate: {Claimed: 1}}},
		{"the gate declines an owned VIP's packet: on to the next stage", []uint32{chain.SlotGate, chain.SlotSynproxy},
			map[uint32]int{chain.SlotGate: gating, chain.SlotSynproxy: declining}, vipOwned, xdpPass,
			map[uint32]chain.Stat{end: {Claimed: 1}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newMaps(t)
			var bits uint32
			for _, s := range c.stages {
				bits |= 1 << s
			}
			for slot, what := range c.fill {
				var p *ebpf.Program
				switch what {
				case declining:
					p = decline(t, m, slot)
				case gating:
					p = gate(t, m)
				}
				if err := m.Set(slot, p); err != nil {
					t.Fatal(err)
				}
			}
			e := entry(t, m, bits)
			if got := run(t, e, syn(t, c.dst)); got != c.want {
				t.Errorf("verdict %d, want %d", got, c.want)
			}
			if got, want := readStats(t, m), stats(c.stats); !reflect.DeepEqual(got, want) {
				t.Errorf("stats\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestChainSet: Set swaps what a slot runs, between two packets, with the
// entry and the other slots untouched; Clear empties it (missed tail
// calls); the readers say what was set.
func TestChainSet(t *testing.T) {
	m := newMaps(t)
	bits := uint32(1<<chain.SlotGate | 1<<chain.SlotSynproxy)
	e := entry(t, m, bits)
	dec0, dec3, g := decline(t, m, chain.SlotGate), decline(t, m, chain.SlotSynproxy), gate(t, m)
	if err := m.Set(chain.SlotSynproxy, dec3); err != nil {
		t.Fatal(err)
	}
	id := func(p *ebpf.Program) ebpf.ProgramID {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.ID()
		if !ok {
			t.Fatal("no program ID (kernel before 4.13?)")
		}
		return id
	}
	end := chain.Slots
	steps := []struct {
		name  string
		set   *ebpf.Program // nil: Clear
		want  uint32
		stats map[uint32]chain.Stat // cumulative
	}{
		{"declining stage", dec0, xdpPass, map[uint32]chain.Stat{end: {Claimed: 1}}},
		{"gate swapped in", g, xdpDrop, map[uint32]chain.Stat{end: {Claimed: 1}, chain.SlotGate: {Claimed: 1}}},
		{"declining stage back", dec0, xdpPass, map[uint32]chain.Stat{end: {Claimed: 2}, chain.SlotGate: {Claimed: 1}}},
		{"slot cleared", nil, xdpPass, map[uint32]chain.Stat{end: {Claimed: 2}, chain.SlotGate: {Claimed: 1, Missed: 1}}},
		{"gate again", g, xdpDrop, map[uint32]chain.Stat{end: {Claimed: 2}, chain.SlotGate: {Claimed: 2, Missed: 1}}},
	}
	for _, s := range steps {
		var err error
		if s.set == nil {
			err = m.Clear(chain.SlotGate)
		} else {
			err = m.Set(chain.SlotGate, s.set)
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := run(t, e, syn(t, vipStandby)); got != s.want {
			t.Errorf("%s: verdict %d, want %d", s.name, got, s.want)
		}
		if got, want := readStats(t, m), stats(s.stats); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: stats\n got %+v\nwant %+v", s.name, got, want)
		}
		ids, err := m.ProgIDs()
		if err != nil {
			t.Fatal(err)
		}
		want := map[uint32]ebpf.ProgramID{chain.SlotSynproxy: id(dec3)}
		if s.set != nil {
			want[chain.SlotGate] = id(s.set)
		}
		if !reflect.DeepEqual(ids, want) {
			t.Errorf("%s: ProgIDs %v, want %v", s.name, ids, want)
		}
	}
	if err := m.Set(chain.Slots, dec0); err == nil {
		t.Errorf("Set(slot %d) accepted a slot past the last", chain.Slots)
	}
	if err := m.Clear(chain.SlotESP); err != nil {
		t.Errorf("Clear of an empty slot: %v", err)
	}
}

// TestChainEntryInfo: LoadEntry records the stages it runs and the ABI in
// chain_info, and a new entry over the same maps records its own.
func TestChainEntryInfo(t *testing.T) {
	m := newMaps(t)
	for _, bits := range []uint32{0, 1 << chain.SlotGate, 1<<chain.SlotGate | 1<<chain.SlotSynproxy | 1<<chain.SlotSynctest} {
		entry(t, m, bits)
		info, err := m.ReadInfo()
		if err != nil {
			t.Fatal(err)
		}
		if want := (chain.Info{ABI: chain.ABI, Stages: bits}); info != want {
			t.Errorf("LoadEntry(%#b): info %+v, want %+v", bits, info, want)
		}
	}
}

// TestChainKeepStats: a new chain built to replace one (a root swap)
// keeps the old one's counters, so status does not go back to 0: the two
// share one stats map, so what the old chain counts while its last
// packets leave it is not lost either.
func TestChainKeepStats(t *testing.T) {
	old := newMaps(t)
	e := entry(t, old, 1<<chain.SlotGate)
	run(t, e, syn(t, vipOwned)) // missed: slot 0 is empty
	if err := old.Set(chain.SlotGate, decline(t, old, chain.SlotGate)); err != nil {
		t.Fatal(err)
	}
	run(t, e, syn(t, vipOwned)) // to the stack
	m, err := chain.NewMaps(old)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	want := stats(map[uint32]chain.Stat{chain.SlotGate: {Missed: 1}, chain.Slots: {Claimed: 1}})
	if got := readStats(t, m); !reflect.DeepEqual(got, want) {
		t.Errorf("new chain's stats\n got %+v\nwant %+v", got, want)
	}
	if ids, err := m.ProgIDs(); err != nil || len(ids) != 0 {
		t.Errorf("new chain's slots: %v, %v; want none filled", ids, err)
	}
	run(t, entry(t, m, 0), syn(t, vipOwned))
	want[chain.Slots].Claimed = 2
	if got := readStats(t, m); !reflect.DeepEqual(got, want) {
		t.Errorf("new chain's stats after a packet\n got %+v\nwant %+v", got, want)
	}
	run(t, e, syn(t, vipOwned)) // through the old chain, still in place
	want[chain.Slots].Claimed = 3
	if got := readStats(t, m); !reflect.DeepEqual(got, want) {
		t.Errorf("new chain's stats after a packet through the old one\n got %+v\nwant %+v", got, want)
	}
}

// TestChainPin: Pin publishes the maps under the root by interface, Open
// finds them (os.ErrNotExist for an interface without a chain), and
// Unpin removes them.
func TestChainPin(t *testing.T) {
	m := newMaps(t)
	entry(t, m, 1<<chain.SlotSynproxy)
	root, err := os.MkdirTemp("/sys/fs/bpf", "tandem-chain-test-")
	if err != nil {
		t.Skipf("skipped: bpffs not mounted at /sys/fs/bpf: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	pins := maps.Pins{Root: root}
	if err := os.MkdirAll(pins.MapsDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(pins, "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := chain.Open(pins, "eth1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of an interface with no chain: %v, want os.ErrNotExist", err)
	}
	o, err := chain.Open(pins, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	info, err := o.ReadInfo()
	o.Close()
	if err != nil || info.Stages != 1<<chain.SlotSynproxy {
		t.Errorf("pinned chain's info %+v, %v", info, err)
	}
	removed, err := chain.Unpin(pins, "eth0")
	if err != nil || len(removed) != 4 {
		t.Errorf("Unpin: %v, %v; want the 4 chain maps", removed, err)
	}
	if left, _ := filepath.Glob(filepath.Join(pins.MapsDir(), "*")); len(left) != 0 {
		t.Errorf("left after Unpin: %v", left)
	}
}
