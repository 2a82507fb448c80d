package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// A Feature is one datapath feature: its BPF object, the stage it runs in
// each interface's XDP chain, its TC programs, the interfaces it is
// configured on, its validation and the maps it sets up. Each feature
// registers itself once (gate.go is the smallest example); Up,
// ExpectedPins, Down, status and Validate read the registry instead of
// naming features. docs/chain.md walks through adding one.
type Feature struct {
	// Name identifies the feature in pins ("tcx-ingress:gate@eth0"),
	// status and errors.
	Name string
	// File is the feature's C source under bpf/ ("vipgate.c"), for probe
	// and errors.
	File string
	// TestOnly: loaded by tests and labs only, never needed in production
	// (tandem probe does not require what it uses).
	TestOnly bool
	// Slot is the feature's stage in the XDP chain (chain.Slot*): the
	// order packets meet the features.
	Slot uint32
	// Spec reads the feature's embedded object (bpf2go's LoadX).
	Spec func() (*ebpf.CollectionSpec, error)
	// XDP names the stage program in the object; "" for none.
	XDP string
	// Ifaces lists the interfaces o puts the feature on.
	Ifaces func(o *Options) []string
	// Hooks says which hooks the feature uses under o: its XDP stage or
	// not, and its TC programs by direction. nil: the XDP stage only.
	Hooks func(o *Options) (xdp bool, tc map[Direction]string)
	// Always: the feature's maps and shared programs are loaded on every
	// up, even with no interface carrying it (the gate: its map is the
	// ownership every feature honours, and the election writes it).
	Always bool
	// Flags defines the feature's `tandem up` flags on fs and returns what
	// applies the ones given on the command line to o (they override the
	// config file). Its error is a usage error. nil: no flags.
	Flags func(fs *pflag.FlagSet) func(o *Options) error
	// Validate checks the feature's options; nil: nothing to check.
	Validate func(o *Options) []error
	// Prepare sets load-time constants and map sizes before anything is
	// loaded; nil: nothing to set.
	Prepare func(o *Options, spec *ebpf.CollectionSpec) error
	// Synced lists the feature's maps the state sync replicates (their
	// ids are enum sync_map_id in bpf/include/sync.h: the wire protocol).
	Synced []maps.SyncedMap
	// Dumps are the feature's maps `tandem dump NAME` renders.
	Dumps map[string]func(maps.Pins) (*maps.Table, error)
	// Counters reads the feature's global counters for `tandem status`
	// (by name, summed over CPUs); nil: none. ErrNotLoaded (or a missing
	// pin) leaves the feature out.
	Counters func(pins maps.Pins) (map[string]uint64, error)
	// Setup fills the feature's maps once its shared part is loaded:
	// coll holds the maps and every program but the XDP stage (which is
	// loaded once per interface, with that interface's chain).
	Setup func(o *Options, coll *ebpf.Collection) error
}

var registry []*Feature

// Register adds a feature. Each name and each slot is taken once.
func Register(f *Feature) {
	for _, g := range registry {
		if g.Name == f.Name || (f.XDP != "" && g.XDP != "" && g.Slot == f.Slot) {
			panic(fmt.Sprintf("feature %s: name or chain slot %d taken by %s", f.Name, f.Slot, g.Name))
		}
	}
	if f.Slot >= chain.Slots {
		panic(fmt.Sprintf("feature %s: chain slot %d, at most %d", f.Name, f.Slot, chain.Slots-1))
	}
	for _, m := range f.Synced {
		maps.RegisterSynced(m)
	}
	for name, fn := range f.Dumps {
		maps.RegisterDump(name, fn)
	}
	registry = append(registry, f)
	slices.SortStableFunc(registry, func(a, b *Feature) int { return int(a.Slot) - int(b.Slot) })
}

// Features lists the registered features in chain order.
func Features() []*Feature { return slices.Clone(registry) }

// FeatureByName finds a registered feature; nil when there is none.
func FeatureByName(name string) *Feature {
	for _, f := range registry {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// trimmed drops empty names from a repeated or comma-separated list flag.
func trimmed(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (f *Feature) hooks(o *Options) (bool, map[Direction]string) {
	if f.Hooks == nil {
		return f.XDP != "", nil
	}
	return f.Hooks(o)
}

// ifacePlan is what one interface carries: its XDP stages and its TC
// programs, each in chain order.
type ifacePlan struct {
	name  string
	iface *net.Interface // nil until resolved
	// renamed: the interface's name in the pins of an earlier up, which
	// this up adopted (the interface was renamed since); "" for none.
	renamed string
	stages  []*Feature
	tc      map[Direction][]*Feature
}

// plan lists the interfaces o configures, in the order they are first
// named, with the features on each.
func (o *Options) plan() []*ifacePlan {
	var out []*ifacePlan
	by := map[string]*ifacePlan{}
	for _, f := range registry {
		xdp, tc := f.hooks(o)
		for _, name := range f.Ifaces(o) {
			p := by[name]
			if p == nil {
				p = &ifacePlan{name: name, tc: map[Direction][]*Feature{}}
				by[name] = p
				out = append(out, p)
			}
			if xdp && f.XDP != "" {
				p.stages = append(p.stages, f)
			}
			for _, dir := range []Direction{Ingress, Egress} {
				if tc[dir] != "" {
					p.tc[dir] = append(p.tc[dir], f)
				}
			}
		}
	}
	return out
}

// used lists the features Up loads under o, in chain order.
func (o *Options) used() []*Feature {
	var out []*Feature
	for _, f := range registry {
		if f.Always || len(f.Ifaces(o)) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// stageBits is the chain entry's cfg_stages for a list of stages.
func stageBits(stages []*Feature) uint32 {
	var b uint32
	for _, f := range stages {
		b |= 1 << f.Slot
	}
	return b
}

// loadedFeature is a feature's shared part, loaded once per Up.
type loadedFeature struct {
	spec *ebpf.CollectionSpec // prepared: constants set
	coll *ebpf.Collection     // maps and programs but the XDP stage
}

// loadFeature prepares f's spec and loads its shared part with the maps
// pinned by name under the root.
func loadFeature(o *Options, f *Feature) (*loadedFeature, error) {
	spec, err := f.Spec()
	if err != nil {
		return nil, fmt.Errorf("read embedded programs of %s: %w", f.Name, err)
	}
	if f.Prepare != nil {
		if err := f.Prepare(o, spec); err != nil {
			return nil, err
		}
	}
	// The shared part keeps the (small, unused) chain maps, so bpf2go's
	// typed structs can be assigned from it.
	shared := spec.Copy()
	delete(shared.Programs, f.XDP)
	coll, err := ebpf.NewCollectionWithOptions(shared, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: o.Pins.MapsDir()}})
	if err != nil {
		return nil, loadError(fmt.Errorf("%s: %w", f.Name, err), o.Pins)
	}
	lf := &loadedFeature{spec: spec, coll: coll}
	if f.Setup != nil {
		if err := f.Setup(o, coll); err != nil {
			coll.Close()
			return nil, err
		}
	}
	// Every program but the per-interface stages is pinned by name, for
	// the daemon (expiry, sync accessors) and for bpftool.
	for name, p := range coll.Programs {
		if err := pinReplace(p, o.Pins.Prog(name)); err != nil {
			coll.Close()
			return nil, err
		}
	}
	// Builds before the chain pinned the XDP program by name: that pin
	// would keep an old program loaded, listed as tandem's by status.
	if f.XDP != "" {
		if err := os.Remove(o.Pins.Prog(f.XDP)); err != nil && !errors.Is(err, os.ErrNotExist) {
			coll.Close()
			return nil, fmt.Errorf("unpin %s of an earlier build: %w", o.Pins.Prog(f.XDP), err)
		}
	}
	return lf, nil
}
