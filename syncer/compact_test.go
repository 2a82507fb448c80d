package syncer

import (
	"fmt"
	"hash/maphash"
	"slices"
	"testing"
)

// TestCompactKeepsLastOfEach: compaction keeps, in sequence order, the
// last delta of each entry (map and key), whatever entries share a key
// in other maps, so changedAfter names the same entries before and after.
func TestCompactKeepsLastOfEach(t *testing.T) {
	e := &Engine{seed: maphash.MakeSeed(), compactAt: 1 << 20}
	var want []entryKey
	seq := uint64(0)
	add := func(m uint32, key string) {
		seq++
		e.logSent(seq, m, []byte(key))
	}
	// 500 entries (k and k+500 name the same map and key), each named
	// six times; the last deltas are those of round 2, k >= 500.
	for round := range 3 {
		for k := range 1000 {
			add(uint32(1+k%2), fmt.Sprint(k%500))
			if round == 2 && k >= 500 {
				want = append(want, entryKey{uint32(1 + k%2), fmt.Sprint(k % 500)})
			}
		}
	}
	before := e.changedAfter(0)
	e.compact()
	after := e.changedAfter(0)
	if !slices.Equal(before, after) {
		t.Fatalf("changedAfter(0) differs after compaction: %d entries before, %d after", len(before), len(after))
	}
	if len(e.sent) != len(before) {
		t.Fatalf("%d records kept, want one per entry (%d)", len(e.sent), len(before))
	}
	if !slices.Equal(after, want) {
		t.Fatalf("kept %v..., want the last delta of each entry in order %v...", after[:3], want[:3])
	}
	for i := 1; i < len(e.sent); i++ {
		if e.sent[i].seq <= e.sent[i-1].seq {
			t.Fatalf("record %d: seq %d after %d: out of order", i, e.sent[i].seq, e.sent[i-1].seq)
		}
	}
}
