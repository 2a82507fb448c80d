package syncer

// Journal keeps the most recent deltas, bounded by count and bytes, so a
// standby that reconnects after a short absence gets exactly what it
// missed (journal mode) instead of a scan.
type Journal struct {
	maxEntries, maxBytes int
	ring                 []Delta
	bytes                int
}

// NewJournal holds at most maxEntries deltas and maxBytes of keys and values.
func NewJournal(maxEntries, maxBytes int) *Journal {
	return &Journal{maxEntries: maxEntries, maxBytes: maxBytes}
}

// Add records d, dropping the oldest deltas past the bounds.
func (j *Journal) Add(d Delta) {
	j.ring = append(j.ring, d)
	j.bytes += len(d.Key) + len(d.Value)
	drop := 0
	for drop < len(j.ring) && (len(j.ring)-drop > j.maxEntries || j.bytes > j.maxBytes) {
		j.bytes -= len(j.ring[drop].Key) + len(j.ring[drop].Value)
		drop++
	}
	if drop > 0 {
		j.ring = append(j.ring[:0:0], j.ring[drop:]...)
	}
}

// Oldest is the sequence of the oldest delta held, 0 when empty.
func (j *Journal) Oldest() uint64 {
	if len(j.ring) == 0 {
		return 0
	}
	return j.ring[0].Seq
}

// Len and Bytes report the journal's size.
func (j *Journal) Len() int   { return len(j.ring) }
func (j *Journal) Bytes() int { return j.bytes }

// From returns the deltas with Seq >= seq, or false when the journal no
// longer reaches back that far.
func (j *Journal) From(seq uint64) ([]Delta, bool) {
	if len(j.ring) == 0 || seq < j.ring[0].Seq {
		return nil, false
	}
	for i, d := range j.ring {
		if d.Seq >= seq {
			return j.ring[i:], true
		}
	}
	return nil, true
}
