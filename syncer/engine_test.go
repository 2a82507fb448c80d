package syncer_test

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/testenv"
)

const synctestMapID = 1

// host is one side: the synctest program and its maps, unpinned.
type host struct {
	objs *bpf.SynctestObjects
	sync *maps.SyncMaps
	reg  syncer.Map
}

func newHost(t *testing.T, ringBytes uint32) *host { return newHost2(t, ringBytes) }

func newHost2(t testing.TB, ringBytes uint32) *host {
	t.Helper()
	testenv.RequireRoot(t)
	spec, err := bpf.LoadSynctest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	inner := spec.Maps[bpf.SynctestMapSyncRings].InnerMap
	inner.MaxEntries = ringBytes
	var objs bpf.SynctestObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load synctest: %+v", err)
	}
	h := &host{objs: &objs, sync: newSyncMaps(&objs)}
	if err := h.sync.SetupRings(inner); err != nil {
		t.Fatal(err)
	}
	h.reg = syncer.Map{ID: synctestMapID, Name: "sync_test", M: objs.SyncTest, IO: objs.SyncIoSyncTest, Read: objs.SyncReadSyncTest, Write: objs.SyncWriteSyncTest}
	t.Cleanup(func() { h.sync.Close(); objs.Close() })
	return h
}

func newSyncMaps(objs *bpf.SynctestObjects) *maps.SyncMaps {
	return &maps.SyncMaps{Rings: objs.SyncRings, Epoch: objs.SyncEpoch, Overflow: objs.SyncOverflow}
}

// frame is a UDP datagram to the synctest port carrying one command.
func frame(op bpf.SynctestSynctestOp, key, count uint32, delta uint64) []byte {
	b := make([]byte, 14+20+8+24)
	b[12], b[13] = 0x08, 0x00
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+24))
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 7777)
	binary.BigEndian.PutUint16(udp[4:], 8+24)
	cmd := bpf.SynctestSynctestCmd{Op: uint32(op), Count: count, Key: key, Delta: delta}
	binary.Encode(udp[8:], binary.NativeEndian, cmd)
	return b
}

func (h *host) send2(t testing.TB, f []byte) { h.send(t, f, 1) }

func (h *host) send(t testing.TB, f []byte, repeat uint32) {
	t.Helper()
	ret, err := h.objs.XdpSynctest.Run(&ebpf.RunOptions{Data: f, Repeat: repeat})
	if err != nil || ret != 1 /* XDP_DROP: consumed */ {
		t.Fatalf("synctest run: ret %d, %v", ret, err)
	}
}

// dump reads a map as key -> value with the queued epoch masked out (it
// is each host's own business).
func dump(t *testing.T, m *ebpf.Map) map[uint32][]byte {
	t.Helper()
	out := map[uint32][]byte{}
	var k uint32
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		c := slices.Clone(v)
		binary.NativeEndian.PutUint64(c[8:], 0)
		out[k] = c
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func equalMaps(t *testing.T, a, b *ebpf.Map) {
	t.Helper()
	da, db := dump(t, a), dump(t, b)
	if len(da) != len(db) {
		t.Fatalf("primary has %d entries, standby %d", len(da), len(db))
	}
	for k, v := range da {
		if !bytes.Equal(v, db[k]) {
			t.Fatalf("entry %d: primary %x, standby %x", k, v, db[k])
		}
	}
}

func newPeerMap(t *testing.T, h *host) syncer.Map { return newPeerMapTB(t, h) }

// newPeerMapTB is the standby's copy of sync_test: a second load of the
// synctest object, so the standby writes through its in-kernel accessor.
func newPeerMapTB(t testing.TB, h *host) syncer.Map {
	t.Helper()
	peer := newHost2(t, 1<<16)
	m := peer.reg
	m.Name = "standby sync_test"
	return m
}

// newPlainPeerMap is a standby map without accessors: the applier checks
// versions from its own record and writes with syscalls.
func newPlainPeerMap(t *testing.T, h *host) syncer.Map {
	t.Helper()
	info, err := h.objs.SyncTest.Info()
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: info.Type, KeySize: info.KeySize, ValueSize: info.ValueSize, MaxEntries: info.MaxEntries})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return syncer.Map{ID: synctestMapID, Name: "plain sync_test", M: m}
}

func tick(t *testing.T, e *syncer.Engine, a *syncer.Applier) int {
	t.Helper()
	n := 0
	if err := e.Tick(func(d syncer.Delta) error { n++; return a.Apply(d) }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMillionEntriesConverge: 1,000,000 distinct entries changed by
// packets, a tenth of them then deleted and some changed again: after the
// ticks, the standby's map equals the primary's, entry for entry.
func TestMillionEntriesConverge(t *testing.T) {
	h := newHost(t, 8<<20)
	peer := newPeerMap(t, h)
	e, err := syncer.NewEngine(h.sync, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	a := syncer.NewApplier(peer)
	const per = 64
	n := 1_000_000 / testScale(t) / per * per
	for k := uint32(0); k < n; k += per {
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, k, per, uint64(k)+1), 1)
		if k%(per*1000) == 0 {
			tick(t, e, a)
		}
	}
	tick(t, e, a)
	deleted := 0
	for k := uint32(0); k < n; k += per * 10 {
		h.send(t, frame(bpf.SynctestSynctestOpST_DELETE, k, per, 0), 1)
		deleted += per
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, k+per, per, 7), 1)
		if k%(per*10*500) == 0 {
			tick(t, e, a)
		}
	}
	tick(t, e, a)
	// A large tick reads its values in the kernel, a batch of keys a run,
	// deletions among them too.
	big := min(100_000, n-2*per) / per * per
	for k := uint32(0); k < big; k += per {
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, k+1, per, 3), 1)
	}
	h.send(t, frame(bpf.SynctestSynctestOpST_DELETE, 640*3, per, 0), 1)
	deleted += per
	kr := e.Stats.KernelReads
	if sent := tick(t, e, a); sent < int(big) || e.Stats.KernelReads-kr < uint64(big) {
		t.Fatalf("the large tick sent %d deltas, %d read in the kernel", sent, e.Stats.KernelReads-kr)
	}
	if e.Stats.Rescans != 0 {
		t.Fatalf("%d rescans: the rings overflowed, the test meant to exercise the rings", e.Stats.Rescans)
	}
	equalMaps(t, h.objs.SyncTest, peer.M)
	if got := len(dump(t, peer.M)); got >= int(n) || a.Stats.Deleted < uint64(deleted) {
		t.Fatalf("standby holds %d entries after %d deletions (applied %d)", got, deleted, a.Stats.Deleted)
	}
	t.Logf("%d records, %d deltas, %d applied, %d deleted", e.Stats.Records, e.Stats.Deltas, a.Stats.Applied, a.Stats.Deleted)
}

// TestHotEntryOneDeltaPerTick: one entry changed 1,000,000 times costs one
// ring record and one delta per tick, and the standby ends with the sum.
func TestHotEntryOneDeltaPerTick(t *testing.T) {
	h := newHost(t, 1<<20)
	peer := newPeerMap(t, h)
	e, _ := syncer.NewEngine(h.sync, h.reg)
	a := syncer.NewApplier(peer)
	const ticks, per = 10, 100_000
	for i := range ticks {
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, 42, 1, 3), per)
		before := e.Stats.Records
		if n := tick(t, e, a); n != 1 {
			t.Fatalf("tick %d: %d deltas for one hot entry, want 1", i, n)
		}
		if r := e.Stats.Records - before; r != 1 {
			t.Fatalf("tick %d: %d ring records for one hot entry, want 1", i, r)
		}
	}
	var v, primary bpf.SynctestSynctestVal
	if err := peer.M.Lookup(uint32(42), &v); err != nil {
		t.Fatal(err)
	}
	if err := h.objs.SyncTest.Lookup(uint32(42), &primary); err != nil {
		t.Fatal(err)
	}
	// A test run interrupted by a signal (the Go runtime's preemption)
	// is run again from the start by the library: the program may have
	// run a few more times than asked, never fewer. The standby must hold
	// exactly what the primary holds.
	v.Sync.QueuedEpoch, primary.Sync.QueuedEpoch = 0, 0
	if v != primary || v.Updates < ticks*per || v.Value != 3*v.Updates || v.Sync.Version != uint64(v.Updates) {
		t.Fatalf("standby entry %+v, primary %+v, after %d or more changes", v, primary, ticks*per)
	}
}

// TestRingOverflowRescans: a ring too small for a tick's changes counts
// the overflow; the engine answers with a rescan of the map, deletions
// included, and the standby converges.
func TestRingOverflowRescans(t *testing.T) {
	h := newHost(t, 4096) // about 55 records
	peer := newPeerMap(t, h)
	e, _ := syncer.NewEngine(h.sync, h.reg)
	a := syncer.NewApplier(peer)
	for k := uint32(0); k < 5000; k += 50 {
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, k, 50, 1), 1)
	}
	tick(t, e, a)
	over, _ := h.sync.Overflows()
	if over[synctestMapID] == 0 || e.Stats.Rescans != 1 {
		t.Fatalf("overflow %d, rescans %d: want the overflow counted and one rescan", over[synctestMapID], e.Stats.Rescans)
	}
	equalMaps(t, h.objs.SyncTest, peer.M)
	// Deletions whose tombstones overflow are found by the next rescan.
	for k := uint32(0); k < 5000; k += 50 {
		h.send(t, frame(bpf.SynctestSynctestOpST_DELETE, k, 25, 0), 1)
	}
	tick(t, e, a)
	equalMaps(t, h.objs.SyncTest, peer.M)
	if a.Stats.SnapshotDeleted == 0 {
		t.Fatal("the rescan deleted nothing on the standby")
	}
	// Quiet again: no more rescans, plain deltas.
	h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, 1, 1, 1), 1)
	if n := tick(t, e, a); n != 1 || e.Stats.Rescans != 2 {
		t.Fatalf("after the storm: %d deltas, %d rescans", n, e.Stats.Rescans)
	}
	equalMaps(t, h.objs.SyncTest, peer.M)
}

// TestApplierNeverGoesBack: an older version of an entry (a replayed
// delta) does not overwrite a newer one; malformed deltas are refused.
func TestApplierNeverGoesBack(t *testing.T) {
	h := newHost(t, 1<<16)
	for name, peer := range map[string]syncer.Map{"in-kernel": newPeerMap(t, h), "syscalls": newPlainPeerMap(t, h)} {
		t.Run(name, func(t *testing.T) { neverGoesBack(t, peer) })
	}
}

func neverGoesBack(t *testing.T, peer syncer.Map) {
	a := syncer.NewApplier(peer)
	val := func(version, value uint64) []byte {
		b, _ := binary.Append(nil, binary.NativeEndian, bpf.SynctestSynctestVal{Sync: bpf.SynctestSyncHdr{Version: version}, Value: value})
		return b
	}
	key := binary.NativeEndian.AppendUint32(nil, 9)
	for _, d := range []syncer.Delta{{Seq: 1, Map: 1, Op: syncer.OpUpsert, Key: key, Value: val(5, 50)}, {Seq: 2, Map: 1, Op: syncer.OpUpsert, Key: key, Value: val(3, 30)}} {
		if err := a.Apply(d); err != nil {
			t.Fatal(err)
		}
	}
	var v bpf.SynctestSynctestVal
	peer.M.Lookup(uint32(9), &v)
	if v.Value != 50 || a.Stats.Stale != 1 {
		t.Fatalf("entry went back to %+v (stale %d)", v, a.Stats.Stale)
	}
	for i, d := range []syncer.Delta{
		{Map: 7, Op: syncer.OpUpsert, Key: key, Value: val(9, 9)},
		{Map: 1, Op: syncer.OpUpsert, Key: key[:2], Value: val(9, 9)},
		{Map: 1, Op: syncer.OpUpsert, Key: key, Value: val(9, 9)[:10]},
		{Map: 1, Op: 99, Key: key},
	} {
		if err := a.Apply(d); err == nil {
			t.Errorf("malformed delta %d accepted", i)
		}
	}
}

// Without in-kernel accessors, a tick in which a large share of a map
// changed reads the map with one batch scan instead of a lookup per entry,
// and the applier checks versions from its own record.
func TestBatchScanFallback(t *testing.T) {
	h := newHost(t, 8<<20)
	plain := syncer.Map{ID: h.reg.ID, Name: h.reg.Name, M: h.reg.M}
	e, err := syncer.NewEngine(h.sync, plain)
	if err != nil {
		t.Fatal(err)
	}
	peer := newPlainPeerMap(t, h)
	a := syncer.NewApplier(peer)
	const per = 64
	for k := uint32(0); k < 70_000; k += per {
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, k, per, 1), 1)
	}
	if n := tick(t, e, a); n < 70_000 || e.Stats.BatchReads != 1 || e.Stats.KernelReads != 0 {
		t.Fatalf("the large tick sent %d deltas with %d batch reads, %d kernel reads", n, e.Stats.BatchReads, e.Stats.KernelReads)
	}
	h.send(t, frame(bpf.SynctestSynctestOpST_DELETE, 0, per, 0), 1)
	h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, 100, per, 1), 1)
	tick(t, e, a)
	equalMaps(t, h.objs.SyncTest, peer.M)
}

// TestSnapshotKeepsOnlyWhatItNamed: after a snapshot, the standby's map
// holds exactly the entries the snapshot named, whether it began empty
// (no set of keys kept, nothing scanned at the end) or held entries the
// snapshot no longer names (those go).
func TestSnapshotKeepsOnlyWhatItNamed(t *testing.T) {
	h := newHost(t, 1<<16)
	val := func(version uint64) []byte {
		b, _ := binary.Append(nil, binary.NativeEndian, bpf.SynctestSynctestVal{Sync: bpf.SynctestSyncHdr{Version: version}, Value: version})
		return b
	}
	snapshot := func(a *syncer.Applier, keys ...uint32) {
		ds := []syncer.Delta{{Map: synctestMapID, Op: syncer.OpSnapshotBegin}}
		for _, k := range keys {
			ds = append(ds, syncer.Delta{Map: synctestMapID, Op: syncer.OpUpsert, Key: binary.NativeEndian.AppendUint32(nil, k), Value: val(1)})
		}
		ds = append(ds, syncer.Delta{Map: synctestMapID, Op: syncer.OpSnapshotEnd})
		if err := a.ApplyBatch(ds); err != nil {
			t.Fatal(err)
		}
	}
	for name, peer := range map[string]syncer.Map{"in-kernel": newPeerMap(t, h), "syscalls": newPlainPeerMap(t, h)} {
		t.Run(name, func(t *testing.T) {
			a := syncer.NewApplier(peer)
			for _, tc := range []struct {
				what string
				keys []uint32
			}{
				{"into an empty map", []uint32{1, 2, 3}},
				{"into a map with entries it no longer names", []uint32{2, 4}},
				{"into a map with entries it all names again", []uint32{2, 4}},
			} {
				snapshot(a, tc.keys...)
				got := dump(t, peer.M)
				if len(got) != len(tc.keys) {
					t.Fatalf("snapshot %s: %d entries, want %d (%v)", tc.what, len(got), len(tc.keys), tc.keys)
				}
				for _, k := range tc.keys {
					if _, ok := got[k]; !ok {
						t.Fatalf("snapshot %s: entry %d missing", tc.what, k)
					}
				}
			}
		})
	}
}

// TestDeletionsRunTheHook: a map's Deleted program (SYNC_DELETED) runs
// after the applier deleted entries from it, by a tombstone or by a
// snapshot's sweep: migrate's forward caches must not outlive the records
// the standby deletes from user space.
func TestDeletionsRunTheHook(t *testing.T) {
	h := newHost(t, 1<<16)
	peer := newPeerMap(t, h)
	runs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer runs.Close()
	// runs[0]++: what a feature's hook would do to its generation.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Syscall, Flags: unix.BPF_F_SLEEPABLE, License: "GPL", Instructions: asm.Instructions{
		asm.LoadMapPtr(asm.R1, runs.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	peer.Deleted = prog
	count := func() uint64 {
		var n uint64
		if err := runs.Lookup(uint32(0), &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	val := func(version uint64) []byte {
		b, _ := binary.Append(nil, binary.NativeEndian, bpf.SynctestSynctestVal{Sync: bpf.SynctestSyncHdr{Version: version}, Value: version})
		return b
	}
	key := func(k uint32) []byte { return binary.NativeEndian.AppendUint32(nil, k) }
	a := syncer.NewApplier(peer)
	for _, tc := range []struct {
		what string
		ds   []syncer.Delta
		want uint64
	}{
		{"upserts", []syncer.Delta{{Map: synctestMapID, Op: syncer.OpUpsert, Key: key(1), Value: val(1)}, {Map: synctestMapID, Op: syncer.OpUpsert, Key: key(2), Value: val(1)}}, 0},
		{"a tombstone", []syncer.Delta{{Map: synctestMapID, Op: syncer.OpDelete, Key: key(1)}}, 1},
		{"a snapshot that no longer names key 2", []syncer.Delta{{Map: synctestMapID, Op: syncer.OpSnapshotBegin},
			{Map: synctestMapID, Op: syncer.OpUpsert, Key: key(3), Value: val(1)}, {Map: synctestMapID, Op: syncer.OpSnapshotEnd}}, 2},
		{"a snapshot that deletes nothing", []syncer.Delta{{Map: synctestMapID, Op: syncer.OpSnapshotBegin},
			{Map: synctestMapID, Op: syncer.OpUpsert, Key: key(3), Value: val(1)}, {Map: synctestMapID, Op: syncer.OpSnapshotEnd}}, 2},
	} {
		if err := a.ApplyBatch(tc.ds); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if got := count(); got != tc.want {
			t.Errorf("after %s: the hook ran %d times in all, want %d", tc.what, got, tc.want)
		}
	}
}
