package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// The VIP gate (bpf/vipgate.c): first in every chain, so that a VIP this
// host does not own is never served by any feature. Its XDP stage drops
// ingress traffic to such VIPs (--gate enforce) and counts per VIP; with
// --ingress tc the same judgement runs on TC ingress instead; its TC
// egress program counts what leaves from a VIP.
func init() {
	Register(&Feature{
		Name:   "gate",
		File:   "vipgate.c",
		Slot:   chain.SlotGate,
		Spec:   bpf.LoadVipgate,
		XDP:    bpf.VipgateProgXdpVipgate,
		Ifaces: func(o *Options) []string { return o.Interfaces },
		Hooks: func(o *Options) (bool, map[Direction]string) {
			tc := map[Direction]string{Egress: bpf.VipgateProgTcVipgateEgress}
			if o.Ingress == IngressTC {
				tc[Ingress] = bpf.VipgateProgTcVipgateIngress
				return false, tc
			}
			return true, tc
		},
		Always:  true,
		Flags:   gateFlags,
		Prepare: prepareGate,
		Setup:   setupGate,
	})
}

func prepareGate(o *Options, spec *ebpf.CollectionSpec) error {
	mode := bpf.VipgateGateModeGATE_ENFORCE
	if o.Gate == GateMonitor {
		mode = bpf.VipgateGateModeGATE_MONITOR
	}
	if err := spec.Variables[bpf.VipgateVarCfgGateMode].Set(mode); err != nil {
		return fmt.Errorf("set gate mode: %w", err)
	}
	return nil
}

// setupGate writes the gate: the --vip entries, and the election's as
// they are (gateWant).
func setupGate(o *Options, coll *ebpf.Collection) error {
	vm := &maps.VIPMaps{Gate: coll.Maps[bpf.VipgateMapVipGate], Counters: coll.Maps[bpf.VipgateMapVipStats], Stats: coll.Maps[bpf.VipgateMapStats]}
	return vm.SetVIPs(gateWant(vm, *o))
}

func gateFlags(fs *pflag.FlagSet) func(o *Options) error {
	ifaces := fs.StringSliceP("iface", "i", nil, "run the VIP gate on this interface (repeat, or comma-separate); it may carry other features too")
	ingress := fs.String("ingress", IngressXDP, "the gate's ingress hook: xdp, or tc (only on an interface with no other XDP feature)")
	gate := fs.String("gate", GateEnforce, "for VIPs this host does not own: enforce (drop) or monitor (count, pass)")
	vips := fs.StringArray("vip", nil, "VIP as ADDR (owned here) or ADDR=standby (repeat); a unicast address: not unspecified, broadcast, multicast, loopback or link-local")
	return func(o *Options) error {
		if fs.Changed("iface") {
			o.Interfaces = trimmed(*ifaces)
		}
		if fs.Changed("ingress") {
			o.Ingress = *ingress
		}
		if fs.Changed("gate") {
			o.Gate = *gate
		}
		if fs.Changed("vip") {
			o.VIPs = map[netip.Addr]bool{}
			for _, v := range *vips {
				a, owned, err := ParseVIP(v)
				if err != nil {
					return err
				}
				if _, dup := o.VIPs[a]; dup {
					return fmt.Errorf("--vip %s given twice", a)
				}
				o.VIPs[a] = owned
			}
		}
		return nil
	}
}

// gateSnapshot is the VIP gate's entries, as a failed Up found them.
type gateSnapshot map[maps.VIPKey]maps.VIPEntry

// snapshotGate reads the pinned VIP gate; nil when none is pinned.
func snapshotGate(pins maps.Pins) (gateSnapshot, error) {
	m, err := ebpf.LoadPinnedMap(pins.Map(maps.MapVIPGate), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the VIP gate: %w", err)
	}
	defer m.Close()
	out := gateSnapshot{}
	var (
		k maps.VIPKey
		v maps.VIPEntry
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the VIP gate: %w", err)
	}
	return out, nil
}

// restore puts the gate back as it was: entries added since go, the
// others get their value (and counter slot) back.
func (s gateSnapshot) restore(pins maps.Pins) error {
	m, err := ebpf.LoadPinnedMap(pins.Map(maps.MapVIPGate), nil)
	if err != nil {
		return fmt.Errorf("restore the VIP gate: %w", err)
	}
	defer m.Close()
	var (
		k     maps.VIPKey
		v     maps.VIPEntry
		added []maps.VIPKey
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if _, ok := s[k]; !ok {
			added = append(added, k)
		}
	}
	var errs []error
	for _, k := range added {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k, v := range s {
		if err := m.Put(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(append(errs, it.Err())...); err != nil {
		return fmt.Errorf("restore the VIP gate: %w", err)
	}
	return nil
}
