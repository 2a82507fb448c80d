package cli

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/loader"
)

// printChain prints each interface's XDP chain: its stages in the order
// packets meet them, with the packets each claimed and the tail calls
// into it that found no program (missed: each was passed to the stack
// unserved), then the packets no stage claimed.
func printChain(w io.Writer, as []*loader.Attachment) {
	for _, a := range as {
		if len(a.Chain) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nChain on %s:\n", a.Iface)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SLOT\tFEATURE\tPROG\tPROG ID\tCLAIMED\tMISSED")
		for _, s := range a.Chain {
			if s.Slot >= chain.Slots {
				fmt.Fprintf(tw, "end\t%s\t-\t-\t%d\t-\n", s.Feature, s.Claimed)
				continue
			}
			prog, id := s.Prog, fmt.Sprint(s.ProgID)
			if s.ProgID == 0 {
				prog, id = "(empty: packets pass unserved)", "-"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\n", s.Slot, s.Feature, prog, id, s.Claimed, s.Missed)
		}
		tw.Flush()
	}
}
