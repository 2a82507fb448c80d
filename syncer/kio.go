package syncer

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
)

// ioMax and ioForce mirror SYNC_IO_MAX and SYNC_IO_FORCE in
// bpf/include/sync.h; newKIO checks the buffer size they imply.
const (
	ioMax   = 1024
	ioForce = 1
)

// kio drives a map's SYNC_ACCESSORS programs: up to ioMax keys (and
// values) go into the I/O buffer with one update, one BPF_PROG_TEST_RUN
// reads or writes them all in the kernel, one lookup brings the results
// back.
type kio struct {
	m                   Map
	ks, vs              int
	foundOff, valsOff   int
	buf                 []byte
	reads, writes, runs uint64
}

func newKIO(m Map) (*kio, error) {
	k := &kio{m: m, ks: int(m.M.KeySize()), vs: int(m.M.ValueSize())}
	k.foundOff = 8 + ioMax*k.ks
	k.valsOff = k.foundOff + 4*ioMax
	size := k.valsOff + ioMax*k.vs
	if got := int(m.IO.ValueSize()); got != size {
		return nil, fmt.Errorf("map %s: I/O buffer of %d bytes, want %d for %d-byte keys and %d-byte values", m.Name, got, size, k.ks, k.vs)
	}
	k.buf = make([]byte, size)
	return k, nil
}

func (k *kio) run(p *ebpf.Program, slot uint32, n int, flags uint32) (uint32, error) {
	binary.NativeEndian.PutUint32(k.buf[0:], uint32(n))
	binary.NativeEndian.PutUint32(k.buf[4:], flags)
	if err := k.m.IO.Update(slot, k.buf, ebpf.UpdateAny); err != nil {
		return 0, fmt.Errorf("%s: fill the I/O buffer: %w", k.m.Name, err)
	}
	ret, err := p.Run(&ebpf.RunOptions{})
	if err != nil {
		return 0, fmt.Errorf("%s: run %s: %w", k.m.Name, p, err)
	}
	k.runs++
	if err := k.m.IO.Lookup(slot, k.buf); err != nil {
		return 0, fmt.Errorf("%s: read the I/O buffer: %w", k.m.Name, err)
	}
	return ret, nil
}

// read returns the current value of each key, nil where there is none.
// The values share one allocation per ioMax keys.
func (k *kio) read(keys [][]byte) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for start := 0; start < len(keys); start += ioMax {
		chunk := keys[start:min(start+ioMax, len(keys))]
		for i, key := range chunk {
			copy(k.buf[8+i*k.ks:], key)
		}
		if _, err := k.run(k.m.Read, 0, len(chunk), 0); err != nil {
			return nil, err
		}
		slab := make([]byte, len(chunk)*k.vs)
		for i := range chunk {
			if binary.NativeEndian.Uint32(k.buf[k.foundOff+4*i:]) == 0 {
				continue
			}
			v := slab[i*k.vs : (i+1)*k.vs : (i+1)*k.vs]
			copy(v, k.buf[k.valsOff+i*k.vs:])
			out[start+i] = v
		}
		k.reads += uint64(len(chunk))
	}
	return out, nil
}

// write applies upserts in order, the version check in the kernel unless
// force; it returns how many were applied and how many were stale.
func (k *kio) write(ds []Delta, force bool) (applied, stale int, err error) {
	var flags uint32
	if force {
		flags = ioForce
	}
	for start := 0; start < len(ds); start += ioMax {
		chunk := ds[start:min(start+ioMax, len(ds))]
		// The program writes in order, so an entry named twice ends
		// with the later value.
		for i, d := range chunk {
			copy(k.buf[8+i*k.ks:], d.Key)
			copy(k.buf[k.valsOff+i*k.vs:], d.Value)
		}
		ret, err := k.run(k.m.Write, 1, len(chunk), flags)
		if err != nil {
			return applied, stale, err
		}
		a, f := int(ret&0xffff), int(ret>>16)
		applied += a
		stale += len(chunk) - a - f
		k.writes += uint64(len(chunk))
		if f > 0 {
			return applied, stale, fmt.Errorf("apply to %s: %d of %d entries could not be written (is the map full?)", k.m.Name, f, len(chunk))
		}
	}
	return applied, stale, nil
}
