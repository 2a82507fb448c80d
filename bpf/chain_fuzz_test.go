package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// FuzzChainGateProxy runs mutated frames through a chain as an interface
// that carries both features runs it: the entry parses once, the gate
// (slot 0, enforce) judges, the SYN proxy (slot 3) serves, both reading
// one vip_gate. The single-stage targets cannot see what this checks:
//
//   - exactly one of the gate, the proxy and the end of the chain counts
//     each frame, and no tail call is missed;
//   - a frame the gate claims (a drop) reaches no later stage: the
//     proxy's counters, its connection table and the frame stay as they
//     were. A frame to the VIP the peer owns is always the gate's drop
//     (the gate's verdict holds for every feature), so the proxy's own
//     not_owner check never fires behind the gate;
//   - a frame no stage claims passes unchanged;
//   - what the gate passes, the proxy handles under the promises of
//     FuzzSynproxyXDP (counters, checksums, cookies, entries).
func FuzzChainGateProxy(f *testing.F) {
	w := newProxyWorld(f)
	entry, vm := chainGateBeforeProxy(f, w)
	vips := map[netip.Addr]bool{svc4: true, vipStandby: false}
	for _, b := range w.xdpSeeds {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, fix bool) {
		if len(in) < 14 || len(in) > fuzzMaxFrame {
			return // the kernel's XDP test run refuses it
		}
		if fix {
			in = fixedSums(t, in)
		}
		g0, c0 := snapshot(t, vm), chainStats(t, w.p.cm)
		r := w.run(t, entry, in)
		gd, c1 := delta(g0, snapshot(t, vm)), chainStats(t, w.p.cm)

		switch r.verdict {
		case "XDP_PASS", "XDP_DROP", "XDP_TX", "XDP_REDIRECT":
		default:
			t.Fatalf("verdict %s: the chain documents pass, drop, tx and redirect only", r.verdict)
		}
		claimed := map[uint32]uint64{}
		for slot := range c1 {
			if c1[slot].Missed != c0[slot].Missed {
				t.Fatalf("slot %d: %d missed tail calls: both stages are in their slots", slot, c1[slot].Missed-c0[slot].Missed)
			}
			if n := c1[slot].Claimed - c0[slot].Claimed; n != 0 {
				claimed[uint32(slot)] = n
			}
		}
		if len(claimed) != 1 || (claimed[chain.SlotGate]+claimed[chain.SlotSynproxy]+claimed[chain.Slots]) != 1 {
			t.Fatalf("chain counters moved %v (slot: packets; %d is the end): want exactly one of the gate, the proxy, the end, by one", claimed, chain.Slots)
		}
		gateDrop := claimed[chain.SlotGate] == 1
		checkGateCounters(t, in, gd, gateDrop, vips)
		if gateDrop {
			if r.verdict != "XDP_DROP" || r.changedIn || len(r.d) != 0 || len(r.newEntries()) != 0 || r.svc != (maps.SvcCounters{}) {
				t.Fatalf("the gate claimed the frame, yet: verdict %s, frame changed %v, proxy counters %v, %d new entries, service counters %+v",
					r.verdict, r.changedIn, r.d, len(r.newEntries()), r.svc)
			}
			return
		}
		if fr := parseFz(in); fr.ip && fr.dst == vipStandby {
			t.Fatalf("a frame to %s (owned by the peer) got past the gate: verdict %s, proxy counters %v", vipStandby, r.verdict, r.d)
		}
		if r.d["not_owner"] != 0 {
			t.Fatalf("the proxy counted not_owner behind the gate: %v", r.d)
		}
		// A frame no stage claimed leaves as it came. (A segment the proxy
		// rewrote and left to the kernel is claimed: FWD_KERNEL.)
		if claimed[chain.Slots] == 1 && (r.verdict != "XDP_PASS" || r.changedIn) {
			t.Fatalf("no stage claimed the frame, yet verdict %s, frame changed %v (proxy counters %v)\n in  %x\n out %x", r.verdict, r.changedIn, r.d, in, r.out)
		}
		checkProxyCounters(t, r)
		checkProxyOutput(t, r)
		checkNewEntries(t, r)
	})
}

// chainGateBeforeProxy puts the gate (enforce) in slot 0 of the proxy
// world's chain, on the proxy's vip_gate, and returns an entry that runs
// both stages, with the gate's counters.
func chainGateBeforeProxy(f *testing.F, w *proxyWorld) (*ebpf.Program, *maps.VIPMaps) {
	f.Helper()
	spec, err := bpf.LoadVipgate()
	if err != nil {
		f.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	if err := spec.Variables[bpf.VipgateVarCfgGateMode].Set(bpf.VipgateGateModeGATE_ENFORCE); err != nil {
		f.Fatal(err)
	}
	repl := w.p.cm.Replacements(spec)
	repl[bpf.VipgateMapVipGate] = w.p.objs.VipGate // one map by pin name in the loader
	var gate bpf.VipgateObjects
	if err := spec.LoadAndAssign(&gate, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		f.Fatalf("load gate: %+v", err)
	}
	f.Cleanup(func() { gate.Close() })
	vm := &maps.VIPMaps{Gate: gate.VipGate, Counters: gate.VipStats, Stats: gate.Stats}
	// The proxy world wrote its entries with one counter index for both
	// VIPs; the gate's counters need their own: empty the gate, then set.
	for _, want := range []map[netip.Addr]bool{{}, {svc4: true, vipStandby: false}} {
		if err := vm.SetVIPs(want); err != nil {
			f.Fatal(err)
		}
	}
	if err := w.p.cm.Set(chain.SlotGate, gate.XdpVipgate); err != nil {
		f.Fatal(err)
	}
	entry, err := chain.LoadEntry(w.p.cm, 1<<chain.SlotGate|1<<chain.SlotSynproxy)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { entry.Close() })
	return entry, vm
}

func chainStats(t *testing.T, cm *chain.Maps) []chain.Stat {
	t.Helper()
	st, err := cm.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}
