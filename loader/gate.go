package loader

import (
	"fmt"

	"github.com/cilium/ebpf"

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
