package bpf_test

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestChainNextPatched: chain_next tail-calls each slot with a constant
// key, which the JIT makes a direct jump that the kernel re-patches in
// every program whenever the slot's program changes. The chain package's
// tests swap a slot the entry jumps to; this one empties, refills and
// swaps slots that stages jump to, one step at a time under a loaded
// chain: an empty configured slot counts a missed tail call and passes
// the packet, a filled one runs, whichever program last went in.
func TestChainNextPatched(t *testing.T) {
	testenv.RequireRoot(t)
	ip := ip4(client4, other4, layers.IPProtocolUDP)
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip, udp(ip), payload)
	cm := newChainMaps(t)
	d0, d3, d3b, d7 := loadDecline(t, cm, 0), loadDecline(t, cm, 3), loadDecline(t, cm, 3), loadDecline(t, cm, 7)
	entry, err := chain.LoadEntry(cm, 1<<0|1<<3|1<<7)
	if err != nil {
		t.Fatal(err)
	}
	defer entry.Close()
	for _, step := range []struct {
		name   string
		set    map[uint32]*ebpf.Program // nil program: Clear
		end    uint64                   // packets at the stack's slot, so far
		missed map[uint32]uint64        // so far
	}{
		{"every slot filled", map[uint32]*ebpf.Program{0: d0, 3: d3, 7: d7}, 1, nil},
		{"slot 3 emptied: the jump from slot 0 misses", map[uint32]*ebpf.Program{3: nil}, 1, map[uint32]uint64{3: 1}},
		{"slot 3 refilled with another program", map[uint32]*ebpf.Program{3: d3b}, 2, map[uint32]uint64{3: 1}},
		{"slot 7 emptied: the jump from the new slot 3 misses", map[uint32]*ebpf.Program{7: nil}, 2, map[uint32]uint64{3: 1, 7: 1}},
		{"slot 7 and slot 3 back to the first programs", map[uint32]*ebpf.Program{3: d3, 7: d7}, 3, map[uint32]uint64{3: 1, 7: 1}},
	} {
		for slot, p := range step.set {
			var err error
			if p == nil {
				err = cm.Clear(slot)
			} else {
				err = cm.Set(slot, p)
			}
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
		}
		if v, err := entry.Run(&ebpf.RunOptions{Data: frame}); err != nil || v != 2 {
			t.Fatalf("%s: verdict %d, %v: want XDP_PASS", step.name, v, err)
		}
		st, err := cm.ReadStats()
		if err != nil {
			t.Fatal(err)
		}
		if got := st[chain.Slots].Claimed; got != step.end {
			t.Errorf("%s: %d packets at the stack's slot, want %d", step.name, got, step.end)
		}
		for slot, s := range st[:chain.Slots] {
			if s.Claimed != 0 {
				t.Errorf("%s: slot %d claimed %d: xdp_decline claims nothing", step.name, slot, s.Claimed)
			}
			if want := step.missed[uint32(slot)]; s.Missed != want {
				t.Errorf("%s: slot %d missed %d tail calls, want %d", step.name, slot, s.Missed, want)
			}
		}
	}
}

// loadDecline loads chain.c's xdp_decline for slot of cm, closed with the
// test.
func loadDecline(t testing.TB, cm *chain.Maps, slot uint32) *ebpf.Program {
	t.Helper()
	spec, err := bpf.LoadChain()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables[bpf.ChainVarCfgSlot].Set(int32(slot)); err != nil {
		t.Fatal(err)
	}
	p, err := chain.LoadStage(spec, bpf.ChainProgXdpDecline, cm, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
