package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/loader"
)

// TestPrintChain: status prints each XDP chain, stage by stage, an empty
// configured slot as such, and the end-of-chain count; TC attachments
// have no chain and print none.
func TestPrintChain(t *testing.T) {
	as := []*loader.Attachment{
		{Iface: "eth0", Hook: "xdp", Chain: []loader.ChainStage{
			{Slot: chain.SlotGate, Feature: "gate", ProgID: 41, Prog: "xdp_vipgate", Claimed: 7},
			{Slot: chain.SlotSynproxy, Feature: "synproxy", Missed: 3},
			{Slot: chain.Slots, Feature: "(stack)", Claimed: 1234},
		}},
		{Iface: "eth0", Hook: "tc-egress", Feature: "gate"},
	}
	var b bytes.Buffer
	printChain(&b, as)
	want := []string{
		"Chain on eth0:",
		"SLOT  FEATURE   PROG                            PROG ID  CLAIMED  MISSED",
		"0     gate      xdp_vipgate                     41       7        0",
		"3     synproxy  (empty: packets pass unserved)  -        0        3",
		"end   (stack)   -                               -        1234     -",
	}
	if got := strings.Split(strings.TrimSpace(b.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("printChain:\n%s\nwant:\n%s", b.String(), strings.Join(want, "\n"))
	}
}
