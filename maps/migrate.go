package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
)

// Types shared with the kernel, generated from migrate.c's BTF.
type (
	MigKey     = bpf.MigrateMigKey
	MigLoc     = bpf.MigrateMigLoc
	EndpointV  = bpf.MigrateEpVal
	MigVal     = bpf.MigrateMigVal
	MigCmd     = bpf.MigrateMigCmd
	MigHoldRec = bpf.MigrateMigHoldRec
)

// Names of what migrate.c pins (maps by name; programs under progs/).
const (
	MapMigEndpoints = bpf.MigrateMapMigEndpoints
	MapMigState     = bpf.MigrateMapMigState
	MapMigHold      = bpf.MigrateMapMigHold
	MapMigStats     = bpf.MigrateMapMigStats
	ProgMigCtl      = bpf.MigrateProgMigCtl
	ProgMigFlush    = bpf.MigrateProgXdpMigFlush
)

// ErrMigrateNotLoaded: no migrate feature under the root (tandem up
// --migrate-iface IFACE loads it).
var ErrMigrateNotLoaded = errors.New("migrate feature not loaded (tandem up --migrate-iface IFACE)")

// MigFlushing is the bit of MigVal.Hold set while packets are held.
const MigFlushing = uint64(1) << 63

// MigQueueMax is how many location updates one migration can queue.
const MigQueueMax = len(MigVal{}.Queued)

// MigHoldHeader is the size of a hold record before the frame.
const MigHoldHeader = int(unsafe.Offsetof(MigHoldRec{}.Data))

// MigStatNames label mig_stats, by index.
var MigStatNames = []string{"forward", "to_source", "to_dest", "held", "hold_overflow", "no_route", "ttl_expired", "flushed", "hold_lost"}

// MigKeyOf is an endpoint's key: IPv6 as is, IPv4 mapped (as vip_gate).
func MigKeyOf(a netip.Addr) MigKey { return MigKey{Addr: a.Unmap().As16()} }

// MigLocOf is a location record for a hop; the zero address is none.
func MigLocOf(hop netip.Addr) MigLoc {
	if !hop.IsValid() {
		return MigLoc{}
	}
	return MigLoc{Hop: hop.Unmap().As16()}
}

// HopOf is the inverse of MigLocOf.
func HopOf(l MigLoc) netip.Addr {
	if l.Hop == ([16]byte{}) {
		return netip.Addr{}
	}
	return netip.AddrFrom16(l.Hop).Unmap()
}

// MigEncapIPIP marks a routed location: IP-in-IP to the hop.
const MigEncapIPIP = uint32(bpf.MigrateMigEncapMIG_ENCAP_IPIP)

// MigLocEncap is a location record for a routed hop (encap
// MigEncapIPIP), or a segment hop (0).
func MigLocEncap(hop netip.Addr, encap uint32) MigLoc {
	l := MigLocOf(hop)
	if l.Hop != ([16]byte{}) {
		l.Encap = encap
	}
	return l
}

// MigrateMaps are migrate.c's maps and control programs, opened from pins
// or from a fresh load.
type MigrateMaps struct {
	Endpoints, State, Hold, Stats *ebpf.Map
	Ctl, Flush                    *ebpf.Program
}

// OpenMigrate opens what migrate.c pinned under pins;
// ErrMigrateNotLoaded when the feature is not loaded.
func OpenMigrate(pins Pins) (*MigrateMaps, error) {
	m := &MigrateMaps{}
	for name, dst := range map[string]**ebpf.Map{MapMigEndpoints: &m.Endpoints, MapMigState: &m.State, MapMigHold: &m.Hold, MapMigStats: &m.Stats} {
		mp, err := ebpf.LoadPinnedMap(pins.Map(name), nil)
		if err != nil {
			m.Close()
			if errors.Is(err, syscall.ENOENT) {
				return nil, fmt.Errorf("%s: %w", name, ErrMigrateNotLoaded)
			}
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		*dst = mp
	}
	for name, dst := range map[string]**ebpf.Program{ProgMigCtl: &m.Ctl, ProgMigFlush: &m.Flush} {
		p, err := ebpf.LoadPinnedProgram(pins.Prog(name), nil)
		if err != nil {
			m.Close()
			if errors.Is(err, syscall.ENOENT) {
				return nil, fmt.Errorf("%s: %w", name, ErrMigrateNotLoaded)
			}
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		*dst = p
	}
	return m, nil
}

// Close closes what m holds.
func (m *MigrateMaps) Close() {
	for _, mp := range []*ebpf.Map{m.Endpoints, m.State, m.Hold, m.Stats} {
		if mp != nil {
			mp.Close()
		}
	}
	for _, p := range []*ebpf.Program{m.Ctl, m.Flush} {
		if p != nil {
			p.Close()
		}
	}
}

// Run runs mig_ctl with cmd, the one way the maps are written from user
// space (each write marked for the sync as the datapath's are). It
// returns cmd.Ret; a negative one is an errno.
func (m *MigrateMaps) Run(cmd *MigCmd) (int32, error) {
	buf := make([]byte, unsafe.Sizeof(*cmd))
	copy(buf, unsafe.Slice((*byte)(unsafe.Pointer(cmd)), len(buf)))
	if _, err := m.Ctl.Run(&ebpf.RunOptions{Context: buf, ContextOut: buf}); err != nil {
		return 0, fmt.Errorf("run %s: %w", ProgMigCtl, err)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(cmd)), len(buf)), buf)
	if cmd.Ret < 0 {
		return cmd.Ret, fmt.Errorf("%s op %d: %w", ProgMigCtl, cmd.Op, syscall.Errno(-cmd.Ret))
	}
	return cmd.Ret, nil
}

// SetEndpoint sets an endpoint's location.
func (m *MigrateMaps) SetEndpoint(ep, hop netip.Addr) error {
	_, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_EP_SET), Key: MigKeyOf(ep), Loc: MigLocOf(hop)})
	return err
}

// SetEndpointLoc sets an endpoint's location record (a routed one too).
func (m *MigrateMaps) SetEndpointLoc(ep netip.Addr, loc MigLoc) error {
	_, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_EP_SET), Key: MigKeyOf(ep), Loc: loc})
	return err
}

// Touch marks ep's migration record for the sync: the peer gets its
// counters as they are now.
func (m *MigrateMaps) Touch(ep netip.Addr) error {
	_, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_TOUCH), Key: MigKeyOf(ep)})
	return err
}

// SetRole tells this host's datapath whether it is the standby (its
// held packets are then counted locally, in mig_standby, not in the
// replicated record the owner's changes overwrite).
func (m *MigrateMaps) SetRole(standby bool) error {
	cmd := &MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_ROLE)}
	if standby {
		cmd.N = 1
	}
	_, err := m.Run(cmd)
	return err
}

// AdoptStandby moves what this host held for ep as the standby into ep's
// migration record (its tickets, and the flush bit); it returns how many.
func (m *MigrateMaps) AdoptStandby(ep netip.Addr) (uint64, error) {
	cmd := &MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_ADOPT), Key: MigKeyOf(ep)}
	_, err := m.Run(cmd)
	return cmd.N, err
}

// DelEndpoint removes an endpoint.
func (m *MigrateMaps) DelEndpoint(ep netip.Addr) error {
	_, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_EP_DEL), Key: MigKeyOf(ep)})
	return err
}

// PutMigration writes a migration's state, locations and queue (the
// counters stay the datapath's); hold starts holding packets.
func (m *MigrateMaps) PutMigration(ep netip.Addr, v *MigVal, hold bool) error {
	cmd := &MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_PUT), Key: MigKeyOf(ep), State: v.State, Nqueued: v.Nqueued}
	cmd.From, cmd.To = v.From, v.To
	for i := range v.Queued {
		cmd.Queued[i].Hop, cmd.Queued[i].Encap = v.Queued[i].Hop, v.Queued[i].Encap
	}
	if hold {
		cmd.Flags = 1
	}
	_, err := m.Run(cmd)
	return err
}

// DelMigration removes a migration record.
func (m *MigrateMaps) DelMigration(ep netip.Addr) error {
	_, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_DEL), Key: MigKeyOf(ep)})
	return err
}

// Flushed adds n re-injected packets to ep's count and reports whether
// the flush has caught up (the hold is then off: new packets go on).
func (m *MigrateMaps) Flushed(ep netip.Addr, n uint64) (bool, error) {
	r, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_FLUSHED), Key: MigKeyOf(ep), N: n})
	return r == 1, err
}

// Lost counts n of ep's held packets as lost (a daemon that restarted
// cannot re-inject what the old one had read) and, like Flushed, reports
// whether the flush has caught up.
func (m *MigrateMaps) Lost(ep netip.Addr, n uint64) (bool, error) {
	r, err := m.Run(&MigCmd{Op: uint32(bpf.MigrateMigOpMIG_OP_LOST), Key: MigKeyOf(ep), N: n})
	return r == 1, err
}

// Pending is how many of v's held packets are neither flushed, dropped
// nor lost: in the hold ring, or read from it and not yet re-injected.
func Pending(v *MigVal) uint64 {
	t := v.Hold &^ MigFlushing
	done := v.Flushed + v.Overflow + v.Lost
	if done >= t {
		return 0
	}
	return t - done
}

// Endpoint reads one endpoint's location; ok false when there is none.
func (m *MigrateMaps) Endpoint(ep netip.Addr) (netip.Addr, bool, error) {
	var v EndpointV
	if err := m.Endpoints.Lookup(MigKeyOf(ep), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return netip.Addr{}, false, nil
		}
		return netip.Addr{}, false, fmt.Errorf("read endpoint %s: %w", ep, err)
	}
	return HopOf(v.Loc), true, nil
}

// EndpointLoc reads one endpoint's location record; ok false when there
// is none.
func (m *MigrateMaps) EndpointLoc(ep netip.Addr) (MigLoc, bool, error) {
	var v EndpointV
	if err := m.Endpoints.Lookup(MigKeyOf(ep), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return MigLoc{}, false, nil
		}
		return MigLoc{}, false, fmt.Errorf("read endpoint %s: %w", ep, err)
	}
	return v.Loc, true, nil
}

// Migration reads one migration; nil when ep is not migrating.
func (m *MigrateMaps) Migration(ep netip.Addr) (*MigVal, error) {
	var v MigVal
	if err := m.State.Lookup(MigKeyOf(ep), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read migration %s: %w", ep, err)
	}
	return &v, nil
}

// EndpointList lists every endpoint and its location.
func (m *MigrateMaps) EndpointList() (map[netip.Addr]MigLoc, error) {
	out := map[netip.Addr]MigLoc{}
	var (
		k MigKey
		v EndpointV
	)
	it := m.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out[netip.AddrFrom16(k.Addr).Unmap()] = v.Loc
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// Migrations lists every migration record.
func (m *MigrateMaps) Migrations() (map[netip.Addr]MigVal, error) {
	out := map[netip.Addr]MigVal{}
	var (
		k MigKey
		v MigVal
	)
	it := m.State.Iterate()
	for it.Next(&k, &v) {
		out[netip.AddrFrom16(k.Addr).Unmap()] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	return out, nil
}

// MigStats sums mig_stats over CPUs, by MigStatNames.
func (m *MigrateMaps) MigStats() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, name := range MigStatNames {
		var per []uint64
		if err := m.Stats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read %s: %w", MapMigStats, err)
		}
		var s uint64
		for _, v := range per {
			s += v
		}
		out[name] = s
	}
	return out, nil
}
