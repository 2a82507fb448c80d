package bpf_test

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestChainNext: a packet goes through the configured slots in order,
// each declining stage passing it to the next configured one; a
// configured slot with no program counts a missed tail call and passes
// the packet to the stack. chain_next's tail calls are direct jumps the
// kernel patches when a slot changes, so the slots are filled and emptied
// after the entry is loaded, and again between runs.
func TestChainNext(t *testing.T) {
	testenv.RequireRoot(t)
	ip := ip4(client4, other4, layers.IPProtocolUDP)
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip, udp(ip), payload)
	type want struct {
		end    uint64            // packets that reached the stack's slot
		missed map[uint32]uint64 // per slot
	}
	for _, tc := range []struct {
		name   string
		stages []uint32 // configured in the entry
		filled []uint32 // slots holding xdp_decline
		want   want
	}{
		{"no stage", nil, nil, want{end: 1}},
		{"every stage declines", []uint32{0, 3, 7}, []uint32{0, 3, 7}, want{end: 1}},
		{"slots between configured ones are skipped", []uint32{1, 6}, []uint32{0, 1, 2, 5, 6, 7}, want{end: 1}},
		{"first slot empty", []uint32{0, 3}, []uint32{3}, want{missed: map[uint32]uint64{0: 1}}},
		{"a later slot empty", []uint32{0, 3, 7}, []uint32{0, 7}, want{missed: map[uint32]uint64{3: 1}}},
		{"last slot empty", []uint32{2, 7}, []uint32{2}, want{missed: map[uint32]uint64{7: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm := newChainMaps(t)
			var bits uint32
			for _, s := range tc.stages {
				bits |= 1 << s
			}
			entry, err := chain.LoadEntry(cm, bits)
			if err != nil {
				t.Fatal(err)
			}
			defer entry.Close()
			decline := make(map[uint32]*ebpf.Program)
			for _, s := range tc.filled {
				decline[s] = loadDecline(t, cm, s)
			}
			// Filled after the entry and the stages were loaded: every
			// tail call site that reaches a slot must see it.
			fill := func() {
				for s, p := range decline {
					if err := cm.Set(s, p); err != nil {
						t.Fatal(err)
					}
				}
			}
			check := func(round uint64) {
				t.Helper()
				if v, err := entry.Run(&ebpf.RunOptions{Data: frame}); err != nil || v != 2 {
					t.Fatalf("round %d: verdict %d, %v: want XDP_PASS", round, v, err)
				}
				st, err := cm.ReadStats()
				if err != nil {
					t.Fatal(err)
				}
				if got := st[chain.Slots].Claimed; got != round*tc.want.end {
					t.Errorf("round %d: %d packets reached the stack's slot, want %d", round, got, round*tc.want.end)
				}
				for slot, s := range st[:chain.Slots] {
					if s.Claimed != 0 {
						t.Errorf("round %d: slot %d claimed %d: xdp_decline claims nothing", round, slot, s.Claimed)
					}
					if want := round * tc.want.missed[uint32(slot)]; s.Missed != want {
						t.Errorf("round %d: slot %d missed %d tail calls, want %d", round, slot, s.Missed, want)
					}
				}
			}
			fill()
			check(1)
			// Emptied and filled again: the patched jumps follow.
			for s := range decline {
				if err := cm.Clear(s); err != nil {
					t.Fatal(err)
				}
			}
			fill()
			check(2)
		})
	}
}

// TestChainNextEmptied: a slot emptied under a loaded chain is a missed
// tail call from then on, and filling it again ends the misses.
func TestChainNextEmptied(t *testing.T) {
	testenv.RequireRoot(t)
	ip := ip4(client4, other4, layers.IPProtocolUDP)
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip, udp(ip), payload)
	cm := newChainMaps(t)
	p := loadDecline(t, cm, 3)
	entry, err := chain.Single(cm, 3, p)
	if err != nil {
		t.Fatal(err)
	}
	defer entry.Close()
	for i, step := range []struct {
		do           func() error
		end, missed3 uint64 // totals after the run
	}{
		{func() error { return nil }, 1, 0},
		{func() error { return cm.Clear(3) }, 1, 1},
		{func() error { return cm.Set(3, p) }, 2, 1},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		if v, err := entry.Run(&ebpf.RunOptions{Data: frame}); err != nil || v != 2 {
			t.Fatalf("step %d: verdict %d, %v: want XDP_PASS", i, v, err)
		}
		st, err := cm.ReadStats()
		if err != nil {
			t.Fatal(err)
		}
		if st[chain.Slots].Claimed != step.end || st[3].Missed != step.missed3 {
			t.Errorf("step %d: %d at the stack's slot, %d missed in slot 3; want %d, %d", i, st[chain.Slots].Claimed, st[3].Missed, step.end, step.missed3)
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
