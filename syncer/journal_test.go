package syncer

import (
	"bytes"
	"reflect"
	"testing"
)

func TestJournalBounds(t *testing.T) {
	cases := []struct {
		name             string
		entries, bytes   int
		add              int
		wantLen, wantOld uint64
	}{
		{"under both bounds", 100, 1 << 20, 50, 50, 1},
		{"entries bound", 100, 1 << 20, 1000, 100, 901},
		{"bytes bound (12 bytes each)", 1 << 20, 120, 1000, 10, 991},
		{"one past", 10, 1 << 20, 11, 10, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j := NewJournal(c.entries, c.bytes)
			for i := 1; i <= c.add; i++ {
				j.Add(Delta{Seq: uint64(i), Key: make([]byte, 4), Value: make([]byte, 8)})
			}
			if uint64(j.Len()) != c.wantLen || j.Oldest() != c.wantOld || j.Bytes() != int(c.wantLen)*12 {
				t.Fatalf("len %d oldest %d bytes %d; want %d, %d, %d", j.Len(), j.Oldest(), j.Bytes(), c.wantLen, c.wantOld, c.wantLen*12)
			}
			if _, ok := j.From(c.wantOld - 1); ok && c.wantOld > 1 {
				t.Fatalf("From(%d) before the oldest held", c.wantOld-1)
			}
			ds, ok := j.From(c.wantOld + 3)
			if !ok || len(ds) != int(c.wantLen)-3 || ds[0].Seq != c.wantOld+3 {
				t.Fatalf("From(%d): %d deltas, ok %v", c.wantOld+3, len(ds), ok)
			}
			if ds, ok := j.From(uint64(c.add) + 1); !ok || len(ds) != 0 {
				t.Fatalf("From past the newest: %d, %v", len(ds), ok)
			}
		})
	}
}

// Adding to a full journal costs O(1) amortised, not a copy of the journal.
func BenchmarkJournalAddFull(b *testing.B) {
	j := NewJournal(1<<18, 1<<30)
	d := Delta{Key: make([]byte, 4), Value: make([]byte, 32)}
	for i := range 1 << 18 {
		d.Seq = uint64(i)
		j.Add(d)
	}
	for i := 0; b.Loop(); i++ {
		d.Seq = uint64(1<<18 + i)
		j.Add(d)
	}
}

// TestJournalKeepsBytes: the journal copies keys and values into its own
// slab; what From gives back is what was added, markers' nil key and
// value included, across the compactions that drop the oldest.
func TestJournalKeepsBytes(t *testing.T) {
	j := NewJournal(100, 1<<20)
	var all []Delta
	for i := 1; i <= 1000; i++ {
		d := Delta{Seq: uint64(i), Map: uint32(i % 3), Op: OpUpsert, Key: []byte{byte(i), byte(i >> 8)}, Value: bytes.Repeat([]byte{byte(i)}, i%7+1)}
		if i%10 == 0 {
			d = Delta{Seq: uint64(i), Map: 1, Op: OpSnapshotBegin}
		}
		j.Add(d)
		all = append(all, d)
	}
	ds, ok := j.From(950)
	if !ok || len(ds) != 51 {
		t.Fatalf("From(950): %d deltas, ok %v; want 51", len(ds), ok)
	}
	for k, d := range ds {
		if w := all[949+k]; !reflect.DeepEqual(d, w) {
			t.Fatalf("delta %d: got %+v, want %+v", w.Seq, d, w)
		}
	}
}
