package syncer

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"reflect"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/maps"
)

// Op is what a delta does to its entry.
type Op uint8

const (
	OpUpsert        Op = 1 // set the entry to Value (if Value's version is newer)
	OpDelete        Op = 2 // a tombstone
	OpSnapshotBegin Op = 3 // a full copy of map Map follows
	OpSnapshotEnd   Op = 4 // the copy is complete: entries it did not name go
	OpResync        Op = 5 // a resync of generation Value starts: the next delta is Seq+1
	OpResyncDone    Op = 6 // the resync of generation Value is complete
)

// Delta is one change on its way to the peer.
type Delta struct {
	Seq   uint64
	Map   uint32
	Op    Op
	Key   []byte
	Value []byte
}

// Map is a registered map: the id its programs pass to sync_mark, and the
// map. Its values start with struct sync_hdr.
type Map struct {
	ID   uint32
	Name string
	M    *ebpf.Map
	// The map's SYNC_ACCESSORS (bpf/include/sync.h), when it has them:
	// batched in-kernel reads for the primary, version-checked writes for
	// the standby. Without them: a syscall per entry.
	Read, Write *ebpf.Program
	IO          *ebpf.Map
	// Deleted (SYNC_DELETED, optional) runs after entries were deleted
	// from the map: a feature that caches what it derives from the map
	// (migrate's forward caches) learns of it, as its SYNC_WRITE_HOOK
	// learns of the writes.
	Deleted *ebpf.Program
}

// afterDelete runs m's Deleted program, when it has one.
func afterDelete(m Map) error {
	if m.Deleted == nil {
		return nil
	}
	if _, err := m.Deleted.Run(&ebpf.RunOptions{}); err != nil {
		return fmt.Errorf("after deleting from %s: %w", m.Name, err)
	}
	return nil
}

type entryKey struct {
	m uint32
	k string
}

// pendEntry is an entry the rings named this tick: its map and its key,
// held in the tick's key slab.
type pendEntry struct {
	m        uint32
	off, len uint32
	h        uint64 // the hash of map and key: the table grows without hashing again
}

// pendSet holds the entries the rings named, in drain order, coalesced
// by entry (one delta per entry per tick): their keys are appended to one
// slab a tick (the deltas share it, so it is never reused), and an
// open-addressed table of indexes finds an entry by a hash of its map and
// key (keys compared). No allocation and no string per record: at a
// million records a second, a map keyed by a string of each key and the
// garbage it made were half of the primary's CPU, and a Go map of hashes
// (a lookup, an insert, its growth) was still a fifth of it.
type pendSet struct {
	pend  []pendEntry
	slab  []byte
	table []int32 // index into pend + 1; 0 is a free slot. Power-of-two size.
}

func (p *pendSet) add(seed maphash.Seed, r *maps.SyncRec) {
	key := r.Key[:r.KeyLen]
	h := maphash.Bytes(seed, key) ^ uint64(r.MapId)*0x9e3779b97f4a7c15
	if 2*(len(p.pend)+1) > len(p.table) {
		p.grow()
	}
	mask := uint64(len(p.table) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		j := p.table[i]
		if j == 0 {
			p.table[i] = int32(len(p.pend)) + 1
			p.pend = append(p.pend, pendEntry{r.MapId, uint32(len(p.slab)), uint32(len(key)), h})
			p.slab = append(p.slab, key...)
			return
		}
		if q := p.pend[j-1]; q.h == h && q.m == r.MapId && bytes.Equal(p.slab[q.off:q.off+q.len], key) {
			return // queued already this tick
		}
	}
}

// grow doubles the table (at most half full) and places every entry again.
func (p *pendSet) grow() {
	n := max(1024, 2*len(p.table))
	for 2*(len(p.pend)+1) > n {
		n *= 2
	}
	p.table = make([]int32, n)
	mask := uint64(n - 1)
	for k, q := range p.pend {
		i := q.h & mask
		for p.table[i] != 0 {
			i = (i + 1) & mask
		}
		p.table[i] = int32(k) + 1
	}
}

// reset empties p; the deltas keep the old slab.
func (p *pendSet) reset() {
	if len(p.table) > 1<<17 {
		p.table = nil // clearing costs the table's size, every tick after
	} else {
		clear(p.table)
	}
	p.pend, p.slab = p.pend[:0], nil
}

// drainEvery: a tick or resync that sends drains the rings into the next
// tick's set every this many deltas. A 4 MiB ring holds 65,536 records;
// sending this many takes a few milliseconds.
const drainEvery = 8192

// Engine turns what the dirty rings say into deltas, one tick at a time.
type Engine struct {
	sync *maps.SyncMaps
	maps map[uint32]Map
	// cur: the entries the rings named for this tick. next: those a
	// drain found while this tick (or a resync) was sending, for the
	// next tick: a long tick drains the rings as it goes, so they do not
	// overflow into a whole-map rescan (which took long enough for the
	// rings to overflow again).
	cur, next  pendSet
	sinceDrain int // deltas sent since the last drain
	seed       maphash.Seed
	over       []uint64 // overflow counts already answered with a rescan
	seq        uint64
	// sent logs, in sequence order, which entry each delta named: an
	// incremental resync sends the entries named after the standby's
	// checkpoint. An append per delta (no hashing); compacted to the last
	// delta of each entry when it doubles.
	sent      []sentRec
	sentKeys  []byte
	compactAt int
	kio       map[uint32]*kio // maps read in the kernel in batches
	drains    uint64
	checkOver bool     // the next tick reads the overflow counts (a flush)
	rescanned []string // the maps the last tick sent whole for an overflow
	Stats     Stats
}

// overflowCheckEvery: the overflow counts are read after a drain that
// found a ring nearly full (the only way a record is refused) and, as a
// backstop, every this many drains (a CPU without a ring counts too).
const overflowCheckEvery = 100

// overflows reads the ring overflow counts when they may have moved; else
// it returns the last ones.
func (e *Engine) overflows() ([]uint64, error) {
	e.drains++
	check := e.checkOver
	e.checkOver = false
	if !check && e.over != nil && !e.sync.NearFull() && e.drains%overflowCheckEvery != 0 {
		return e.over, nil
	}
	return e.sync.Overflows()
}

// Stats count what the engine did.
type Stats struct {
	Ticks, Records, Deltas, UnknownMap uint64
	Rescans                            uint64 // whole maps sent: overflow rescans and full resyncs
	OverflowRescans                    uint64 // of which answered a ring overflow
	BatchReads                         uint64 // ticks that read a map with one batch scan
	KernelReads                        uint64 // entries read by a map's in-kernel reader
}

// NewEngine drives s for the registered maps ms.
func NewEngine(s *maps.SyncMaps, ms ...Map) (*Engine, error) {
	e := &Engine{sync: s, maps: map[uint32]Map{}, seed: maphash.MakeSeed(), compactAt: 1 << 20, kio: map[uint32]*kio{}}
	for _, m := range ms {
		if m.ID >= s.Overflow.MaxEntries() {
			return nil, fmt.Errorf("map %s: id %d past the %d the datapath counts", m.Name, m.ID, s.Overflow.MaxEntries())
		}
		if m.M.ValueSize() < 16 {
			return nil, fmt.Errorf("map %s: value of %d bytes cannot start with struct sync_hdr", m.Name, m.M.ValueSize())
		}
		e.maps[m.ID] = m
		if m.Read != nil && m.IO != nil {
			k, err := newKIO(m)
			if err != nil {
				return nil, err
			}
			e.kio[m.ID] = k
		}
	}
	over, err := s.Overflows()
	if err != nil {
		return nil, err
	}
	e.over = over
	return e, nil
}

// CheckOverflows makes the next Tick read the rings' overflow counts,
// whatever the rings look like: a flush then answers every overflow
// before it, by a rescan in that tick.
func (e *Engine) CheckOverflows() { e.checkOver = true }

// Tick drains the rings, un-queues what it drained (one epoch advance),
// then reads each changed entry's current value and emits a delta for it;
// a map whose records overflowed a ring is sent whole instead.
func (e *Engine) Tick(emit func(Delta) error) error {
	e.Stats.Ticks++
	// What the last tick drained while it sent is this tick's, as is what
	// the rings hold now.
	e.cur, e.next = e.next, e.cur
	carried := len(e.cur.pend)
	n, err := e.sync.Drain(func(r *maps.SyncRec) { e.cur.add(e.seed, r) })
	e.sinceDrain = 0
	e.Stats.Records += uint64(n)
	if err != nil {
		return err
	}
	over, err := e.overflows()
	if err != nil {
		return err
	}
	var rescan []uint32
	for id, n := range over {
		if n != e.over[id] {
			rescan = append(rescan, uint32(id))
		}
	}
	e.over = over
	// Clear every drained entry's queued flag at once; reads come after,
	// so a change from here on is either read now or queued again. With
	// nothing drained and no overflow nothing is queued under this epoch
	// (an entry queued since the drain is in a ring: the next tick drains
	// it and advances), so an idle tick costs no write.
	if n > 0 || carried > 0 || len(rescan) > 0 {
		if _, err := e.sync.AdvanceEpoch(); err != nil {
			return err
		}
	}
	if len(e.cur.pend) == 0 && len(rescan) == 0 {
		return nil // an idle tick: nothing to read or send
	}
	// The tick's deltas keep their keys in the slab: the next tick
	// starts another (appending never moves what they hold).
	pend, slab := e.cur.pend, e.cur.slab
	keyOf := func(p pendEntry) []byte { return slab[p.off : p.off+p.len : p.off+p.len] }
	// Where a large share of a map changed, one batch scan of the map reads
	// the values in far fewer syscalls than a lookup per entry.
	perMap := map[uint32]int{}
	for _, k := range pend {
		perMap[k.m]++
	}
	scanned := map[uint32]map[string][]byte{}
	for id, n := range perMap {
		m, ok := e.maps[id]
		if !ok || slices.Contains(rescan, id) || n < scanThreshold(m.M) || e.kio[id] != nil {
			continue
		}
		want := make(map[string]bool, n)
		for _, p := range pend {
			if p.m == id {
				want[string(keyOf(p))] = true
			}
		}
		vals := make(map[string][]byte, n)
		err := batchScan(m.M, func(key, val []byte) error {
			if want[string(key)] {
				vals[string(key)] = val
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("read %s: %w", m.Name, err)
		}
		scanned[id] = vals
		e.Stats.BatchReads++
	}
	// Read and sent in windows: a window's values are read just before
	// it is sent, and sending drains the rings as it goes (drainEvery),
	// so a tick of a burst never holds them undrained for long.
	for start := 0; start < len(pend); start += drainEvery {
		if err := e.sendWindow(pend[start:min(start+drainEvery, len(pend))], keyOf, rescan, scanned, emit); err != nil {
			return err
		}
	}
	// Sent: what failed before here is sent again by the next tick.
	e.cur.reset()
	e.rescanned = e.rescanned[:0]
	for _, id := range rescan {
		e.Stats.OverflowRescans++
		if m, ok := e.maps[id]; ok {
			e.rescanned = append(e.rescanned, m.Name)
		}
		if err := e.rescan(id, emit); err != nil {
			return err
		}
	}
	return nil
}

// sendWindow reads the values of the entries w names and sends them.
func (e *Engine) sendWindow(pend []pendEntry, keyOf func(pendEntry) []byte, rescan []uint32, scanned map[uint32]map[string][]byte, emit func(Delta) error) error {
	// Maps with in-kernel readers: their keys in order, read in batches.
	var pos []int
	kvals := map[uint32][][]byte{}
	if len(e.kio) > 0 {
		pos = make([]int, len(pend))
		kkeys := map[uint32][][]byte{}
		for i, k := range pend {
			if e.kio[k.m] != nil && !slices.Contains(rescan, k.m) {
				pos[i] = len(kkeys[k.m])
				kkeys[k.m] = append(kkeys[k.m], keyOf(k))
			}
		}
		for id, keys := range kkeys {
			vals, err := e.kio[id].read(keys)
			if err != nil {
				return err
			}
			kvals[id] = vals
			e.Stats.KernelReads += uint64(len(keys))
		}
	}
	for i, k := range pend {
		if slices.Contains(rescan, k.m) {
			continue // the rescan sends it
		}
		m, ok := e.maps[k.m]
		if !ok {
			e.Stats.UnknownMap++
			continue
		}
		d := Delta{Map: k.m, Key: keyOf(k), Op: OpUpsert}
		if vals, ok := kvals[k.m]; ok {
			if d.Value = vals[pos[i]]; d.Value == nil {
				d.Op = OpDelete // deleted since: the tombstone is the truth
			}
		} else if vals, ok := scanned[k.m]; ok {
			if d.Value = vals[string(d.Key)]; d.Value == nil {
				d.Op = OpDelete
			}
		} else {
			val := make([]byte, m.M.ValueSize())
			err := m.M.Lookup(d.Key, val)
			switch {
			case errors.Is(err, ebpf.ErrKeyNotExist):
				d.Op = OpDelete // deleted since: the tombstone is the truth
			case err != nil:
				return fmt.Errorf("read %s: %w", m.Name, err)
			default:
				d.Value = val
			}
		}
		if err := e.send(emit, d); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) send(emit func(Delta) error, d Delta) error {
	if e.sinceDrain++; e.sinceDrain >= drainEvery {
		if err := e.drainNext(); err != nil {
			return err
		}
	}
	e.seq++
	d.Seq = e.seq
	e.Stats.Deltas++
	if d.Op == OpUpsert || d.Op == OpDelete {
		e.logSent(d.Seq, d.Map, d.Key)
		if len(e.sent) > e.compactAt {
			e.compact()
		}
	}
	return emit(d)
}

// drainNext drains the rings into the next tick's set while a tick or a
// resync sends. Nothing is un-queued (the epoch moves at the next tick,
// after its own drain, and its values are read after that), so an entry
// found here is sent by the next tick, whatever this one sends of it.
func (e *Engine) drainNext() error {
	e.sinceDrain = 0
	n, err := e.sync.Drain(func(r *maps.SyncRec) { e.next.add(e.seed, r) })
	e.Stats.Records += uint64(n)
	if e.sync.NearFull() {
		e.checkOver = true // the next tick's drain may not see it full
	}
	return err
}

// sentRec names the entry of a delta: its key is in the engine's
// sentKeys slab. No pointers: a log of millions of records is nothing for
// the GC to scan (with the delta's own key it was, and each append a
// write barrier).
type sentRec struct {
	seq      uint64
	m        uint32
	off, len uint32
}

func (e *Engine) logSent(seq uint64, m uint32, key []byte) {
	e.sent = append(e.sent, sentRec{seq, m, uint32(len(e.sentKeys)), uint32(len(key))})
	e.sentKeys = append(e.sentKeys, key...)
}

func (e *Engine) key(r sentRec) []byte { return e.sentKeys[r.off : r.off+r.len : r.off+r.len] }

func (e *Engine) entry(r sentRec) entryKey { return entryKey{r.m, string(e.key(r))} }

// compact keeps the last record of each entry, in sequence order,
// their keys copied to a new slab (the old one held every key sent).
// Entries are found by a 64-bit hash, their keys compared; the rare
// entries whose hash another entry has are kept in an exact set. (A set
// of strings was a fifth of the primary's CPU in a full resync.)
func (e *Engine) compact() {
	seen := make(map[uint64]int, len(e.sent)/2)
	var clash map[entryKey]bool
	keep := len(e.sent)
	size := 0
	for i := len(e.sent) - 1; i >= 0; i-- {
		r := e.sent[i]
		h := maphash.Bytes(e.seed, e.key(r)) ^ uint64(r.m)*0x9e3779b97f4a7c15
		if j, ok := seen[h]; ok {
			if k := e.sent[j]; k.m == r.m && bytes.Equal(e.key(k), e.key(r)) {
				continue // a later delta of this entry is kept
			}
			if clash == nil {
				clash = map[entryKey]bool{}
			}
			if clash[e.entry(r)] {
				continue
			}
			clash[e.entry(r)] = true
		} else {
			seen[h] = keep - 1 // where it is kept
		}
		keep--
		e.sent[keep] = r
		size += int(r.len)
	}
	n := copy(e.sent, e.sent[keep:])
	clear(e.sent[n:])
	e.sent = e.sent[:n]
	slab := make([]byte, 0, size)
	for i := range e.sent {
		off := len(slab)
		slab = append(slab, e.key(e.sent[i])...)
		e.sent[i].off = uint32(off)
	}
	e.sentKeys = slab
	e.compactAt = max(1<<20, 2*n)
}

// changedAfter lists the entries named by a delta after seq, each once,
// in the order of their last delta.
func (e *Engine) changedAfter(seq uint64) []entryKey {
	i, _ := slices.BinarySearchFunc(e.sent, seq+1, func(r sentRec, s uint64) int { return cmp.Compare(r.seq, s) })
	// As in compact: by hash, keys compared, an exact set for clashes.
	seen := map[uint64]int{}
	var clash map[entryKey]bool
	var keys []entryKey
	for j := len(e.sent) - 1; j >= i; j-- {
		r := e.sent[j]
		h := maphash.Bytes(e.seed, e.key(r)) ^ uint64(r.m)*0x9e3779b97f4a7c15
		if k, ok := seen[h]; ok {
			if o := e.sent[k]; o.m == r.m && bytes.Equal(e.key(o), e.key(r)) {
				continue
			}
			if clash == nil {
				clash = map[entryKey]bool{}
			}
			if clash[e.entry(r)] {
				continue
			}
			clash[e.entry(r)] = true
		} else {
			seen[h] = j
		}
		keys = append(keys, e.entry(r))
	}
	slices.Reverse(keys)
	return keys
}

// Seq is the sequence number of the last delta emitted.
func (e *Engine) Seq() uint64 { return e.seq }

// SetSeq continues numbering after seq (a restarted primary, from its
// metadata).
func (e *Engine) SetSeq(seq uint64) { e.seq = seq }

// Incremental sends, with their values read now, the entries whose last
// delta came after seq: what a standby that applied up to seq is missing.
func (e *Engine) Incremental(after uint64, emit func(Delta) error) (int, error) {
	keys := e.changedAfter(after)
	// In chunks, each read and then sent: the standby hears from the
	// start (reading a million values first kept it waiting past its
	// idle timeout on a loaded machine), and each value is read closer
	// to when it is sent.
	const chunk = 1 << 16
	for start := 0; start < len(keys); start += chunk {
		if err := e.incremental(keys[start:min(start+chunk, len(keys))], emit); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

func (e *Engine) incremental(keys []entryKey, emit func(Delta) error) error {
	// Values read now, in batches where the map has a reader.
	byMap := map[uint32][][]byte{}
	for _, k := range keys {
		if e.kio[k.m] != nil {
			byMap[k.m] = append(byMap[k.m], []byte(k.k))
		}
	}
	kvals := map[uint32][][]byte{}
	for id, ks := range byMap {
		vals, err := e.kio[id].read(ks)
		if err != nil {
			return err
		}
		kvals[id] = vals
	}
	next := map[uint32]int{}
	for _, k := range keys {
		m, ok := e.maps[k.m]
		if !ok {
			continue
		}
		d := Delta{Map: k.m, Key: []byte(k.k)}
		if vals, ok := kvals[k.m]; ok {
			d.Value = vals[next[k.m]]
			next[k.m]++
			d.Op = OpUpsert
			if d.Value == nil {
				d.Op = OpDelete
			}
		} else {
			val := make([]byte, m.M.ValueSize())
			switch err := m.M.Lookup(d.Key, val); {
			case errors.Is(err, ebpf.ErrKeyNotExist):
				d.Op = OpDelete
			case err != nil:
				return fmt.Errorf("read %s: %w", m.Name, err)
			default:
				d.Op, d.Value = OpUpsert, val
			}
		}
		if err := e.send(emit, d); err != nil {
			return err
		}
	}
	return nil
}

// Full sends every registered map whole.
func (e *Engine) Full(emit func(Delta) error) error {
	ids := make([]uint32, 0, len(e.maps))
	for id := range e.maps {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := e.rescan(id, emit); err != nil {
			return err
		}
	}
	return nil
}

// Marker emits a resync marker for generation gen.
func (e *Engine) Marker(op Op, gen uint64, emit func(Delta) error) error {
	return e.send(emit, Delta{Op: op, Value: binary.BigEndian.AppendUint64(nil, gen)})
}

// rescan sends a whole map between snapshot markers.
// Rescanned names the maps the last Tick sent whole because their ring
// records overflowed.
func (e *Engine) Rescanned() []string { return append([]string(nil), e.rescanned...) }

func (e *Engine) rescan(id uint32, emit func(Delta) error) error {
	m, ok := e.maps[id]
	if !ok {
		return nil
	}
	e.Stats.Rescans++
	if err := e.send(emit, Delta{Map: id, Op: OpSnapshotBegin}); err != nil {
		return err
	}
	err := batchScan(m.M, func(key, val []byte) error {
		return e.send(emit, Delta{Map: id, Op: OpUpsert, Key: key, Value: val})
	})
	if err != nil {
		return fmt.Errorf("rescan %s: %w", m.Name, err)
	}
	return e.send(emit, Delta{Map: id, Op: OpSnapshotEnd})
}

// scanThreshold is how many changed entries make a batch scan of m cheaper
// than a lookup each: a lookup is one syscall, a scan one per 4096 slots.
func scanThreshold(m *ebpf.Map) int {
	return max(4096, int(m.MaxEntries()/32))
}

// batchScan reads a whole map with BPF_MAP_LOOKUP_BATCH, thousands of
// entries a syscall, falling back to iteration where the kernel or map
// type has no batch lookup. fn gets copies it may keep.
func batchScan(m *ebpf.Map, fn func(key, val []byte) error) error {
	const chunk = 4096
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	keys := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(ks, reflect.TypeFor[byte]())), chunk, chunk)
	vals := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(vs, reflect.TypeFor[byte]())), chunk, chunk)
	// The arrays' bytes, in one piece each: a chunk's keys and values
	// are copied out with two allocations, not two per entry.
	rawKeys := unsafe.Slice((*byte)(keys.UnsafePointer()), chunk*ks)
	rawVals := unsafe.Slice((*byte)(vals.UnsafePointer()), chunk*vs)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys.Interface(), vals.Interface(), nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			return iterScan(m, fn)
		}
		kslab, vslab := slices.Clone(rawKeys[:n*ks]), slices.Clone(rawVals[:n*vs])
		for i := range n {
			k := kslab[i*ks : (i+1)*ks : (i+1)*ks]
			v := vslab[i*vs : (i+1)*vs : (i+1)*vs]
			if ferr := fn(k, v); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func iterScan(m *ebpf.Map, fn func(key, val []byte) error) error {
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&key, &val) {
		if err := fn(slices.Clone(key), slices.Clone(val)); err != nil {
			return err
		}
	}
	return it.Err()
}

// Version reads the sync_hdr version at the start of a value.
func Version(value []byte) uint64 {
	if len(value) < 8 {
		return 0
	}
	return binary.NativeEndian.Uint64(value)
}

// Applier applies deltas to the peer's maps, in order, never moving an
// entry back to an older version. It keeps the version of every entry it
// wrote (read once from the map with a batch scan when it first touches
// it), so the check costs no syscall, and runs of upserts go in with one
// BPF_MAP_UPDATE_BATCH. Only the applier writes a standby's replicated
// maps, so its record of versions stays true.
type Applier struct {
	maps map[uint32]Map
	snap map[uint32]map[string]bool
	// fresh: maps that were empty when their snapshot began. Only the
	// applier writes a standby's replicated maps, so at the snapshot's
	// end such a map holds what the snapshot named and nothing else:
	// no set of a million keys to keep, no scan to find the rest.
	fresh    map[uint32]bool
	versions map[uint32]map[string]uint64
	// resyncing: between a resync's markers the primary's values are the
	// truth whatever their versions (a new primary may count lower than
	// the one before it); the version check guards streams and replays.
	resyncing bool
	kio       map[uint32]*kio // maps written in the kernel in batches
	Stats     ApplyStats
}

// ApplyStats count what the applier did.
type ApplyStats struct {
	Applied, Stale, Deleted, SnapshotDeleted uint64
}

// NewApplier applies to ms.
func NewApplier(ms ...Map) *Applier {
	a := &Applier{maps: map[uint32]Map{}, snap: map[uint32]map[string]bool{}, fresh: map[uint32]bool{}, versions: map[uint32]map[string]uint64{}, kio: map[uint32]*kio{}}
	for _, m := range ms {
		a.maps[m.ID] = m
		if m.Write != nil && m.IO != nil {
			if k, err := newKIO(m); err == nil {
				a.kio[m.ID] = k
			}
		}
	}
	return a
}

// Empty reports whether every map the applier writes is empty.
func (a *Applier) Empty() bool {
	for _, m := range a.maps {
		key := make([]byte, m.M.KeySize())
		if err := m.M.NextKey(nil, &key); err == nil {
			return false
		}
	}
	return true
}

// known returns the versions of map id's entries, reading them on first use.
func (a *Applier) known(id uint32) (map[string]uint64, error) {
	if v, ok := a.versions[id]; ok {
		return v, nil
	}
	v := map[string]uint64{}
	err := batchScan(a.maps[id].M, func(key, val []byte) error {
		v[string(key)] = Version(val)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read versions of %s: %w", a.maps[id].Name, err)
	}
	a.versions[id] = v
	return v, nil
}

// ApplyBatch applies deltas in order; runs of upserts to one map go in
// with one batch update.
func (a *Applier) ApplyBatch(ds []Delta) error {
	for i := 0; i < len(ds); {
		d := ds[i]
		if _, ok := a.maps[d.Map]; !ok || d.Op != OpUpsert {
			if err := a.Apply(d); err != nil {
				return err
			}
			i++
			continue
		}
		j := i
		for j < len(ds) && ds[j].Op == OpUpsert && ds[j].Map == d.Map {
			j++
		}
		if err := a.upserts(ds[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// upserts applies a run of upserts to one map: the stale ones are dropped,
// the rest written in one batch.
// A malformed delta ends the run with an error after the ones before it
// are applied.
func (a *Applier) upserts(ds []Delta) error {
	if len(ds) == 0 {
		return nil
	}
	m := a.maps[ds[0].Map]
	ks, vs := int(m.M.KeySize()), int(m.M.ValueSize())
	for i, d := range ds {
		if len(d.Key) != ks || len(d.Value) != vs {
			if err := a.upserts(ds[:i]); err != nil {
				return err
			}
			return fmt.Errorf("delta %d: %d/%d bytes of key/value for %s", d.Seq, len(d.Key), len(d.Value), m.Name)
		}
	}
	if k := a.kio[ds[0].Map]; k != nil {
		// The version check runs in the kernel, against what the map
		// holds now: no record of versions here, no warm-up scan.
		seen := a.snap[ds[0].Map]
		for _, d := range ds {
			if seen != nil {
				seen[string(d.Key)] = true
			}
		}
		applied, stale, err := k.write(ds, a.resyncing)
		a.Stats.Applied += uint64(applied)
		a.Stats.Stale += uint64(stale)
		return err
	}
	vers, err := a.known(ds[0].Map)
	if err != nil {
		return err
	}
	keys := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(ks, reflect.TypeFor[byte]())), 0, len(ds))
	vals := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(vs, reflect.TypeFor[byte]())), 0, len(ds))
	seen := a.snap[ds[0].Map]
	for _, d := range ds {
		if seen != nil {
			seen[string(d.Key)] = true
		}
		if cur, ok := vers[string(d.Key)]; ok && !a.resyncing && cur >= Version(d.Value) {
			a.Stats.Stale++
			continue
		}
		vers[string(d.Key)] = Version(d.Value)
		i := keys.Len()
		keys = reflect.Append(keys, reflect.Zero(keys.Type().Elem()))
		vals = reflect.Append(vals, reflect.Zero(vals.Type().Elem()))
		reflect.Copy(keys.Index(i), reflect.ValueOf(d.Key))
		reflect.Copy(vals.Index(i), reflect.ValueOf(d.Value))
		binary.NativeEndian.PutUint64(vals.Index(i).Bytes()[8:], 0) // queued_epoch is the primary's business
	}
	if keys.Len() == 0 {
		return nil
	}
	n, err := m.M.BatchUpdate(keys.Interface(), vals.Interface(), nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys.Len() {
			if err := m.M.Put(keys.Index(i).Bytes(), vals.Index(i).Bytes()); err != nil {
				return fmt.Errorf("apply to %s: %w", m.Name, err)
			}
		}
		n = keys.Len()
	} else if err != nil {
		return fmt.Errorf("apply %d deltas to %s: %w", keys.Len(), m.Name, err)
	}
	a.Stats.Applied += uint64(n)
	return nil
}

// Apply applies one delta.
func (a *Applier) Apply(d Delta) error {
	if d.Op == OpResync || d.Op == OpResyncDone {
		return nil // markers are the receiver's business
	}
	m, ok := a.maps[d.Map]
	if !ok {
		return fmt.Errorf("delta %d for unknown map %d", d.Seq, d.Map)
	}
	switch d.Op {
	case OpSnapshotBegin:
		key := make([]byte, m.M.KeySize())
		if err := m.M.NextKey(nil, &key); errors.Is(err, ebpf.ErrKeyNotExist) {
			delete(a.snap, d.Map)
			a.fresh[d.Map] = true
			return nil
		}
		delete(a.fresh, d.Map)
		a.snap[d.Map] = map[string]bool{}
		return nil
	case OpSnapshotEnd:
		if a.fresh[d.Map] {
			delete(a.fresh, d.Map)
			return nil // it was empty: everything in it now was named
		}
		seen := a.snap[d.Map]
		delete(a.snap, d.Map)
		var gone [][]byte
		err := batchScan(m.M, func(key, _ []byte) error {
			if !seen[string(key)] {
				gone = append(gone, key)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone {
			if err := m.M.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
			delete(a.versions[d.Map], string(k))
			a.Stats.SnapshotDeleted++
		}
		if len(gone) > 0 {
			return afterDelete(m)
		}
		return nil
	case OpDelete:
		if len(d.Key) != int(m.M.KeySize()) {
			return fmt.Errorf("delta %d: key of %d bytes for %s", d.Seq, len(d.Key), m.Name)
		}
		if err := m.M.Delete(d.Key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("apply delete to %s: %w", m.Name, err)
		}
		delete(a.versions[d.Map], string(d.Key))
		a.Stats.Deleted++
		return afterDelete(m)
	case OpUpsert:
		return a.upserts([]Delta{d})
	}
	return fmt.Errorf("delta %d: unknown op %d", d.Seq, d.Op)
}

// Discard drains the rings and advances the epoch without sending: a
// standby's own programs may mark entries, and its rings must not fill
// (the applier's writes from user space mark nothing).
func (e *Engine) Discard() (int, error) {
	n, err := e.sync.Drain(func(*maps.SyncRec) {})
	if err != nil {
		return n, err
	}
	over, err := e.overflows()
	if err != nil {
		return n, err
	}
	moved := !slices.Equal(over, e.over)
	e.over = over
	if n == 0 && !moved {
		return 0, nil // nothing queued under this epoch: see Tick
	}
	_, err = e.sync.AdvanceEpoch()
	return n, err
}

// Overflows is, per map id, the ring overflows seen so far.
func (e *Engine) Overflows() []uint64 { return e.over }

// Maps lists the registered maps.
func (e *Engine) Maps() []Map {
	out := make([]Map, 0, len(e.maps))
	for _, m := range e.maps {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Map) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
