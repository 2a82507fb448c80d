package syncer

import (
	"encoding/binary"
	"hash/maphash"
	"testing"

	"github.com/tandem-net/tandem/maps"
)

// TestPendSetCoalesces: the tick's set names each entry (map and key) once,
// in the order of its first record, across the table's growth; the same
// key in another map is another entry.
func TestPendSetCoalesces(t *testing.T) {
	var p pendSet
	seed := maphash.MakeSeed()
	rec := func(m, k uint32) *maps.SyncRec {
		r := &maps.SyncRec{MapId: m, KeyLen: 4}
		binary.NativeEndian.PutUint32(r.Key[:], k)
		return r
	}
	const n = 100_000
	for round := range 3 { // every record three times: still one entry each
		for k := range uint32(n) {
			p.add(seed, rec(1+k%2, k/2))
		}
		if len(p.pend) != n {
			t.Fatalf("round %d: %d entries, want %d", round, len(p.pend), n)
		}
	}
	for i, q := range p.pend {
		k := uint32(i)
		if q.m != 1+k%2 || binary.NativeEndian.Uint32(p.slab[q.off:q.off+q.len]) != k/2 {
			t.Fatalf("entry %d: map %d key %x, want map %d key %d", i, q.m, p.slab[q.off:q.off+q.len], 1+k%2, k/2)
		}
	}
	p.reset()
	p.add(seed, rec(1, 7))
	if len(p.pend) != 1 {
		t.Fatalf("after reset: %d entries, want 1", len(p.pend))
	}
}
