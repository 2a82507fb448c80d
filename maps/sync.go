package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/internal/kclock"
)

// Types of the sync plumbing, generated from bpf/include/sync.h's BTF
// through bpf/sync.c, the object that holds only the shared sync maps.
type (
	SyncHdr = bpf.SyncSyncHdr
	SyncRec = bpf.SyncSyncRec
	SyncOp  = bpf.SyncSyncOp
)

const (
	SyncUpsert = bpf.SyncSyncOpSYNC_OP_UPSERT
	SyncDelete = bpf.SyncSyncOpSYNC_OP_DELETE
)

// SyncMaps are the maps every program that replicates state shares:
// the per-CPU dirty rings, the drain epoch, and the overflow counters.
type SyncMaps struct {
	Rings    *ebpf.Map // array of ringbufs, one per CPU
	Epoch    *ebpf.Map // [0]: the current drain epoch
	Overflow *ebpf.Map // per-CPU count of records lost to a full ring, per map id
	readers  []*ringbuf.Reader
	pos      [][]byte      // each ring's consumer and producer pages, mapped read-only
	rings    []kclock.Ring // the positions in pos
	owned    bool          // opened from pins: Close closes the maps too
	nearFull bool          // the last Drain found a ring with no room for a record
}

// SetupRings gives every possible CPU its dirty ring: rings already in the
// outer map (a restarted daemon) are adopted, missing ones are created
// from the inner map spec. It also starts the epoch at 1, where entries
// that were never queued (queued_epoch 0) do not count as queued.
func (s *SyncMaps) SetupRings(inner *ebpf.MapSpec) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if uint32(ncpu) > s.Rings.MaxEntries() {
		return fmt.Errorf("%d CPUs, dirty rings for %d", ncpu, s.Rings.MaxEntries())
	}
	for cpu := range ncpu {
		var id ebpf.MapID
		var ring *ebpf.Map
		if err := s.Rings.Lookup(uint32(cpu), &id); err == nil && id != 0 {
			ring, err = ebpf.NewMapFromID(id)
			if err != nil {
				return fmt.Errorf("adopt dirty ring of cpu %d: %w", cpu, err)
			}
		} else {
			ring, err = ebpf.NewMap(inner)
			if err != nil {
				return fmt.Errorf("create dirty ring of cpu %d: %w", cpu, err)
			}
			if err := s.Rings.Put(uint32(cpu), ring); err != nil {
				ring.Close()
				return fmt.Errorf("install dirty ring of cpu %d: %w", cpu, err)
			}
		}
		r, err := ringbuf.NewReader(ring)
		if err == nil {
			err = s.mapPositions(ring)
		}
		ring.Close() // the reader and the outer map keep it
		if err != nil {
			return fmt.Errorf("read dirty ring of cpu %d: %w", cpu, err)
		}
		s.readers = append(s.readers, r)
	}
	var epoch uint64
	if err := s.Epoch.Lookup(uint32(0), &epoch); err != nil {
		return err
	}
	if epoch == 0 {
		return s.Epoch.Put(uint32(0), uint64(1))
	}
	return nil
}

// mapPositions maps ring's consumer and producer pages read-only: the
// tick learns that every ring is empty from them, without waking the Go
// scheduler (RingPositions).
func (s *SyncMaps) mapPositions(ring *ebpf.Map) error {
	page := os.Getpagesize()
	b, err := unix.Mmap(ring.FD(), 0, 2*page, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the ring's positions: %w", err)
	}
	s.pos = append(s.pos, b)
	s.rings = append(s.rings, kclock.Ring{Cons: (*uint64)(unsafe.Pointer(&b[0])), Prod: (*uint64)(unsafe.Pointer(&b[page]))})
	return nil
}

// RingPositions are the rings' positions for kclock.SleepIdle. They are
// valid until Close: whoever waits on them stops first.
func (s *SyncMaps) RingPositions() []kclock.Ring { return s.rings }

// Close stops reading; the rings stay with the outer map.
func (s *SyncMaps) Close() {
	for _, r := range s.readers {
		r.Close()
	}
	s.readers = nil
	for _, b := range s.pos {
		unix.Munmap(b)
	}
	s.pos, s.rings = nil, nil
	if s.owned {
		s.closeMaps()
	}
}

// recSize is struct sync_rec's size; the layout test checks the offsets.
const recSize = 12 + len(SyncRec{}.Key)

// Drain reads every record that is in the rings now, without waiting
// (the programs never wake anyone), and hands each to fn.
func (s *SyncMaps) Drain(fn func(*SyncRec)) (int, error) {
	var (
		n   int
		rec ringbuf.Record
		sr  SyncRec
	)
	s.nearFull = false
	for cpu, r := range s.readers {
		// An empty ring is seen in its shared pages, without a syscall:
		// an idle daemon drains every CPU's ring a hundred times a second.
		avail := r.AvailableBytes()
		if avail == 0 {
			continue
		}
		// Only the drain consumes: a ring that refused a record since the
		// last drain is still (nearly) full now.
		if avail > r.BufferSize()-2*(recSize+ringbufHeader) {
			s.nearFull = true
		}
		r.SetDeadline(time.Now())
		for {
			err := r.ReadInto(&rec)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("drain ring of cpu %d: %w", cpu, err)
			}
			// By hand: encoding/binary's reflection was a tenth of the
			// primary's CPU at a million records a second.
			raw := rec.RawSample
			if len(raw) < recSize {
				return n, fmt.Errorf("ring of cpu %d: a record tandem did not write (%d bytes)", cpu, len(raw))
			}
			sr.MapId = binary.NativeEndian.Uint32(raw[0:])
			sr.Op = binary.NativeEndian.Uint32(raw[4:])
			sr.KeyLen = binary.NativeEndian.Uint32(raw[8:])
			if sr.KeyLen > uint32(len(sr.Key)) {
				return n, fmt.Errorf("ring of cpu %d: a record with a %d-byte key", cpu, sr.KeyLen)
			}
			copy(sr.Key[:], raw[12:12+len(sr.Key)])
			fn(&sr)
			n++
		}
	}
	return n, nil
}

// ringbufHeader is the kernel's per-record header in a ring buffer.
const ringbufHeader = 8

// NearFull says whether the last Drain found a ring that may have refused
// a record: only then can the overflow counts have moved (besides a CPU
// without a ring, which a periodic read catches).
func (s *SyncMaps) NearFull() bool { return s.nearFull }

// AdvanceEpoch moves the drain epoch on, which un-queues every entry
// queued before: changes from now on queue their entries again.
func (s *SyncMaps) AdvanceEpoch() (uint64, error) {
	var epoch uint64
	if err := s.Epoch.Lookup(uint32(0), &epoch); err != nil {
		return 0, fmt.Errorf("read epoch: %w", err)
	}
	epoch++
	if err := s.Epoch.Put(uint32(0), epoch); err != nil {
		return 0, fmt.Errorf("advance epoch: %w", err)
	}
	return epoch, nil
}

// Overflows returns, per map id, how many records found a full ring.
func (s *SyncMaps) Overflows() ([]uint64, error) {
	out := make([]uint64, s.Overflow.MaxEntries())
	// One batch read, not a lookup per map id: the drain reads this every
	// tick, idle or not.
	if ncpu, err := ebpf.PossibleCPU(); err == nil {
		keys := make([]uint32, len(out))
		vals := make([]uint64, len(out)*ncpu)
		var cursor ebpf.MapBatchCursor
		n, err := s.Overflow.BatchLookup(&cursor, keys, vals, nil)
		if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
			for i := 0; i < n; i++ {
				if int(keys[i]) < len(out) {
					for _, v := range vals[i*ncpu : (i+1)*ncpu] {
						out[keys[i]] += v
					}
				}
			}
			return out, nil
		}
	}
	// Kernels without batch operations on arrays: a lookup per id.
	for id := range out {
		var per []uint64
		if err := s.Overflow.Lookup(uint32(id), &per); err != nil {
			return nil, fmt.Errorf("read overflow of map %d: %w", id, err)
		}
		for _, n := range per {
			out[id] += n
		}
	}
	return out, nil
}

// SyncedMap is a map registered with the state sync: the id its programs
// pass to sync_mark (bpf/include/sync.h's enum sync_map_id) and its pin name.
type SyncedMap struct {
	ID   uint32
	Name string
}

// Synced lists every registered map. A daemon replicates those that are
// pinned (their program is loaded) and ignores the rest. The features
// register their maps (loader.Register with Feature.Synced; test-only
// programs from their own code), so this package names none.
var Synced []SyncedMap

// RegisterSynced adds m to Synced, once. It is meant for init functions
// (the test-only synctest program registers its map this way); it panics
// when m's id or name is already taken by another map, since map ids are
// part of the wire protocol.
func RegisterSynced(m SyncedMap) {
	for _, r := range Synced {
		if r == m {
			return
		}
		if r.ID == m.ID || r.Name == m.Name {
			panic(fmt.Sprintf("maps: synced map %s (id %d) clashes with %s (id %d)", m.Name, m.ID, r.Name, r.ID))
		}
	}
	Synced = append(Synced, m)
}

// DefaultRingBytes is each CPU's dirty ring: 64-byte records, so 65536
// changed entries per CPU per tick before the ring overflows into a rescan.
const DefaultRingBytes = 4 << 20

// RingSpec is the spec of one CPU's dirty ring of size bytes.
func RingSpec(bytes uint32) (*ebpf.MapSpec, error) {
	page := uint32(os.Getpagesize())
	if bytes < page || bytes&(bytes-1) != 0 {
		return nil, fmt.Errorf("dirty ring of %d bytes: want a power of two of at least %d (the page size)", bytes, page)
	}
	spec, err := bpf.LoadSync()
	if err != nil {
		return nil, err
	}
	inner := spec.Maps[bpf.SyncMapSyncRings].InnerMap.Copy()
	inner.MaxEntries = bytes
	return inner, nil
}

// OpenSyncMaps opens the pinned sync plumbing under pins. It fails with
// os.ErrNotExist when no program that replicates state is loaded.
func OpenSyncMaps(pins Pins) (*SyncMaps, error) {
	s := &SyncMaps{}
	for name, dst := range map[string]**ebpf.Map{
		bpf.SyncMapSyncRings:    &s.Rings,
		bpf.SyncMapSyncEpoch:    &s.Epoch,
		bpf.SyncMapSyncOverflow: &s.Overflow,
	} {
		m, err := ebpf.LoadPinnedMap(pins.Map(name), nil)
		if err != nil {
			s.closeMaps()
			return nil, fmt.Errorf("open %s: %w", pins.Map(name), err)
		}
		*dst = m
	}
	s.owned = true
	return s, nil
}

func (s *SyncMaps) closeMaps() {
	for _, m := range []*ebpf.Map{s.Rings, s.Epoch, s.Overflow} {
		if m != nil {
			m.Close()
		}
	}
}

// SyncedObjects are a registered map and its SYNC_ACCESSORS (the I/O
// buffer and the read and write programs), when they are pinned.
type SyncedObjects struct {
	Map, IO     *ebpf.Map
	Read, Write *ebpf.Program
	Deleted     *ebpf.Program // SYNC_DELETED: run after deletions, when pinned
}

// Close closes what is open.
func (o *SyncedObjects) Close() {
	for _, m := range []*ebpf.Map{o.Map, o.IO} {
		if m != nil {
			m.Close()
		}
	}
	for _, p := range []*ebpf.Program{o.Read, o.Write, o.Deleted} {
		if p != nil {
			p.Close()
		}
	}
}

// SyncIOName, SyncReadName and SyncWriteName are the pin names of a
// registered map's accessors (SYNC_ACCESSORS in bpf/include/sync.h).
func SyncIOName(m string) string    { return "sync_io_" + m }
func SyncReadName(m string) string  { return "sync_read_" + m }
func SyncWriteName(m string) string { return "sync_write_" + m }

// SyncDeletedName is the pin name of a registered map's SYNC_DELETED
// program (optional).
func SyncDeletedName(m string) string { return "sync_deleted_" + m }

// OpenSynced opens the registered maps pinned under pins, with their
// accessors where those are pinned too.
func OpenSynced(pins Pins) (map[SyncedMap]*SyncedObjects, error) {
	out := map[SyncedMap]*SyncedObjects{}
	fail := func(err error) (map[SyncedMap]*SyncedObjects, error) {
		for _, o := range out {
			o.Close()
		}
		return nil, err
	}
	for _, r := range Synced {
		m, err := ebpf.LoadPinnedMap(pins.Map(r.Name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", pins.Map(r.Name), err))
		}
		o := &SyncedObjects{Map: m}
		out[r] = o
		io, err := ebpf.LoadPinnedMap(pins.Map(SyncIOName(r.Name)), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", pins.Map(SyncIOName(r.Name)), err))
		}
		o.IO = io
		for name, dst := range map[string]**ebpf.Program{SyncReadName(r.Name): &o.Read, SyncWriteName(r.Name): &o.Write, SyncDeletedName(r.Name): &o.Deleted} {
			p, err := ebpf.LoadPinnedProgram(pins.Prog(name), nil)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fail(fmt.Errorf("open %s: %w", pins.Prog(name), err))
			}
			*dst = p
		}
	}
	return out, nil
}
