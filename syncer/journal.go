package syncer

import (
	"cmp"
	"slices"
)

// Journal keeps the most recent deltas, bounded by count and bytes, so a
// standby that reconnects after a short absence gets exactly what it
// missed (journal mode) instead of a scan.
type Journal struct {
	maxEntries, maxBytes int
	ring                 []Delta // ring[head:] is held; the rest awaits compaction
	head                 int
	bytes                int
}

// NewJournal holds at most maxEntries deltas and maxBytes of keys and values.
func NewJournal(maxEntries, maxBytes int) *Journal {
	return &Journal{maxEntries: maxEntries, maxBytes: maxBytes}
}

// Add records d, dropping the oldest deltas past the bounds.
// Dropping is amortised O(1): the held part moves down only once the
// dropped prefix is as long as it.
func (j *Journal) Add(d Delta) {
	j.ring = append(j.ring, d)
	j.bytes += len(d.Key) + len(d.Value)
	for j.head < len(j.ring) && (len(j.ring)-j.head > j.maxEntries || j.bytes > j.maxBytes) {
		j.bytes -= len(j.ring[j.head].Key) + len(j.ring[j.head].Value)
		j.ring[j.head] = Delta{}
		j.head++
	}
	if j.head > 0 && j.head >= len(j.ring)-j.head {
		n := copy(j.ring, j.ring[j.head:])
		clear(j.ring[n:])
		j.ring, j.head = j.ring[:n], 0
	}
}

// Oldest is the sequence of the oldest delta held, 0 when empty.
func (j *Journal) Oldest() uint64 {
	if j.Len() == 0 {
		return 0
	}
	return j.ring[j.head].Seq
}

// Len and Bytes report the journal's size.
func (j *Journal) Len() int   { return len(j.ring) - j.head }
func (j *Journal) Bytes() int { return j.bytes }

// From returns the deltas with Seq >= seq, or false when the journal no
// longer reaches back that far.
func (j *Journal) From(seq uint64) ([]Delta, bool) {
	held := j.ring[j.head:]
	if len(held) == 0 || seq < held[0].Seq {
		return nil, false
	}
	// Sequence numbers rise: binary search.
	i, _ := slices.BinarySearchFunc(held, seq, func(d Delta, s uint64) int { return cmp.Compare(d.Seq, s) })
	return held[i:], true
}
