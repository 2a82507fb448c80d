package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/fixture"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

// The migrate fixture's world: a gateway with one backend segment
// (10.98.1.0/24, fd98:1::/64) where the source host S and the destination
// host D have fixed neighbour entries, and endpoints that move between
// them.
var (
	migEP4   = netip.MustParseAddr("10.98.0.50")
	migEP6   = netip.MustParseAddr("fd98::50")
	migOther = netip.MustParseAddr("10.98.0.99") // no endpoint
	hopS4    = netip.MustParseAddr("10.98.1.2")
	hopD4    = netip.MustParseAddr("10.98.1.3")
	hopS6    = netip.MustParseAddr("fd98:1::2")
	hopD6    = netip.MustParseAddr("fd98:1::3")
	macS, _  = net.ParseMAC("02:00:00:00:98:02")
	macD, _  = net.ParseMAC("02:00:00:00:98:03")
)

type migFixture struct {
	t    testing.TB
	sync *maps.SyncMaps
	objs bpf.MigrateObjects
	mm   *maps.MigrateMaps
	gw   *lab.Host
	cm   *chain.Maps
}

// newMigLab builds the fixture's lab and returns its gateway.
func newMigLab(t testing.TB) *lab.Host {
	t.Helper()
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "gw", Forward: true}, {Name: "seg"}},
		Links: []lab.LinkSpec{{
			A: lab.End{Host: "gw", Iface: "eth1", Addrs: []string{"10.98.1.1/24", "fd98:1::1/64"}},
			B: lab.End{Host: "seg", Iface: "eth0", Addrs: []string{"10.98.1.9/24"}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	gw := l.Host("gw")
	for _, n := range [][2]string{{hopS4.String(), macS.String()}, {hopD4.String(), macD.String()}, {hopS6.String(), macS.String()}, {hopD6.String(), macD.String()}} {
		if err := gw.IP("neigh", "replace", n[0], "lladdr", n[1], "dev", "eth1", "nud", "permanent"); err != nil {
			t.Fatal(err)
		}
	}
	return gw
}

// newMigFixture loads migrate.c unpinned in a one-host lab whose segment
// has S and D as permanent neighbours (bpf_fib_lookup reads this
// namespace's FIB).
func newMigFixture(t testing.TB) *migFixture {
	t.Helper()
	return newMigFixtureWith(t, nil)
}

// newMigFixtureWith is newMigFixture with tweak applied to the spec
// before it loads (load-time constants).
func newMigFixtureWith(t testing.TB, tweak func(*ebpf.CollectionSpec) error) *migFixture {
	t.Helper()
	return newMigFixtureSpec(t, nil, nil, tweak)
}

// newMigFixtureSpec is newMigFixtureWith for another build of migrate.c
// (spec; nil: this one), in the lab host gw (nil: a new lab), as
// BenchmarkMigrateStage's variants load.
func newMigFixtureSpec(t testing.TB, gw *lab.Host, spec *ebpf.CollectionSpec, tweak func(*ebpf.CollectionSpec) error) *migFixture {
	t.Helper()
	testenv.RequireRoot(t)
	if gw == nil {
		gw = newMigLab(t)
	}
	f := &migFixture{gw: gw, t: t}
	if spec == nil {
		var err error
		if spec, err = bpf.LoadMigrate(); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	spec.Maps[bpf.MigrateMapMigHold].MaxEntries = 1 << 20
	inner, err := maps.RingSpec(1 << 16)
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps[bpf.MigrateMapSyncRings].InnerMap = inner
	if tweak != nil {
		if err := tweak(spec); err != nil {
			t.Fatal(err)
		}
	}
	f.cm = newChainMaps(t)
	if err := spec.LoadAndAssign(&f.objs, &ebpf.CollectionOptions{MapReplacements: f.cm.Replacements(spec)}); err != nil {
		t.Fatalf("load (the verifier must accept every program): %+v", err)
	}
	t.Cleanup(func() { f.objs.Close() })
	sm := &maps.SyncMaps{Rings: f.objs.SyncRings, Epoch: f.objs.SyncEpoch, Overflow: f.objs.SyncOverflow}
	if err := sm.SetupRings(inner); err != nil {
		t.Fatal(err)
	}
	f.sync = sm
	f.objs.XdpMigrate = singleStage(t, f.cm, chain.SlotMigrate, f.objs.XdpMigrate)
	f.mm = &maps.MigrateMaps{Endpoints: f.objs.MigEndpoints, State: f.objs.MigState, Hold: f.objs.MigHold, Stats: f.objs.MigStats, Ctl: f.objs.MigCtl, Flush: f.objs.XdpMigFlush}
	return f
}

func udp4to(t testing.TB, dst netip.Addr) []byte {
	ip := ip4(client4, dst, layers.IPProtocolUDP)
	return serialize(t, eth(layers.EthernetTypeIPv4), ip, udp(ip), payload)
}

func udp6to(t testing.TB, dst netip.Addr) []byte {
	ip := ip6(client6, dst, layers.IPProtocolUDP)
	return serialize(t, eth(layers.EthernetTypeIPv6), ip, udp(ip), payload)
}

// TestMigrateStage runs the stage in every state, IPv4 and IPv6: where
// each packet goes (the verdict and the next hop's MAC written into the
// frame), and that a held packet is in the hold ring.
func TestMigrateStage(t *testing.T) {
	f := newMigFixture(t)
	const (
		none      = 0
		migrating = uint32(bpf.MigrateMigStateIdMIG_MIGRATING)
		blackout  = uint32(bpf.MigrateMigStateIdMIG_BLACKOUT)
		switched  = uint32(bpf.MigrateMigStateIdMIG_SWITCHED)
		aborted   = uint32(bpf.MigrateMigStateIdMIG_ABORTED)
	)
	for _, fam := range []struct {
		name     string
		ep, s, d netip.Addr
		frame    func(testing.TB, netip.Addr) []byte
	}{
		{"v4", migEP4, hopS4, hopD4, udp4to},
		{"v6", migEP6, hopS6, hopD6, udp6to},
	} {
		for _, tc := range []struct {
			name    string
			state   uint32
			hold    bool // MIG_FLUSHING set
			verdict string
			mac     net.HardwareAddr // nil: the frame is not rewritten
		}{
			{"normal", none, false, "XDP_REDIRECT", macS},
			{"migrating", migrating, false, "XDP_REDIRECT", macS},
			{"blackout", blackout, true, "XDP_DROP", nil},
			{"switched flushing", switched, true, "XDP_DROP", nil},
			{"switched", switched, false, "XDP_REDIRECT", macD},
			{"aborted flushing", aborted, true, "XDP_DROP", nil},
			{"aborted", aborted, false, "XDP_REDIRECT", macS},
		} {
			t.Run(fam.name+"/"+tc.name, func(t *testing.T) {
				err := f.gw.Do(func() error {
					if err := f.mm.SetEndpoint(fam.ep, fam.s); err != nil {
						return err
					}
					_ = f.mm.DelMigration(fam.ep)
					if tc.state != none {
						v := &maps.MigVal{State: tc.state, From: maps.MigLocOf(fam.s), To: maps.MigLocOf(fam.d)}
						if err := f.mm.PutMigration(fam.ep, v, tc.hold); err != nil {
							return err
						}
					}
					in := fam.frame(t, fam.ep)
					verdict, out, err := fixture.Run(f.objs.XdpMigrate, in)
					if err != nil {
						return err
					}
					if verdict != tc.verdict {
						t.Errorf("verdict %s, want %s", verdict, tc.verdict)
					}
					if tc.mac != nil && !bytes.Equal(out[0:6], tc.mac) {
						t.Errorf("dst MAC %s, want %s", net.HardwareAddr(out[0:6]), tc.mac)
					}
					if tc.verdict == "XDP_DROP" {
						m, err := f.mm.Migration(fam.ep)
						if err != nil {
							return err
						}
						if got := m.Hold &^ maps.MigFlushing; got != 1 {
							t.Errorf("tickets %d, want 1", got)
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	t.Run("decline", func(t *testing.T) {
		err := f.gw.Do(func() error {
			for _, in := range [][]byte{udp4to(t, migOther), udp6to(t, vip6)} {
				verdict, out, err := fixture.Run(f.objs.XdpMigrate, in)
				if err != nil {
					return err
				}
				if verdict != "XDP_PASS" || !bytes.Equal(out[:len(in)], in) {
					t.Errorf("not an endpoint: %s, frame changed %v; want XDP_PASS, unchanged", verdict, !bytes.Equal(out[:len(in)], in))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

type netipAddr = netip.Addr

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestMigCtlMarksSync: what the daemon writes through mig_ctl (endpoints,
// migrations, deletions) goes into the dirty rings for the state sync,
// under the maps' ids, as the datapath's own changes would.
func TestMigCtlMarksSync(t *testing.T) {
	f := newMigFixture(t)
	type rec struct {
		id uint32
		op uint32
	}
	drain := func() []rec {
		var out []rec
		if _, err := f.sync.Drain(func(r *maps.SyncRec) { out = append(out, rec{r.MapId, uint32(r.Op)}) }); err != nil {
			t.Fatal(err)
		}
		if _, err := f.sync.AdvanceEpoch(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	drain()
	const ep, mig = uint32(bpf.MigrateSyncMapIdSYNC_MAP_ENDPOINT), uint32(bpf.MigrateSyncMapIdSYNC_MAP_MIGRATION)
	up, del := uint32(bpf.SyncSyncOpSYNC_OP_UPSERT), uint32(bpf.SyncSyncOpSYNC_OP_DELETE)
	for _, tc := range []struct {
		name string
		do   func() error
		want rec
	}{
		{"endpoint set", func() error { return f.mm.SetEndpoint(migEP4, hopS4) }, rec{ep, up}},
		{"migration put", func() error {
			return f.mm.PutMigration(migEP4, &maps.MigVal{State: uint32(bpf.MigrateMigStateIdMIG_MIGRATING), From: maps.MigLocOf(hopS4), To: maps.MigLocOf(hopD4)}, false)
		}, rec{mig, up}},
		{"flushed", func() error { _, err := f.mm.Flushed(migEP4, 0); return err }, rec{mig, up}},
		{"migration del", func() error { return f.mm.DelMigration(migEP4) }, rec{mig, del}},
		{"endpoint del", func() error { return f.mm.DelEndpoint(migEP4) }, rec{ep, del}},
	} {
		if err := tc.do(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := drain(); len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: dirty records %v, want [%v]", tc.name, got, tc.want)
		}
	}
}

// TestMigrateForwardCache: an endpoint that is not moving is forwarded
// from its record's forward cache (no mig_state or FIB lookup), and every
// change that matters makes the cache stale at once: a migration record
// or a location written through mig_ctl (the owner) or through the
// replicated write (sync_write_*, the standby applying the owner's
// change). A stale cache would send the packet to the old location.
func TestMigrateForwardCache(t *testing.T) {
	f := newMigFixture(t)
	blackout := uint32(bpf.MigrateMigStateIdMIG_BLACKOUT)
	// Inside the lab host's namespace (f.gw.Do) a step returns its
	// error: t.Fatal there would never return to Do.
	run := func(step, verdict string, mac net.HardwareAddr) error {
		got, out, err := fixture.Run(f.objs.XdpMigrate, udp4to(t, migEP4))
		if err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
		if got != verdict || mac != nil && !bytes.Equal(out[0:6], mac) {
			return fmt.Errorf("%s: %s to %s, want %s to %s", step, got, net.HardwareAddr(out[0:6]), verdict, mac)
		}
		return nil
	}
	// replicate writes one value through the standby's path.
	replicate := func(io *ebpf.Map, prog *ebpf.Program, v any) error {
		if err := io.Put(uint32(1), v); err != nil {
			return err
		}
		ret, err := prog.Run(&ebpf.RunOptions{})
		if err != nil || ret&0xffff != 1 {
			return fmt.Errorf("replicated write: %d applied, err %v", ret&0xffff, err)
		}
		return nil
	}
	var version uint64 = 1 << 40 // newer than anything mig_ctl wrote
	err := f.gw.Do(func() error {
		if err := f.mm.SetEndpoint(migEP4, hopS4); err != nil {
			return err
		}
		if err := run("normal", "XDP_REDIRECT", macS); err != nil {
			return err
		}
		if err := run("normal, cached", "XDP_REDIRECT", macS); err != nil {
			return err
		}
		var ep bpf.MigrateEpVal
		key := maps.MigKeyOf(migEP4)
		if err := f.objs.MigEndpoints.Lookup(&key, &ep); err != nil {
			return err
		}
		if ep.Fwd.Gen == 0 || ep.Fwd.HasState != 0 {
			return fmt.Errorf("forward cache %+v: want it filled (a generation, no migration)", ep.Fwd)
		}

		// The standby applies the owner's blackout: held, not forwarded.
		st := &bpf.MigrateSyncIoMigState{N: 1}
		st.Keys[0] = key
		version++
		st.Vals[0] = bpf.MigrateMigVal{Sync: bpf.MigrateSyncHdr{Version: version}, State: blackout,
			From: maps.MigLocOf(hopS4), To: maps.MigLocOf(hopD4), Hold: maps.MigFlushing}
		if err := replicate(f.objs.SyncIoMigState, f.objs.SyncWriteMigState, st); err != nil {
			return err
		}
		if err := run("replicated blackout", "XDP_DROP", nil); err != nil {
			return err
		}

		// The owner's way: the record goes, forwarded again.
		if err := f.mm.DelMigration(migEP4); err != nil {
			return err
		}
		if err := run("migration deleted", "XDP_REDIRECT", macS); err != nil {
			return err
		}
		// A new location through mig_ctl.
		if err := f.mm.SetEndpoint(migEP4, hopD4); err != nil {
			return err
		}
		if err := run("location set", "XDP_REDIRECT", macD); err != nil {
			return err
		}
		// A new location through the replicated write.
		se := &bpf.MigrateSyncIoMigEndpoints{N: 1}
		se.Keys[0] = key
		version++
		se.Vals[0] = bpf.MigrateEpVal{Sync: bpf.MigrateSyncHdr{Version: version}, Loc: maps.MigLocOf(hopS4)}
		if err := replicate(f.objs.SyncIoMigEndpoints, f.objs.SyncWriteMigEndpoints, se); err != nil {
			return err
		}
		if err := run("replicated location", "XDP_REDIRECT", macS); err != nil {
			return err
		}
		// A migration through mig_ctl.
		v := &maps.MigVal{State: blackout, From: maps.MigLocOf(hopS4), To: maps.MigLocOf(hopD4)}
		if err := f.mm.PutMigration(migEP4, v, true); err != nil {
			return err
		}
		if err := run("blackout", "XDP_DROP", nil); err != nil {
			return err
		}

		// The per-CPU cache: one CPU, so that each run finds the slot
		// the previous one filled.
		var one, all unix.CPUSet
		if err := unix.SchedGetaffinity(0, &all); err != nil {
			return err
		}
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &all)
		if err := f.mm.DelMigration(migEP4); err != nil {
			return err
		}
		if err := run("migration deleted again", "XDP_REDIRECT", macS); err != nil {
			return err
		}
		if n, err := fastSlots(f, key); err != nil || n == 0 {
			return fmt.Errorf("mig_fast: %d slots for the endpoint (err %v), want it cached", n, err)
		}
		// A routing change: the caches keep the FIB's answer until the
		// daemon's watcher moves mig_nh_gen (no clock on the way).
		macN, _ := net.ParseMAC("02:00:00:00:98:07")
		if err := f.gw.IP("neigh", "replace", hopS4.String(), "lladdr", macN.String(), "dev", "eth1", "nud", "permanent"); err != nil {
			return err
		}
		if err := run("neighbour changed, generation not moved", "XDP_REDIRECT", macS); err != nil {
			return err
		}
		if err := loader.BumpNextHopGen(f.objs.MigNhGen); err != nil {
			return err
		}
		if err := run("next-hop generation moved", "XDP_REDIRECT", macN); err != nil {
			return err
		}
		// A replicated deletion: the sync deletes from user space, then
		// runs sync_deleted_mig_endpoints. The slot must not outlive the
		// record: the stage declines.
		if err := f.objs.MigEndpoints.Delete(&key); err != nil {
			return err
		}
		if _, err := f.objs.SyncDeletedMigEndpoints.Run(&ebpf.RunOptions{}); err != nil {
			return err
		}
		if err := run("replicated deletion", "XDP_PASS", nil); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fastSlots counts the mig_fast slots, over every CPU, that name key.
func fastSlots(f *migFixture, key maps.MigKey) (int, error) {
	n := 0
	var vals []bpf.MigrateMigFast
	for slot := uint32(0); slot < f.objs.MigFast.MaxEntries(); slot++ {
		if err := f.objs.MigFast.Lookup(slot, &vals); err != nil {
			return 0, err
		}
		for _, v := range vals {
			var a [16]byte
			binary.NativeEndian.PutUint64(a[:8], v.Addr[0])
			binary.NativeEndian.PutUint64(a[8:], v.Addr[1])
			if v.Gen != 0 && a == key.Addr {
				n++
			}
		}
	}
	return n, nil
}
