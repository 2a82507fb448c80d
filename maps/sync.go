package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/tandem-net/tandem/bpf"
)

// Types of the sync plumbing, generated from bpf/include/sync.h's BTF.
type (
	SyncHdr = bpf.SynctestSyncHdr
	SyncRec = bpf.SynctestSyncRec
	SyncOp  = bpf.SynctestSyncOp
)

const (
	SyncUpsert = bpf.SynctestSyncOpSYNC_OP_UPSERT
	SyncDelete = bpf.SynctestSyncOpSYNC_OP_DELETE
)

// SyncMaps are the maps every program that replicates state shares:
// the per-CPU dirty rings, the drain epoch, and the overflow counters.
type SyncMaps struct {
	Rings    *ebpf.Map // array of ringbufs, one per CPU
	Epoch    *ebpf.Map // [0]: the current drain epoch
	Overflow *ebpf.Map // per-CPU count of records lost to a full ring, per map id
	readers  []*ringbuf.Reader
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

// Close stops reading; the rings stay with the outer map.
func (s *SyncMaps) Close() {
	for _, r := range s.readers {
		r.Close()
	}
	s.readers = nil
}

// Drain reads every record that is in the rings now, without waiting
// (the programs never wake anyone), and hands each to fn.
func (s *SyncMaps) Drain(fn func(*SyncRec)) (int, error) {
	var (
		n   int
		rec ringbuf.Record
		sr  SyncRec
	)
	for cpu, r := range s.readers {
		r.SetDeadline(time.Now())
		for {
			err := r.ReadInto(&rec)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("drain ring of cpu %d: %w", cpu, err)
			}
			if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &sr); err != nil || sr.KeyLen > uint32(len(sr.Key)) {
				return n, fmt.Errorf("ring of cpu %d: a record tandem did not write (%d bytes): %v", cpu, len(rec.RawSample), err)
			}
			fn(&sr)
			n++
		}
	}
	return n, nil
}

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
