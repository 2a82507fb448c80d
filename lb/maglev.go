// Package lb builds the SYN proxy's consistent-hashing tables: Maglev
// (Eisenbud et al., NSDI 2016, section 3.4) with weights as Katran builds
// them (katran/lib/MaglevHashV2: each round adds every backend's weight to
// its credit, and a backend whose credit reaches the largest weight takes
// its next preferred slot). The datapath indexes a table by the flow hash;
// both gateways of a pair build identical tables from identical inputs, so
// a handshake begun on one and completed on the other picks the same
// backend.
package lb

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"slices"
)

// TableSize is the size of every service's table: a prime (Maglev needs
// one for each backend's permutation to visit every slot), Katran's
// default ring size. With N backends, a slot is 1/65537 of the flows, and
// a backend's share is within about N/65537 of its weight's.
const TableSize = 65537

// NoBackend fills a table with no backend to take new flows (every
// backend drained or down): the datapath drops the cookie ACK.
const NoBackend = ^uint32(0)

// Backend is one input of a table: a backend's identity (its address and
// port, which gives its permutation, so the other backends keep their
// slots when it comes or goes), its weight (0: drained) and whether it
// is healthy (the health checks' verdict; false keeps it out).
type Backend struct {
	Addr    netip.AddrPort
	Weight  uint32
	Healthy bool
}

// In reports whether b takes new flows.
func (b Backend) In() bool { return b.Weight > 0 && b.Healthy }

// permutation is b's Maglev offset and skip for a table of size m, from a
// fixed hash of its address (IPv4-mapped for IPv4) and port: the same on
// every host and in every run.
func permutation(a netip.AddrPort, m uint32) (offset, skip uint32) {
	var id [18]byte
	a16 := a.Addr().Unmap().As16()
	copy(id[:16], a16[:])
	binary.BigEndian.PutUint16(id[16:], a.Port())
	h := sha256.Sum256(append([]byte("tandem maglev\x00"), id[:]...))
	offset = uint32(binary.BigEndian.Uint64(h[0:8]) % uint64(m))
	skip = uint32(binary.BigEndian.Uint64(h[8:16])%uint64(m-1)) + 1
	return offset, skip
}

// Build returns a table of size m (a prime) whose slots hold indexes into
// bs: each backend that takes new flows (In) gets a share of the slots in
// proportion to its weight; NoBackend everywhere when none does. The
// result depends only on the set of (address, weight, healthy), not on
// the order of bs: backends are placed in the order of their addresses.
func Build(bs []Backend, m uint32) []uint32 {
	table := make([]uint32, m)
	for i := range table {
		table[i] = NoBackend
	}
	var in []int
	for i, b := range bs {
		if b.In() {
			in = append(in, i)
		}
	}
	if len(in) == 0 || m < 2 {
		return table
	}
	// The fill order decides which backend wins a contested slot: sort by
	// identity, never by the caller's order or a map's.
	slices.SortFunc(in, func(a, b int) int { return bs[a].Addr.Compare(bs[b].Addr) })
	type state struct {
		idx          uint32
		offset, skip uint32
		next         uint32
		weight, cred uint64
	}
	st := make([]state, len(in))
	var maxW uint64
	for j, i := range in {
		o, s := permutation(bs[i].Addr, m)
		st[j] = state{idx: uint32(i), offset: o, skip: s, weight: uint64(bs[i].Weight)}
		maxW = max(maxW, uint64(bs[i].Weight))
	}
	filled := uint32(0)
	for {
		for j := range st {
			b := &st[j]
			b.cred += b.weight
			if b.cred < maxW {
				continue
			}
			b.cred -= maxW
			// The backend's next preferred slot still free: its
			// permutation is offset + k*skip mod m (m prime, so every
			// slot comes once per m steps).
			cur := uint32((uint64(b.offset) + uint64(b.next)*uint64(b.skip)) % uint64(m))
			for table[cur] != NoBackend {
				b.next++
				cur = uint32((uint64(b.offset) + uint64(b.next)*uint64(b.skip)) % uint64(m))
			}
			table[cur] = b.idx
			b.next++
			filled++
			if filled == m {
				return table
			}
		}
	}
}

// Shares counts each index's slots in table (n indexes).
func Shares(table []uint32, n int) []int {
	out := make([]int, n)
	for _, v := range table {
		if int(v) < n {
			out[v]++
		}
	}
	return out
}

// IsPrime reports whether n is prime (table sizes must be).
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); uint64(d)*uint64(d) <= uint64(n); d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
