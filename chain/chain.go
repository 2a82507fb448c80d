// Package chain builds an interface's XDP feature chain (see
// bpf/include/chain.h): the per-interface maps, the entry program that
// parses each frame once, and the features' stage programs in their slots.
//
// Every program loaded for one interface's chain references that
// interface's maps (through map replacement), so a stage program belongs
// to exactly one chain. Two ways to change a running chain, both atomic:
// Set swaps one slot's program (BPF_MAP_UPDATE_ELEM on the program array);
// a change in which stages run, or in the chain's layout (ABI), builds a
// new chain (new maps, stages, entry) and swaps the entry through the
// interface's XDP link.
package chain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
)

// Slots of the chain, in the order packets meet them (enum chain_stage).
const (
	SlotGate     = uint32(bpf.ChainChainStageSTAGE_GATE)
	SlotMigrate  = uint32(bpf.ChainChainStageSTAGE_MIGRATE)
	SlotESP      = uint32(bpf.ChainChainStageSTAGE_ESP)
	SlotSynproxy = uint32(bpf.ChainChainStageSTAGE_SYNPROXY)
	SlotSynctest = uint32(bpf.ChainChainStageSTAGE_SYNCTEST)
	// Slots is how many stages a chain can hold.
	Slots = uint32(bpf.ChainChainStageSTAGE_END)
)

// ABI is the layout version of the chain this build's programs share. A
// slot swap is only safe between programs of the same ABI.
const ABI = uint32(bpf.ChainChainAbiCHAIN_ABI)

// The chain's maps, by their names in every object that includes chain.h.
const (
	MapProgs = bpf.ChainMapChainProgs
	MapCtx   = bpf.ChainMapChainCtxMap
	MapStats = bpf.ChainMapChainStats
	MapInfo  = bpf.ChainMapChainInfoMap
)

var mapNames = []string{MapProgs, MapCtx, MapStats, MapInfo}

// Maps are one interface's chain maps.
type Maps struct {
	Progs, Ctx, Stats, Info *ebpf.Map
}

func (m *Maps) byName() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{MapProgs: &m.Progs, MapCtx: &m.Ctx, MapStats: &m.Stats, MapInfo: &m.Info}
}

// NewMaps creates a fresh set of chain maps. The counters map of keep,
// when given, is shared (not copied): a root swap does not reset what
// status shows, and what the old chain still counts while its last
// packets drain is kept.
func NewMaps(keep *Maps) (*Maps, error) {
	spec, err := bpf.LoadChain()
	if err != nil {
		return nil, fmt.Errorf("read embedded chain: %w", err)
	}
	m := &Maps{}
	for name, dst := range m.byName() {
		if name == MapStats && keep != nil && keep.Stats != nil {
			if *dst, err = keep.Stats.Clone(); err != nil {
				m.Close()
				return nil, fmt.Errorf("chain stats: %w", err)
			}
			continue
		}
		if *dst, err = ebpf.NewMap(spec.Maps[name]); err != nil {
			m.Close()
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
	}
	return m, nil
}

// Close releases the maps (the kernel keeps what programs or pins hold).
func (m *Maps) Close() {
	if m == nil {
		return
	}
	for _, dst := range m.byName() {
		if *dst != nil {
			(*dst).Close()
			*dst = nil
		}
	}
}

// Replacements are the chain maps that spec declares, for
// ebpf.CollectionOptions.MapReplacements.
func (m *Maps) Replacements(spec *ebpf.CollectionSpec) map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	for name, dst := range m.byName() {
		if _, ok := spec.Maps[name]; ok {
			out[name] = *dst
		}
	}
	return out
}

// PinName is where an interface's chain map is pinned under maps/:
// "chain_progs@eth0".
func PinName(mapName, ifname string) string { return maps.AttachName(mapName, ifname) }

// Pin pins the maps under the root as the interface's chain, replacing
// the pins of an earlier chain in one rename each.
func (m *Maps) Pin(pins maps.Pins, ifname string) error {
	for name, dst := range m.byName() {
		path := pins.Map(PinName(name, ifname))
		tmp := filepath.Join(filepath.Dir(path), "tmp-"+filepath.Base(path))
		os.Remove(tmp)
		c, err := (*dst).Clone()
		if err != nil {
			return fmt.Errorf("pin %s: %w", path, err)
		}
		err = c.Pin(tmp)
		c.Close()
		if err != nil {
			return fmt.Errorf("pin %s: %w", path, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("pin %s: %w", path, err)
		}
	}
	return nil
}

// Open opens an interface's pinned chain maps; os.ErrNotExist when the
// interface has no chain.
func Open(pins maps.Pins, ifname string) (*Maps, error) {
	m := &Maps{}
	for name, dst := range m.byName() {
		mp, err := ebpf.LoadPinnedMap(pins.Map(PinName(name, ifname)), nil)
		if err != nil {
			m.Close()
			if errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			return nil, fmt.Errorf("open chain of %s: %w", ifname, err)
		}
		*dst = mp
	}
	return m, nil
}

// OpenSlots opens only an interface's program array and info map, for a
// cheap check of which slots are filled (the daemon's periodic check);
// the other fields are nil.
func OpenSlots(pins maps.Pins, ifname string) (*Maps, error) {
	m := &Maps{}
	for name, dst := range map[string]**ebpf.Map{MapProgs: &m.Progs, MapInfo: &m.Info} {
		mp, err := ebpf.LoadPinnedMap(pins.Map(PinName(name, ifname)), nil)
		if err != nil {
			m.Close()
			if errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			return nil, fmt.Errorf("open chain of %s: %w", ifname, err)
		}
		*dst = mp
	}
	return m, nil
}

// Unpin removes an interface's chain pins; missing ones are not an error.
func Unpin(pins maps.Pins, ifname string) (removed []string, err error) {
	var errs []error
	for _, name := range mapNames {
		path := pins.Map(PinName(name, ifname))
		if err := os.Remove(path); err == nil {
			removed = append(removed, path)
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
	}
	return removed, errors.Join(errs...)
}

// Rename moves an interface's chain pins to another interface name (the
// interface was renamed); missing ones are not an error.
func Rename(pins maps.Pins, from, to string) error {
	for _, name := range mapNames {
		err := os.Rename(pins.Map(PinName(name, from)), pins.Map(PinName(name, to)))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("chain of %s: %w", to, err)
		}
	}
	return nil
}

// Info is what a chain says about itself.
type Info struct {
	ABI    uint32
	Stages uint32 // bit per slot the entry runs
}

// Info reads the chain's ABI and stage bits.
func (m *Maps) ReadInfo() (Info, error) {
	var v bpf.ChainChainInfo
	if err := m.Info.Lookup(uint32(0), &v); err != nil {
		return Info{}, fmt.Errorf("read chain info: %w", err)
	}
	return Info{ABI: v.Abi, Stages: v.Stages}, nil
}

func (m *Maps) writeInfo(stages uint32) error {
	if err := m.Info.Update(uint32(0), bpf.ChainChainInfo{Abi: ABI, Stages: stages}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write chain info: %w", err)
	}
	return nil
}

// Set puts p in slot: the next packet that reaches the slot runs p.
func (m *Maps) Set(slot uint32, p *ebpf.Program) error {
	if slot >= Slots {
		return fmt.Errorf("chain slot %d: at most %d", slot, Slots-1)
	}
	if err := m.Progs.Update(slot, p, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("chain slot %d: %w", slot, err)
	}
	return nil
}

// Clear empties slot.
func (m *Maps) Clear(slot uint32) error {
	if err := m.Progs.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("chain slot %d: %w", slot, err)
	}
	return nil
}

// LoadEntry loads the chain's entry program for m, running the stages
// whose bits are set, and records them in the chain's info.
func LoadEntry(m *Maps, stages uint32) (*ebpf.Program, error) {
	spec, err := bpf.LoadChain()
	if err != nil {
		return nil, fmt.Errorf("read embedded chain: %w", err)
	}
	if err := spec.Variables[bpf.ChainVarCfgStages].Set(stages); err != nil {
		return nil, fmt.Errorf("set chain stages: %w", err)
	}
	p, err := LoadStage(spec, bpf.ChainProgXdpChain, m, "")
	if err != nil {
		return nil, err
	}
	if err := m.writeInfo(stages); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// LoadStage loads one program of spec (a feature's stage) for the chain
// m: the chain maps are m's, maps pinned by name come from pinPath ("":
// none are pinned, as in tests).
func LoadStage(spec *ebpf.CollectionSpec, prog string, m *Maps, pinPath string) (*ebpf.Program, error) {
	if _, ok := spec.Programs[prog]; !ok {
		return nil, fmt.Errorf("load stage %s: no such program", prog)
	}
	// A struct with one tagged field: LoadAndAssign loads that program
	// and the maps it uses, nothing else.
	typ := reflect.StructOf([]reflect.StructField{{
		Name: "P", Type: reflect.TypeOf((*ebpf.Program)(nil)), Tag: reflect.StructTag(`ebpf:"` + prog + `"`),
	}})
	v := reflect.New(typ)
	opts := &ebpf.CollectionOptions{MapReplacements: m.Replacements(spec)}
	if pinPath != "" {
		opts.Maps.PinPath = pinPath
	}
	if err := spec.LoadAndAssign(v.Interface(), opts); err != nil {
		return nil, fmt.Errorf("load stage %s: %w", prog, err)
	}
	return v.Elem().Field(0).Interface().(*ebpf.Program), nil
}

// Single builds a chain that runs one stage, for tests and benchmarks
// that run a feature's program with prog.Run: the returned entry parses
// the frame and tail-calls stage in slot. stage must have been loaded
// with m's maps (m.Replacements).
func Single(m *Maps, slot uint32, stage *ebpf.Program) (*ebpf.Program, error) {
	if err := m.Set(slot, stage); err != nil {
		return nil, err
	}
	return LoadEntry(m, 1<<slot)
}

// Stat is one slot's counters, summed over CPUs.
type Stat struct {
	Claimed uint64 `json:"claimed"` // packets the stage answered
	Missed  uint64 `json:"missed"`  // tail calls into the slot that found no program
}

// Stats reads every slot's counters; the last entry (index Slots) counts
// the packets no stage claimed.
func (m *Maps) ReadStats() ([]Stat, error) {
	out := make([]Stat, Slots+1)
	var per []bpf.ChainChainStat
	for i := range out {
		if err := m.Stats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read chain stats: %w", err)
		}
		for _, s := range per {
			out[i].Claimed += s.Claimed
			out[i].Missed += s.Missed
		}
	}
	return out, nil
}

// RunBy reports whether the program id runs this chain: whether it uses
// m's program array, as the chain's entry does. An XDP link whose program
// does not (an earlier build's program, swapped in by its up; another
// chain's entry) reaches none of m's slots.
func (m *Maps) RunBy(id ebpf.ProgramID) (bool, error) {
	mi, err := m.Progs.Info()
	if err != nil {
		return false, fmt.Errorf("chain program array: %w", err)
	}
	want, ok := mi.ID()
	if !ok {
		return false, errors.New("chain program array: the kernel gives no map id")
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false, fmt.Errorf("program %d: %w", id, err)
	}
	defer p.Close()
	pi, err := p.Info()
	if err != nil {
		return false, fmt.Errorf("program %d: %w", id, err)
	}
	ids, ok := pi.MapIDs()
	if !ok {
		return false, fmt.Errorf("program %d: the kernel gives no map ids", id)
	}
	for _, mid := range ids {
		if mid == want {
			return true, nil
		}
	}
	return false, nil
}

// ProgIDs lists the program in each filled slot.
func (m *Maps) ProgIDs() (map[uint32]ebpf.ProgramID, error) {
	out := map[uint32]ebpf.ProgramID{}
	for i := uint32(0); i < Slots; i++ {
		var id uint32
		err := m.Progs.Lookup(i, &id)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read chain slot %d: %w", i, err)
		}
		out[i] = ebpf.ProgramID(id)
	}
	return out, nil
}
