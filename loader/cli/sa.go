package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/tandem-net/tandem/daemon"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

func init() {
	register(&command{
		name:    "sa",
		summary: "list the IPsec SAs whose replay state tandem keeps, with their windows and drops",
		args:    "list",
		long: `
The ESP anti-replay filter (tandem up --esp-iface IFACE) keeps, per inbound
IPsec SA, the replay state the kernel has verified: the highest
authenticated sequence number (64 bits with ESN), the window behind it and
which of its numbers arrived, and the SA's outbound sequence number for a
standby's takeover. The state sync replicates it to the peer. docs/sa.md
describes it.

  list   per SA: destination, SPI, transport (esp, or udp for ESP in UDP
         4500), ESN, the window (size, top, how many of its numbers
         arrived), the outbound sequence number, what the filter dropped
         (replays; stale: below the window) and passed, and the entry's sync
         version (it rises with every change the sync replicates);
         --json for scripts`,
		examples: `  tandem sa list
  tandem sa list --json
`,
		flags: addJSONRootFlags,
		run:   runSA,
	})
}

func runSA(env Env, opts any, args []string) error {
	f := opts.(*jsonFlags)
	if len(args) == 0 {
		args = []string{"list"}
	}
	if args[0] != "list" || len(args) > 1 {
		return usagef("unknown action %q: use list", args[0])
	}
	c, err := f.rootFlags.config()
	if err != nil {
		return err
	}
	if err := loader.RequirePrivileges(); err != nil {
		return err
	}
	m, err := maps.OpenSAMaps(c.Datapath.Pins)
	if err != nil {
		return err
	}
	defer m.Close()
	sas, err := m.ListSAs()
	if err != nil {
		return err
	}
	if f.json {
		out := make([]saJSON, len(sas))
		for i, s := range sas {
			out[i] = saJSONOf(s)
		}
		return writeJSON(env.Stdout, out)
	}
	printSAs(env.Stdout, sas)
	printESPDaemon(env.Stdout, c.StateDir)
	return nil
}

// printESPDaemon shows what the daemon says of the SAs (esp-status.json):
// its replay-state source, its role, and the synced SAs this host's
// kernel lacks, one line each. Nothing when no daemon ran the ESP side.
func printESPDaemon(w io.Writer, stateDir string) {
	st, err := daemon.ReadESPStatus(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	fmt.Fprintln(w, "\nESP SAs (daemon):")
	if err != nil {
		fmt.Fprintf(w, "warning: daemon ESP status unavailable: %v\n", err)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if st.PID <= 0 || syscallKill0(st.PID) != nil || time.Since(st.Updated) > 10*time.Second {
		fmt.Fprintf(tw, "daemon\tnot running (pid %d; status from %s)\n", st.PID, st.Updated.Format(time.RFC3339))
	}
	src := st.Source
	if st.SourceWhy != "" {
		src += " (" + st.SourceWhy + ")"
	}
	fmt.Fprintf(tw, "replay state from\t%s\n", src)
	role := "owner: the follower and the tracer write esp_sa"
	if st.Source == "aevents" {
		role = "owner: the follower writes esp_sa (the kernel's aevents)"
	}
	if !st.Active {
		role = "standby: only the sync's applier writes esp_sa; tracer paused"
	}
	fmt.Fprintf(tw, "role\t%s\n", role)
	fmt.Fprintf(tw, "SAs\t%d in the kernel (filter %s), %d synced\n", st.Kernel, st.Filter, st.Synced)
	fmt.Fprintf(tw, "missing on this host\t%d\n", len(st.Missing))
	if t := st.LastTakeover; t != nil {
		fmt.Fprintf(tw, "last takeover\t%s: %d SAs, %d resumed, %d missing, %d failed, in %s\n", t.At.Format(time.RFC3339), t.SAs, t.Resumed,
			t.Missing, t.Failed, t.Took.Round(time.Microsecond))
	}
	tw.Flush()
	for _, m := range st.Missing {
		fmt.Fprintf(w, "missing: dst %s spi %s (synced, not in this host's kernel: install it here too)\n", m.Dst, m.SPI)
	}
}

// saJSON is one SA in tandem sa list --json.
type saJSON struct {
	Dst        string   `json:"dst"`
	SPI        string   `json:"spi"`
	Encap      string   `json:"encap"`
	ESN        bool     `json:"esn"`
	Window     uint32   `json:"window"`
	Top        uint64   `json:"top"`
	Received   int      `json:"received"`
	Bitmap     []uint32 `json:"bitmap"`
	OSeq       uint64   `json:"oseq"`
	DropReplay uint64   `json:"drop_replay"`
	DropStale  uint64   `json:"drop_stale"`
	Passed     uint64   `json:"passed"`
	Version    uint64   `json:"version"`
}

func encapName(s maps.SAState) string {
	if s.Encap {
		return "udp"
	}
	return "esp"
}

// received counts the window's numbers that arrived.
func received(s maps.SAState) int {
	n := 0
	for d := uint32(0); d < s.Window; d++ {
		if s.Bit(d) {
			n++
		}
	}
	return n
}

func saJSONOf(s maps.SAState) saJSON {
	return saJSON{Dst: s.Dst.String(), SPI: fmt.Sprintf("0x%08x", s.SPI), Encap: encapName(s), ESN: s.ESN, Window: s.Window,
		Top: s.Top(), Received: received(s), Bitmap: s.Bitmap, OSeq: s.OTop(), DropReplay: s.DropReplay, DropStale: s.DropStale,
		Passed: s.Passed, Version: s.Version}
}

func printSAs(w io.Writer, sas []maps.SAState) {
	if len(sas) == 0 {
		fmt.Fprintln(w, "no SAs (the daemon fills them from the kernel's XFRM state)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DST\tSPI\tENCAP\tESN\tWINDOW\tTOP\tRECEIVED\tOSEQ\tDROP REPLAY\tDROP STALE\tPASSED\tVERSION")
	for _, s := range sas {
		esn := "no"
		if s.ESN {
			esn = "yes"
		}
		fmt.Fprintf(tw, "%s\t0x%08x\t%s\t%s\t%d\t%d\t%d/%d\t%d\t%d\t%d\t%d\t%d\n", s.Dst, s.SPI, encapName(s), esn, s.Window, s.Top(),
			received(s), s.Window, s.OTop(), s.DropReplay, s.DropStale, s.Passed, s.Version)
	}
	tw.Flush()
}
