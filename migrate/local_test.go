package migrate_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/migrate"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

var (
	ep4     = netip.MustParseAddr("10.97.0.50")
	hopS    = netip.MustParseAddr("10.97.1.2")
	hopD    = netip.MustParseAddr("10.97.1.3")
	hopE    = netip.MustParseAddr("10.97.1.4")
	macS, _ = net.ParseMAC("02:00:00:00:97:02")
	macD, _ = net.ParseMAC("02:00:00:00:97:03")
	macE, _ = net.ParseMAC("02:00:00:00:97:04")
	// The gateway's address on the segment, and a host beyond D.
	gwSeg      = netip.MustParseAddr("10.97.1.1")
	routedHost = netip.MustParseAddr("192.0.2.7")
)

// world is a gateway (gw) with the migrate feature loaded unpinned, a
// segment host (seg) whose eth0 receives everything the gateway sends to
// S, D or E (neighbours with fixed MACs), and a packet socket there.
type world struct {
	gw, seg *lab.Host
	entry   *ebpf.Program // the chain entry with the migrate stage
	mm      *maps.MigrateMaps
	ctl     *migrate.Local
	sock    int
	sync    *maps.SyncMaps // the dirty rings, for what goes to the peer
}

func newWorld(t testing.TB, holdPackets uint64) *world {
	return newWorldRing(t, holdPackets, 1<<22)
}

func newWorldRing(t testing.TB, holdPackets uint64, ringBytes uint32) *world {
	return newWorldSink(t, holdPackets, ringBytes, 2)
}

// newWorldSink: the segment host's XDP program returns verdict (2 pass:
// frames reach its stack and the packet socket; 1 drop: a sink that
// costs the sender nothing, for timing the gateway's side alone).
func newWorldSink(t testing.TB, holdPackets uint64, ringBytes uint32, verdict int32) *world {
	t.Helper()
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "gw", Forward: true}, {Name: "seg"}},
		Links: []lab.LinkSpec{{
			A: lab.End{Host: "gw", Iface: "eth1", Addrs: []string{"10.97.1.1/24"}},
			B: lab.End{Host: "seg", Iface: "eth0", Addrs: []string{"10.97.1.9/24"}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	w := &world{gw: l.Host("gw"), seg: l.Host("seg")}
	for _, n := range []struct {
		hop netip.Addr
		mac net.HardwareAddr
	}{{hopS, macS}, {hopD, macD}, {hopE, macE}} {
		if err := w.gw.IP("neigh", "replace", n.hop.String(), "lladdr", n.mac.String(), "dev", "eth1", "nud", "permanent"); err != nil {
			t.Fatal(err)
		}
	}
	// A routed host, beyond D.
	if err := w.gw.IP("route", "add", routedHost.String()+"/32", "via", hopD.String()); err != nil {
		t.Fatal(err)
	}
	// Frames redirected into a veth need an XDP program on its peer.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, verdict), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	err = w.seg.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		lk, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: ifc.Index})
		if err != nil {
			return err
		}
		t.Cleanup(func() { lk.Close() })
		w.sock, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(w.sock) })
		// Each frame that came through XDP costs a page of the buffer.
		if err := unix.SetsockoptInt(w.sock, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 256<<20); err != nil {
			return err
		}
		return unix.Bind(w.sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifc.Index})
	})
	if err != nil {
		t.Fatal(err)
	}

	spec, err := bpf.LoadMigrate()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	spec.Maps[bpf.MigrateMapMigHold].MaxEntries = ringBytes
	if err := spec.Variables[bpf.MigrateVarCfgHoldPackets].Set(holdPackets); err != nil {
		t.Fatal(err)
	}
	// Routed locations (TestFlushToRoutedLocation) leave from the
	// gateway's segment address.
	if err := spec.Variables[bpf.MigrateVarCfgEncapSrc4].Set(gwSeg.As4()); err != nil {
		t.Fatal(err)
	}
	inner, err := maps.RingSpec(1 << 16)
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps[bpf.MigrateMapSyncRings].InnerMap = inner
	cm, err := chain.NewMaps(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cm.Close)
	var objs bpf.MigrateObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: cm.Replacements(spec)}); err != nil {
		t.Fatalf("load: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	sm := &maps.SyncMaps{Rings: objs.SyncRings, Epoch: objs.SyncEpoch, Overflow: objs.SyncOverflow}
	if err := sm.SetupRings(inner); err != nil {
		t.Fatal(err)
	}
	w.sync = sm
	if w.entry, err = chain.Single(cm, chain.SlotMigrate, objs.XdpMigrate); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.entry.Close() })
	// The controller owns (and closes) its own handles.
	w.mm = &maps.MigrateMaps{}
	for dst, src := range map[**ebpf.Map]*ebpf.Map{&w.mm.Endpoints: objs.MigEndpoints, &w.mm.State: objs.MigState, &w.mm.Hold: objs.MigHold, &w.mm.Stats: objs.MigStats} {
		if *dst, err = src.Clone(); err != nil {
			t.Fatal(err)
		}
	}
	if w.mm.Ctl, err = objs.MigCtl.Clone(); err != nil {
		t.Fatal(err)
	}
	if w.mm.Flush, err = objs.XdpMigFlush.Clone(); err != nil {
		t.Fatal(err)
	}
	if err := w.gw.Do(func() error {
		w.ctl, err = migrate.NewLocal(w.mm, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.ctl.Close() })
	return w
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// send runs n datagrams with sequence numbers from seq through the
// gateway's chain (BPF_PROG_TEST_RUN, not live: a forwarded one is only
// a verdict) and returns the verdicts.
func (w *world) send(t *testing.T, seq, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := seq; i < seq+n; i++ {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(198, 51, 100, 7), DstIP: ep4.AsSlice()}
		u := &layers.UDP{SrcPort: 40000, DstPort: 9}
		u.SetNetworkLayerForChecksum(ip)
		pl := make([]byte, 64)
		binary.BigEndian.PutUint64(pl, uint64(i))
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}, ip, u, gopacket.Payload(pl)); err != nil {
			t.Fatal(err)
		}
		var ret uint32
		err := w.gw.Do(func() (err error) {
			ret, err = w.entry.Run(&ebpf.RunOptions{Data: buf.Bytes(), Repeat: 1})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		out[map[uint32]string{1: "drop", 2: "pass", 4: "redirect"}[ret]]++
	}
	return out
}

// received reads what seg got: the sequence numbers, in order, and the
// destination MAC of each.
func (w *world) received(t testing.TB) (seqs []int, macs []string) {
	t.Helper()
	buf := make([]byte, 2048)
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(w.sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	for {
		n, _, err := unix.Recvfrom(w.sock, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			// A receive timeout makes the call return EINTR on any
			// signal (the runtime's preemption too), SA_RESTART or not.
			if errors.Is(err, unix.EINTR) {
				continue
			}
			t.Fatal(err)
		}
		if n < 14+20+8+8 || buf[14+9] != 17 {
			continue
		}
		seqs = append(seqs, int(binary.BigEndian.Uint64(buf[14+28:])))
		macs = append(macs, net.HardwareAddr(buf[:6]).String())
	}
}

func (w *world) do(t testing.TB, f func() error) {
	t.Helper()
	if err := w.gw.Do(f); err != nil {
		t.Fatal(err)
	}
}

// blackout puts ep4 at S and moves it towards D as far as the blackout:
// the gateway holds its packets from now on.
func (w *world) blackout(t testing.TB) {
	t.Helper()
	w.do(t, func() error {
		if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
			return err
		}
		if err := w.ctl.Start(ep4, migrate.Location{Hop: hopD}); err != nil {
			return err
		}
		return w.ctl.Blackout(ep4)
	})
}

func inOrder(seqs []int, from, n int) bool {
	if len(seqs) != n {
		return false
	}
	for i, s := range seqs {
		if s != from+i {
			return false
		}
	}
	return true
}

// TestHoldFlushOrder: packets of a blackout are held and, at the switch,
// reach the destination all, once, in order; the counters say so.
func TestHoldFlushOrder(t *testing.T) {
	w := newWorld(t, 65536)
	const n = 3000
	w.blackout(t)
	if v := w.send(t, 0, n); v["drop"] != n {
		t.Fatalf("blackout verdicts %v, want %d drops (held)", v, n)
	}
	w.do(t, func() error { return w.ctl.Switch(ep4) })
	seqs, macs := w.received(t)
	if !inOrder(seqs, 0, n) {
		t.Errorf("flushed %d packets (first %v), want 0..%d in order", len(seqs), seqs[:min(len(seqs), 5)], n-1)
	}
	for i, m := range macs {
		if m != macD.String() {
			t.Fatalf("packet %d went to %s, want the destination %s", i, m, macD)
		}
	}
	if v := w.send(t, n, 10); v["redirect"] != 10 {
		t.Errorf("after the flush: %v, want 10 redirected", v)
	}
	list, err := w.ctl.List()
	if err != nil || len(list) != 1 || list[0].Migration == nil {
		t.Fatalf("list %+v %v", list, err)
	}
	if m := list[0].Migration; m.Held != n || m.Flushed != n || m.Overflow != 0 || m.Flushing || m.State != migrate.StateSwitched {
		t.Errorf("migration %+v, want held = flushed = %d, switched, not flushing", m, n)
	}
	w.do(t, func() error { return w.ctl.Done(ep4) })
	list, _ = w.ctl.List()
	if list[0].Migration != nil || list[0].Location.Hop != hopD {
		t.Errorf("after done: %+v, want located at D, no migration", list[0])
	}
}

// TestHoldOverflow: a hold bounded to 100 packets keeps the first 100 (in
// order) and drops the newest, counted.
func TestHoldOverflow(t *testing.T) {
	w := newWorld(t, 100)
	w.blackout(t)
	w.send(t, 0, 250)
	w.do(t, func() error { return w.ctl.Switch(ep4) })
	seqs, _ := w.received(t)
	if !inOrder(seqs, 0, 100) {
		t.Errorf("flushed %d packets, want the oldest 100 in order", len(seqs))
	}
	list, _ := w.ctl.List()
	if m := list[0].Migration; m.Held != 250 || m.Flushed != 100 || m.Overflow != 150 || m.Flushing {
		t.Errorf("migration %+v, want held 250, flushed 100, overflow 150", m)
	}
	st, err := w.mm.MigStats()
	if err != nil || st["hold_overflow"] != 150 {
		t.Errorf("mig_stats %v %v, want hold_overflow 150", st, err)
	}
}

// TestAbortEachState: an abort in every state sends the endpoint's
// packets to the source again, the held ones first, none lost.
func TestAbortEachState(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []func(*migrate.Local) error
		held  int  // packets sent in the last state before the abort, held
		dest  bool // those go to the destination (switched, not held)
	}{
		{"migrating", nil, 0, false},
		{"blackout", []func(*migrate.Local) error{func(c *migrate.Local) error { return c.Blackout(ep4) }}, 50, false},
		{"switched", []func(*migrate.Local) error{func(c *migrate.Local) error { return c.Blackout(ep4) }, func(c *migrate.Local) error { return c.Switch(ep4) }}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, 65536)
			w.do(t, func() error {
				if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
					return err
				}
				if err := w.ctl.Start(ep4, migrate.Location{Hop: hopD}); err != nil {
					return err
				}
				for _, s := range tc.steps {
					if err := s(w.ctl); err != nil {
						return err
					}
				}
				return nil
			})
			if tc.held > 0 {
				w.send(t, 0, tc.held)
			}
			w.received(t) // what a switch flushed
			w.do(t, func() error { return w.ctl.Abort(ep4) })
			seqs, macs := w.received(t)
			if !inOrder(seqs, 0, tc.held) {
				t.Errorf("abort flushed %v, want 0..%d in order", seqs, tc.held-1)
			}
			for _, m := range macs {
				if m != macS.String() {
					t.Errorf("held packet flushed to %s, want the source %s", m, macS)
				}
			}
			list, _ := w.ctl.List()
			if list[0].Migration != nil || list[0].Location.Hop != hopS {
				t.Errorf("after abort: %+v, want at the source, no migration", list[0])
			}
			if v := w.send(t, 1000, 5); v["redirect"] != 5 {
				t.Errorf("after abort: %v, want forwarded", v)
			}
		})
	}
}

// TestQueuedUpdate: a location update during a move is queued (and
// reported so), applied in order after Done, dropped at Abort.
func TestQueuedUpdate(t *testing.T) {
	w := newWorld(t, 65536)
	w.do(t, func() error {
		if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
			return err
		}
		if err := w.ctl.Start(ep4, migrate.Location{Hop: hopD}); err != nil {
			return err
		}
		for _, hop := range []netip.Addr{hopS, hopE} {
			q, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hop})
			if err != nil || !q {
				t.Errorf("set during a move: queued %v, %v; want queued", q, err)
			}
		}
		if hop, _, _ := w.mm.Endpoint(ep4); hop != hopS {
			t.Errorf("queued update applied at once: at %s", hop)
		}
		if err := w.ctl.Delete(ep4); !errors.Is(err, migrate.ErrState) {
			t.Errorf("delete while migrating: %v, want ErrState", err)
		}
		if err := w.ctl.Done(ep4); !errors.Is(err, migrate.ErrState) {
			t.Errorf("done before switch: %v, want ErrState", err)
		}
		if err := w.ctl.Switch(ep4); err != nil {
			return err
		}
		return w.ctl.Done(ep4)
	})
	list, _ := w.ctl.List()
	if list[0].Location.Hop != hopE {
		t.Errorf("after done: at %s, want the last queued update %s", list[0].Location.Hop, hopE)
	}
	w.do(t, func() error {
		if err := w.ctl.Start(ep4, migrate.Location{Hop: hopD}); err != nil {
			return err
		}
		if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
			return err
		}
		return w.ctl.Abort(ep4)
	})
	list, _ = w.ctl.List()
	if list[0].Location.Hop != hopE {
		t.Errorf("after abort: at %s, want %s (the queued update dropped)", list[0].Location.Hop, hopE)
	}
	_ = time.Second
}

// cloneMaps opens a second set of handles on w's maps, for another
// controller (a daemon after a restart).
func (w *world) cloneMaps(t testing.TB) *maps.MigrateMaps {
	t.Helper()
	m := &maps.MigrateMaps{}
	var err error
	for dst, src := range map[**ebpf.Map]*ebpf.Map{&m.Endpoints: w.mm.Endpoints, &m.State: w.mm.State, &m.Hold: w.mm.Hold, &m.Stats: w.mm.Stats} {
		if *dst, err = src.Clone(); err != nil {
			t.Fatal(err)
		}
	}
	if m.Ctl, err = w.mm.Ctl.Clone(); err != nil {
		t.Fatal(err)
	}
	if m.Flush, err = w.mm.Flush.Clone(); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRestartDuringBlackout: packets still in the hold ring survive a
// daemon restart and are flushed by the next one; packets the old daemon
// had read but not re-injected are counted lost (per migration and in
// mig_stats); the migration's state is untouched.
func TestRestartDuringBlackout(t *testing.T) {
	w := newWorld(t, 65536)
	w.blackout(t)
	w.send(t, 0, 100)
	// A daemon starts (it reads the ring's 100 packets, as it adopts
	// them) and dies before the switch: those 100 are gone with it.
	var old *migrate.Local
	w.do(t, func() (err error) { old, err = migrate.NewLocal(w.cloneMaps(t), nil); return err })
	old.Close()
	w.send(t, 100, 50) // still held: in the ring
	var next *migrate.Local
	w.do(t, func() (err error) { next, err = migrate.NewLocal(w.cloneMaps(t), nil); return err })
	defer next.Close()
	list, err := next.List()
	if err != nil {
		t.Fatal(err)
	}
	if m := list[0].Migration; m == nil || m.State != migrate.StateBlackout || m.Lost != 100 || !m.Flushing {
		t.Fatalf("after the restart: %+v, want still in blackout, holding, 100 lost", m)
	}
	w.do(t, func() error { return next.Switch(ep4) })
	seqs, _ := w.received(t)
	if !inOrder(seqs, 100, 50) {
		t.Errorf("flushed %v, want 100..149 in order (what stayed in the ring)", seqs)
	}
	st, err := w.mm.MigStats()
	if err != nil || st["hold_lost"] != 100 {
		t.Errorf("mig_stats %v %v, want hold_lost 100", st, err)
	}
}

// TestStandbyController: a standby's controller reads but refuses every
// change (the sync owns its maps); once the election makes it the owner
// it continues the migration from the state it has, flushing what its
// own datapath held.
func TestStandbyController(t *testing.T) {
	w := newWorld(t, 65536)
	w.blackout(t)
	var sb *migrate.Local
	w.do(t, func() (err error) { sb, err = migrate.NewLocalRole(w.cloneMaps(t), nil, false); return err })
	defer sb.Close()
	w.send(t, 0, 40)
	for name, f := range map[string]func() error{
		"switch": func() error { return sb.Switch(ep4) },
		"abort":  func() error { return sb.Abort(ep4) },
		"set":    func() error { _, err := sb.SetLocation(ep4, migrate.Location{Hop: hopE}); return err },
		"delete": func() error { return sb.Delete(ep4) },
	} {
		if err := f(); !errors.Is(err, migrate.ErrStandby) {
			t.Errorf("standby %s: %v, want ErrStandby", name, err)
		}
	}
	if list, err := sb.List(); err != nil || len(list) != 1 || list[0].Migration.State != migrate.StateBlackout {
		t.Errorf("standby list: %+v %v, want the endpoint in blackout", list, err)
	}
	w.do(t, func() error {
		if err := sb.SetActive(true); err != nil {
			return err
		}
		return sb.Switch(ep4)
	})
	seqs, _ := w.received(t)
	if !inOrder(seqs, 0, 40) {
		t.Errorf("the new owner flushed %v, want 0..39 in order", seqs)
	}
}

// TestAdoptCountsOnlyTheOldOwners: the new owner counts lost exactly the
// tickets no frame in its ring answers for (the old owner's), even when
// its own datapath holds more packets while it takes over. Counting
// those as lost too let the flush end early and strand the last held
// packets in the ring (TestMigrateFailover, loader/).
func TestAdoptCountsOnlyTheOldOwners(t *testing.T) {
	w := newWorld(t, 65536)
	w.blackout(t)
	var sb *migrate.Local
	w.do(t, func() (err error) { sb, err = migrate.NewLocalRole(w.cloneMaps(t), nil, false); return err })
	defer sb.Close()
	w.send(t, 0, 40) // held here: frames in the ring
	// The old owner's 5 tickets, whose frames died with it.
	const oldOwners = 5
	var v maps.MigVal
	k := maps.MigKeyOf(ep4)
	if err := w.mm.State.Lookup(k, &v); err != nil {
		t.Fatal(err)
	}
	v.Hold += oldOwners
	if err := w.mm.State.Update(k, &v, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	// 10 more held while the standby takes over, after it drained the
	// ring.
	once := true
	migrate.SetAfterAdoptDrain(func() {
		if once {
			once = false
			w.send(t, 40, 10)
		}
	})
	defer migrate.SetAfterAdoptDrain(nil)
	w.do(t, func() error {
		if err := sb.SetActive(true); err != nil {
			return err
		}
		return sb.Switch(ep4)
	})
	if err := w.mm.State.Lookup(k, &v); err != nil {
		t.Fatal(err)
	}
	if v.Lost != oldOwners || v.Flushed != 50 {
		t.Errorf("after the takeover and the switch: lost %d, flushed %d; want lost %d (the old owner's), flushed 50", v.Lost, v.Flushed, oldOwners)
	}
	seqs, _ := w.received(t)
	if !inOrder(seqs, 0, 50) {
		t.Errorf("the new owner flushed %v, want 0..49 in order", seqs)
	}
}

// TestTakeoverCountsBoth: the new owner's counters are the old owner's
// (as last replicated) plus what it held itself as the standby. The
// owner's record reaches the standby whole (the sync writes the value),
// so tickets the standby's datapath took in its copy vanished with the
// owner's next change while their frames sat in its ring: Held and Lost
// undercounted after the takeover (Held 100, Lost 60 here).
func TestTakeoverCountsBoth(t *testing.T) {
	w := newWorld(t, 65536)
	w.blackout(t)
	var sb *migrate.Local
	w.do(t, func() (err error) { sb, err = migrate.NewLocalRole(w.cloneMaps(t), nil, false); return err })
	defer sb.Close()
	w.send(t, 0, 40) // reach the standby (flooded to it, say): held here
	// The owner's record as the sync writes it on the standby: the
	// owner has held 100 packets (in its own ring), none flushed.
	const oldOwners = 100
	k := maps.MigKeyOf(ep4)
	var v maps.MigVal
	if err := w.mm.State.Lookup(k, &v); err != nil {
		t.Fatal(err)
	}
	v.Hold = maps.MigFlushing | oldOwners
	v.Sync.Version += 10
	if err := w.mm.State.Update(k, &v, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	w.do(t, func() error {
		if err := sb.SetActive(true); err != nil {
			return err
		}
		return sb.Switch(ep4)
	})
	list, err := sb.List()
	if err != nil || len(list) != 1 || list[0].Migration == nil {
		t.Fatalf("list after the takeover: %+v %v", list, err)
	}
	m := list[0].Migration
	if m.Held != oldOwners+40 || m.Lost != oldOwners || m.Flushed != 40 || m.Overflow != 0 {
		t.Errorf("after the takeover and the switch: held %d, lost %d, flushed %d, overflow %d; want held %d (the old owner's %d and this host's 40), lost %d, flushed 40",
			m.Held, m.Lost, m.Flushed, m.Overflow, oldOwners+40, oldOwners, oldOwners)
	}
	if seqs, _ := w.received(t); !inOrder(seqs, 0, 40) {
		t.Errorf("the new owner flushed %v, want 0..39 in order", seqs)
	}
}

// TestOwnerReplicatesHoldCounts: while the owner holds, its record is
// marked for the sync (its version moves) without any step, so the peer
// learns the hold counters. Before, the tickets went to the peer only
// with the record's next change: after a failover the new owner's Held
// and Lost missed what the old owner held since the blackout began.
func TestOwnerReplicatesHoldCounts(t *testing.T) {
	w := newWorld(t, 65536)
	w.blackout(t)
	k := maps.MigKeyOf(ep4)
	var v maps.MigVal
	if err := w.mm.State.Lookup(k, &v); err != nil {
		t.Fatal(err)
	}
	v0 := v.Sync.Version
	// What the blackout queued for the sync is sent: a round of the
	// syncer (drain, advance the epoch).
	round := func() (n int) {
		if _, err := w.sync.Drain(func(r *maps.SyncRec) {
			if r.MapId == uint32(bpf.MigrateSyncMapIdSYNC_MAP_MIGRATION) {
				n++
			}
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.sync.AdvanceEpoch(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	round()
	w.send(t, 0, 100)
	// Polled, not timed: the mark comes within a few TouchIntervals.
	for i := 0; i < 500; i++ {
		if err := w.mm.State.Lookup(k, &v); err != nil {
			t.Fatal(err)
		}
		if v.Sync.Version > v0 {
			if n := round(); n != 1 {
				t.Errorf("the holding record was marked (version %d -> %d) but %d records went to the sync, want 1", v0, v.Sync.Version, n)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("the holding record's version stayed %d with 100 packets held: its counters never went to the sync", v0)
}

// TestFlushToRoutedLocation: a move from a segment hop to a routed
// location (ipip:HOST): the held packets leave encapsulated, in order,
// each as xdp_mig_flush makes it (the first through the program, the rest
// through the flush's template): an outer IPv4 header from the gateway
// to HOST with its own length and a valid checksum, to D's MAC (the
// router towards HOST), the inner packet with its TTL one less.
func TestFlushToRoutedLocation(t *testing.T) {
	w := newWorld(t, 65536)
	w.do(t, func() error {
		if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
			return err
		}
		if err := w.ctl.Start(ep4, migrate.Location{Hop: routedHost, Encap: migrate.EncapIPIP}); err != nil {
			return err
		}
		return w.ctl.Blackout(ep4)
	})
	const n = 300
	w.send(t, 0, n)
	w.do(t, func() error { return w.ctl.Switch(ep4) })
	buf := make([]byte, 2048)
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(w.sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var seqs []int
	for {
		k, _, err := unix.Recvfrom(w.sock, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			break
		}
		f := buf[:k]
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		outer, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok || outer.Protocol != layers.IPProtocolIPv4 {
			t.Fatalf("frame %d: not IP-in-IP: %v", len(seqs), p)
		}
		var sum uint32
		for i := 14; i < 34; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(f[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if !outer.SrcIP.Equal(gwSeg.AsSlice()) || !outer.DstIP.Equal(routedHost.AsSlice()) || int(outer.Length) != k-14 || sum != 0xffff ||
			net.HardwareAddr(f[:6]).String() != macD.String() || f[14+20+8] != 63 {
			t.Fatalf("frame %d: outer %s -> %s length %d (frame %d) checksum ok %v, dst MAC %s, inner TTL %d; want %s -> %s, %d, ok, %s, 63",
				len(seqs), outer.SrcIP, outer.DstIP, outer.Length, k, sum == 0xffff, net.HardwareAddr(f[:6]), f[14+20+8], gwSeg, routedHost, k-14, macD)
		}
		seqs = append(seqs, int(binary.BigEndian.Uint64(f[14+20+28:])))
	}
	if !inOrder(seqs, 0, n) {
		t.Errorf("flushed %d frames %v..., want 0..%d in order", len(seqs), seqs[:min(len(seqs), 10)], n-1)
	}
}

// TestResolvesHops: a location (or a destination) the gateway has no
// neighbour entry for. The stage's FIB lookup only reads the neighbour
// table, so without anyone sending to the hop every packet was counted
// no_route and dropped, for as long as the endpoint stayed there (an
// operator's fresh `tandem endpoint set`, or an entry the kernel's
// garbage collection took: nothing re-creates it). The controller makes
// the kernel resolve the hop when it is set, and again when the stage
// counts no_route.
func TestResolvesHops(t *testing.T) {
	w := newWorld(t, 65536)
	segAddr := "10.97.1.9" // seg's own address: it answers ARP
	hop := netip.MustParseAddr(segAddr)
	forwarded := func() bool {
		t.Helper()
		for i := 0; i < 300; i++ {
			if w.send(t, i, 1)["redirect"] == 1 {
				return true
			}
			time.Sleep(10 * time.Millisecond)
		}
		return false
	}
	flush := func() {
		t.Helper()
		if err := w.gw.IP("neigh", "flush", "to", segAddr); err != nil {
			t.Fatal(err)
		}
	}
	flush()
	w.do(t, func() error {
		_, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hop})
		return err
	})
	if !forwarded() {
		st, _ := w.mm.MigStats()
		t.Fatalf("an endpoint at a hop without a neighbour entry is never forwarded (no_route %d)", st["no_route"])
	}
	// The entry goes (garbage collection, a flush): the stage counts
	// no_route, and the controller has the hop resolved again.
	flush()
	if !forwarded() {
		st, _ := w.mm.MigStats()
		t.Fatalf("after the neighbour entry went, never forwarded again (no_route %d)", st["no_route"])
	}
}

// TestRefusesUnroutedHop: a location or a destination this gateway has no
// route to (a typo, a host on no segment of it), or one of its own
// addresses, is refused with ErrNoRoute: accepted, every packet to it
// was dropped (no_route), and a move to it lost every held packet at the
// switch. Nothing changes.
func TestRefusesUnroutedHop(t *testing.T) {
	w := newWorld(t, 65536)
	nowhere := netip.MustParseAddr("203.0.113.9")
	w.do(t, func() error {
		if _, err := w.ctl.SetLocation(ep4, migrate.Location{Hop: hopS}); err != nil {
			return err
		}
		// routedHost as a segment hop (ipip: forgotten): the stage would
		// send the endpoint's packets to the router towards it (hopD),
		// which routes them by the endpoint's address, not to the host.
		for _, loc := range []migrate.Location{{Hop: nowhere}, {Hop: nowhere, Encap: migrate.EncapIPIP}, {Hop: gwSeg}, {Hop: routedHost}} {
			if _, err := w.ctl.SetLocation(ep4, loc); !errors.Is(err, migrate.ErrNoRoute) {
				t.Errorf("set %s: %v, want ErrNoRoute", loc, err)
			}
			if err := w.ctl.Start(ep4, loc); !errors.Is(err, migrate.ErrNoRoute) {
				t.Errorf("start to %s: %v, want ErrNoRoute", loc, err)
			}
		}
		// Routed and segment hops with a route are fine.
		if err := w.ctl.Start(ep4, migrate.Location{Hop: routedHost, Encap: migrate.EncapIPIP}); err != nil {
			t.Errorf("start to a routed host: %v", err)
		}
		return nil
	})
	list, _ := w.ctl.List()
	if len(list) != 1 || list[0].Location.Hop != hopS || list[0].Migration == nil || list[0].Migration.To.Hop != routedHost {
		t.Fatalf("endpoints %+v: want %s at %s, moving to %s", list, ep4, hopS, routedHost)
	}
}

// TestRefusesBadEndpoint: an endpoint's address must be one the stage can
// take over from this host's stack without harm: never an unspecified,
// multicast, loopback or broadcast address (a routing protocol's hellos,
// say). (This gateway's own addresses are allowed: a VIP it owns may be
// an endpoint, served from a host.)
func TestRefusesBadEndpoint(t *testing.T) {
	w := newWorld(t, 65536)
	w.do(t, func() error {
		for _, ep := range []string{"0.0.0.0", "::", "224.0.0.5", "ff02::5", "127.0.0.1", "255.255.255.255"} {
			if _, err := w.ctl.SetLocation(netip.MustParseAddr(ep), migrate.Location{Hop: hopS}); err == nil {
				t.Errorf("endpoint %s accepted", ep)
			}
		}
		return nil
	})
	if list, _ := w.ctl.List(); len(list) != 0 {
		t.Fatalf("endpoints %+v, want none", list)
	}
}
