package syncer

import (
	"cmp"
	"slices"
)

// Journal keeps the most recent deltas, bounded by count and bytes, so a
// standby that reconnects after a short absence gets exactly what it
// missed (journal mode) instead of a scan.
//
// The deltas' keys and values are copied into one slab and indexed by
// records without pointers: a journal of 256k Deltas (each two slices)
// was a write barrier per append and a GC scan of every entry, a sixth
// of the primary's CPU at a million deltas a second.
type Journal struct {
	maxEntries, maxBytes int
	ring                 []jrec // ring[head:] is held; the rest awaits compaction
	head                 int
	slab                 []byte // the held records' keys and values, from base on
	base                 uint64 // the slab offset of slab[0]
	bytes                int
}

// jrec is one delta in the journal; its key and value are at off in the
// slab (an offset that counts from the journal's start, never reused).
type jrec struct {
	seq        uint64
	off        uint64
	m          uint32
	vlen       uint32
	klen       uint16
	op         Op
	noKey, noV bool // nil (not empty) key or value: From gives them back so
}

// NewJournal holds at most maxEntries deltas and maxBytes of keys and values.
func NewJournal(maxEntries, maxBytes int) *Journal {
	return &Journal{maxEntries: maxEntries, maxBytes: maxBytes}
}

// Add records d, dropping the oldest deltas past the bounds.
// Dropping is amortised O(1): the held part moves down only once the
// dropped prefix is as long as it.
func (j *Journal) Add(d Delta) {
	j.ring = append(j.ring, jrec{seq: d.Seq, off: j.base + uint64(len(j.slab)), m: d.Map, vlen: uint32(len(d.Value)),
		klen: uint16(len(d.Key)), op: d.Op, noKey: d.Key == nil, noV: d.Value == nil})
	j.slab = append(j.slab, d.Key...)
	j.slab = append(j.slab, d.Value...)
	j.bytes += len(d.Key) + len(d.Value)
	for j.head < len(j.ring) && (len(j.ring)-j.head > j.maxEntries || j.bytes > j.maxBytes) {
		r := j.ring[j.head]
		j.bytes -= int(r.klen) + int(r.vlen)
		j.head++
	}
	if j.head > 0 && j.head >= len(j.ring)-j.head {
		n := copy(j.ring, j.ring[j.head:])
		j.ring, j.head = j.ring[:n], 0
		// The slab moves down with it: what the held records name starts
		// at the first one.
		start := j.base + uint64(len(j.slab))
		if n > 0 {
			start = j.ring[0].off
		}
		m := copy(j.slab, j.slab[start-j.base:])
		j.slab, j.base = j.slab[:m], start
	}
}

// Oldest is the sequence of the oldest delta held, 0 when empty.
func (j *Journal) Oldest() uint64 {
	if j.Len() == 0 {
		return 0
	}
	return j.ring[j.head].seq
}

// Len and Bytes report the journal's size.
func (j *Journal) Len() int   { return len(j.ring) - j.head }
func (j *Journal) Bytes() int { return j.bytes }

// From returns the deltas with Seq >= seq, or false when the journal no
// longer reaches back that far. Their keys and values are copies.
func (j *Journal) From(seq uint64) ([]Delta, bool) {
	held := j.ring[j.head:]
	if len(held) == 0 || seq < held[0].seq {
		return nil, false
	}
	// Sequence numbers rise: binary search.
	i, _ := slices.BinarySearchFunc(held, seq, func(r jrec, s uint64) int { return cmp.Compare(r.seq, s) })
	held = held[i:]
	if len(held) == 0 {
		return nil, true
	}
	from := held[0].off - j.base
	data := slices.Clone(j.slab[from:])
	out := make([]Delta, len(held))
	for k, r := range held {
		o := r.off - j.base - from
		d := Delta{Seq: r.seq, Map: r.m, Op: r.op}
		if !r.noKey {
			d.Key = data[o : o+uint64(r.klen) : o+uint64(r.klen)]
		}
		o += uint64(r.klen)
		if !r.noV {
			d.Value = data[o : o+uint64(r.vlen) : o+uint64(r.vlen)]
		}
		out[k] = d
	}
	return out, true
}
