package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
)

// Types shared with the kernel, generated from vipgate.c's BTF.
type (
	VIPKey      = bpf.VipgateVipKey
	VIPEntry    = bpf.VipgateVipEntry
	VIPCounters = bpf.VipgateVipCounters
	StatReason  = bpf.VipgateStatReason
	GateMode    = bpf.VipgateGateMode
)

// Names of the maps vipgate.c pins.
const (
	MapVIPGate  = bpf.VipgateMapVipGate
	MapVIPStats = bpf.VipgateMapVipStats
	MapStats    = bpf.VipgateMapStats
)

// KeyOf turns an address into a vip_gate key: IPv6 as is, IPv4 mapped
// (::ffff:a.b.c.d), the form the parser in bpf/include/parse.h produces.
func KeyOf(a netip.Addr) VIPKey {
	return VIPKey{Addr: a.Unmap().As16()}
}

// AddrOf is the inverse of KeyOf.
func AddrOf(k VIPKey) netip.Addr {
	return netip.AddrFrom16(k.Addr).Unmap()
}

// StatNames are the labels of the global counters, indexed by StatReason.
var StatNames = map[StatReason]string{
	bpf.VipgateStatReasonSTAT_PASS_NON_IP:    "pass_non_ip",
	bpf.VipgateStatReasonSTAT_PASS_NON_VIP:   "pass_non_vip",
	bpf.VipgateStatReasonSTAT_PASS_VIP:       "pass_vip",
	bpf.VipgateStatReasonSTAT_DROP_MALFORMED: "drop_malformed",
	bpf.VipgateStatReasonSTAT_DROP_NOT_OWNER: "drop_not_owner",
	bpf.VipgateStatReasonSTAT_PASS_NOT_OWNER: "pass_not_owner",
	bpf.VipgateStatReasonSTAT_TX_VIP:         "tx_vip",
}

// VIP is one row of the gate: the address, whether this host owns it, and
// the slot of its counters.
type VIP struct {
	Addr  netip.Addr
	Owned bool
	Index uint32
}

// VIPMaps are the vipgate maps, opened from pins or from a fresh load.
type VIPMaps struct {
	Gate     *ebpf.Map // vip_gate: VIPKey -> VIPEntry
	Counters *ebpf.Map // vip_stats: per-CPU VIPCounters by index
	Stats    *ebpf.Map // stats: per-CPU uint64 by StatReason
}

// OpenVIPMaps opens the pinned vipgate maps below p.
func OpenVIPMaps(p Pins) (*VIPMaps, error) {
	var m VIPMaps
	for _, x := range []struct {
		name string
		dst  **ebpf.Map
	}{{MapVIPGate, &m.Gate}, {MapVIPStats, &m.Counters}, {MapStats, &m.Stats}} {
		mp, err := ebpf.LoadPinnedMap(p.Map(x.name), nil)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", x.name, err)
		}
		*x.dst = mp
	}
	return &m, nil
}

// Close releases the file descriptors; the pins stay.
func (m *VIPMaps) Close() {
	for _, mp := range []*ebpf.Map{m.Gate, m.Counters, m.Stats} {
		if mp != nil {
			mp.Close()
		}
	}
}

// VIPs lists the gate, sorted by address.
func (m *VIPMaps) VIPs() ([]VIP, error) {
	var (
		out []VIP
		k   VIPKey
		v   VIPEntry
	)
	it := m.Gate.Iterate()
	for it.Next(&k, &v) {
		out = append(out, VIP{Addr: AddrOf(k), Owned: v.Owned != 0, Index: v.Index})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", MapVIPGate, err)
	}
	slices.SortFunc(out, func(a, b VIP) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// SetVIPs makes the gate hold exactly want (address -> owned). Existing VIPs
// keep their counter slot, so counters survive a re-apply; new VIPs get a
// free slot whose counters are zeroed first; VIPs not in want are removed.
func (m *VIPMaps) SetVIPs(want map[netip.Addr]bool) error {
	have, err := m.VIPs()
	if err != nil {
		return err
	}
	max := m.Counters.MaxEntries()
	if uint32(len(want)) > max {
		return fmt.Errorf("%d VIPs configured, the datapath holds at most %d", len(want), max)
	}
	used := make(map[uint32]bool)
	index := make(map[netip.Addr]uint32)
	for _, v := range have {
		if _, keep := want[v.Addr]; keep {
			used[v.Index] = true
			index[v.Addr] = v.Index
			continue
		}
		if err := m.Gate.Delete(KeyOf(v.Addr)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove VIP %s: %w", v.Addr, err)
		}
	}
	next := uint32(0)
	for _, a := range sortedAddrs(want) {
		idx, ok := index[a]
		if !ok {
			for used[next] {
				next++
			}
			idx = next
			used[idx] = true
			if err := m.zeroCounters(idx); err != nil {
				return err
			}
		}
		e := VIPEntry{Index: idx}
		if want[a] {
			e.Owned = 1
		}
		if err := m.Gate.Put(KeyOf(a), e); err != nil {
			return fmt.Errorf("set VIP %s: %w", a, err)
		}
	}
	return nil
}

func (m *VIPMaps) zeroCounters(idx uint32) error {
	zero := make([]VIPCounters, ebpf.MustPossibleCPU())
	if err := m.Counters.Put(idx, zero); err != nil {
		return fmt.Errorf("zero counters slot %d: %w", idx, err)
	}
	return nil
}

// VIPCounters returns each VIP's counters summed over CPUs.
func (m *VIPMaps) VIPCounters() (map[netip.Addr]VIPCounters, error) {
	vips, err := m.VIPs()
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]VIPCounters, len(vips))
	for _, v := range vips {
		var per []VIPCounters
		if err := m.Counters.Lookup(v.Index, &per); err != nil {
			return nil, fmt.Errorf("read counters of %s: %w", v.Addr, err)
		}
		var sum VIPCounters
		for _, c := range per {
			sum.RxPackets += c.RxPackets
			sum.RxBytes += c.RxBytes
			sum.TxPackets += c.TxPackets
			sum.TxBytes += c.TxBytes
			sum.DropNotOwner += c.DropNotOwner
		}
		out[v.Addr] = sum
	}
	return out, nil
}

// GlobalStats returns the global counters summed over CPUs.
func (m *VIPMaps) GlobalStats() (map[StatReason]uint64, error) {
	out := make(map[StatReason]uint64, len(StatNames))
	for r := range StatNames {
		var per []uint64
		if err := m.Stats.Lookup(uint32(r), &per); err != nil {
			return nil, fmt.Errorf("read stat %s: %w", StatNames[r], err)
		}
		var sum uint64
		for _, c := range per {
			sum += c
		}
		out[r] = sum
	}
	return out, nil
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
