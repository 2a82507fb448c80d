package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/syncer"
)

func init() {
	register(&command{
		name:    "status",
		summary: "show what is attached where, program ids, map fill and counters",
		long: `
Reads the pins under --bpffs and checks each attachment against the kernel
(is the link still on its interface, is tandem's cls_bpf filter still
there), and shows each interface's XDP chain: its stages in the order
packets meet them (slot, feature, program id), the packets each claimed, the
tail calls into an empty slot (missed: passed to the stack unserved), and the
packets no stage claimed (end). Exit status 1 when an attachment is broken,
so scripts can use it as a health check; 0 when all is well or nothing is up.
A daemon status file that cannot be read (torn by a crash) is a warning
line, not a failure.`,
		examples: "  tandem status\n  tandem status --json | jq .vips\n  tandem status --json | jq '.attachments[] | select(.chain) | {iface, chain}'\n",
		flags:    addJSONRootFlags,
		run:      runStatus,
	})
}

func runStatus(env Env, opts any, args []string) error {
	f := opts.(*jsonFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	c, err := f.rootFlags.config()
	if err != nil {
		return err
	}
	st, err := loader.ReadStatus(c.Datapath.Pins)
	if err != nil {
		return err
	}
	ss, err := readSyncStatus(c.StateDir)
	if err != nil {
		return err
	}
	ps, err := proxyStatus(c.Datapath.Pins)
	if err != nil {
		return err
	}
	if f.json {
		es, _ := daemon.ReadESPStatus(c.StateDir) // none, or unreadable: the text form says which
		if err := writeJSON(env.Stdout, statusJSON{st, ss, ps, es}); err != nil {
			return err
		}
	} else {
		printStatus(env.Stdout, st)
		printProxyStatus(env.Stdout, ps)
		printSyncStatus(env.Stdout, ss)
		printESPDaemon(env.Stdout, c.StateDir)
	}
	if len(st.Attachments) > 0 && !st.Healthy() {
		return errors.New("an attachment is broken (see PROBLEM above); run tandem up again")
	}
	return nil
}

func printStatus(w io.Writer, st *loader.Status) {
	if len(st.Attachments) == 0 && len(st.Programs) == 0 {
		fmt.Fprintf(w, "tandem is not up under %s (start it with tandem up)\n", st.Root)
		return
	}
	fmt.Fprintf(w, "bpffs root: %s\n\nAttachments:\n", st.Root)
	printAttachments(w, st.Attachments)
	printChain(w, st.Attachments)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPrograms:\nNAME\tID\tTAG")
	for _, p := range st.Programs {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", p.Name, p.ID, p.Tag)
	}
	fmt.Fprintln(tw, "\nMaps:\nNAME\tID\tTYPE\tFILL")
	for _, m := range st.Maps {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d/%d\n", m.Name, m.ID, m.Type, m.Entries, m.MaxEntries)
	}
	fmt.Fprintln(tw, "\nVIPs:\nVIP\tOWNED\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPPED (NOT OWNER)")
	for _, v := range st.VIPs {
		c := v.Counters
		fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%d\t%d\t%d\n", v.Addr, v.Owned, c.RxPackets, c.RxBytes, c.TxPackets, c.TxBytes, c.DropNotOwner)
	}
	fmt.Fprintln(tw, "\nCounters:\nREASON\tPACKETS")
	for _, n := range sortedKeys(st.Stats) {
		fmt.Fprintf(tw, "%s\t%d\n", n, st.Stats[n])
	}
	for _, f := range sortedKeys(st.Features) {
		fmt.Fprintf(tw, "\nCounters of %s:\nCOUNTER\tVALUE\n", f)
		for _, n := range sortedKeys(st.Features[f]) {
			fmt.Fprintf(tw, "%s\t%d\n", n, st.Features[f][n])
		}
	}
	tw.Flush()
}

// statusJSON is tandem status --json: the datapath and, when a daemon
// syncs, its sync status.
type statusJSON struct {
	*loader.Status
	Sync  *syncStatus  `json:"sync,omitempty"`
	Proxy *ProxyStatus `json:"proxy,omitempty"`
	// ESP is the daemon's ESP side (esp-status.json): source, role,
	// missing SAs, last takeover.
	ESP *daemon.ESPStatus `json:"esp,omitempty"`
}

type syncStatus struct {
	*syncer.NodeStatus
	Running bool `json:"running"` // the daemon that wrote it is alive and writing
	// Unavailable says why the status file could not be read (torn by a
	// crash, garbled, unreadable); NodeStatus is nil then.
	Unavailable string `json:"unavailable,omitempty"`
}

// readSyncStatus reads the status a sync daemon writes to stateDir; nil
// when no daemon ever synced there. A file that cannot be read or parsed
// is reported in Unavailable, never as an error: it says nothing about
// the datapath, whose health alone sets tandem status's exit status.
func readSyncStatus(stateDir string) (*syncStatus, error) {
	st, err := syncer.ReadNodeStatus(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return &syncStatus{Unavailable: err.Error()}, nil
	}
	alive := st.PID > 0 && syscallKill0(st.PID) == nil
	return &syncStatus{NodeStatus: st, Running: alive && time.Since(st.Updated) < 5*time.Second}, nil
}

func printSyncStatus(w io.Writer, ss *syncStatus) {
	if ss == nil {
		return
	}
	fmt.Fprintln(w, "\nSync:")
	if ss.NodeStatus == nil {
		fmt.Fprintf(w, "warning: daemon status unavailable: %s (a running daemon rewrites it at least every 2 s)\n", ss.Unavailable)
		return
	}
	st := ss.NodeStatus
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if !ss.Running {
		fmt.Fprintf(tw, "daemon\tnot running (pid %d; status from %s)\n", st.PID, st.Updated.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "role\t%s (node %s, generation %d)\n", st.Role, short(st.Node), st.Generation)
	fmt.Fprintf(tw, "maps\t%s\n", strings.Join(st.Maps, ", "))
	peer := st.Peer
	if st.Role == syncer.RoleStandby {
		peer = "listening on " + st.Listen
	}
	since := time.Since(st.Since).Round(time.Second)
	fmt.Fprintf(tw, "session\t%s for %s (%s)\n", st.Session, since, peer)
	if st.PeerName != "" {
		fmt.Fprintf(tw, "peer name\t%s (the only certificate admitted)\n", st.PeerName)
	}
	now := time.Now()
	if line := certLine(now, st.CertNotAfter, st.CANotAfter); line != "" {
		fmt.Fprintf(tw, "certificates\t%s\n", line)
	}
	if st.Role == syncer.RolePrimary {
		fmt.Fprintf(tw, "sent / acked\t%d / %d (%d unacked)\n", st.LastSent, st.Acked, st.Unacked)
		fmt.Fprintf(tw, "lag\tp50 %.1f ms, p99 %.1f ms (%d samples; interval %s)\n", st.LagP50ms, st.LagP99ms, st.LagSamples, st.Interval)
		fmt.Fprintf(tw, "journal\t%d deltas, %d bytes\n", st.JournalEntries, st.JournalBytes)
		if r := st.LastResync; r != nil {
			fmt.Fprintf(tw, "last resync\t%s at %s, %d deltas: %s\n", r.Mode, r.At.Format(time.RFC3339), r.Deltas, r.Why)
		}
		fmt.Fprintf(tw, "rings\t%d records, %d overflows, %d rescans\n", st.RingRecords, st.Overflows, st.Rescans)
	} else {
		fmt.Fprintf(tw, "applied\t%d deltas, last seq %d (generation %d)\n", st.DeltasApplied, st.LastApplied, st.PeerGeneration)
		by := ""
		for _, r := range syncer.RefuseReasons {
			if n := st.RefusedBy[r]; n > 0 {
				by += fmt.Sprintf(", %s %d", r, n)
			}
		}
		if by != "" {
			by = " (" + by[2:] + ")"
		}
		fmt.Fprintf(tw, "refused\t%d peers%s, %d sessions closed for bad frames or silence\n", st.Refused, by, st.Closed)
	}
	tw.Flush()
}

// certLine says how long this host's certificate and the pair's CA have
// left, with a warning inside syncer.ExpiryWarning.
func certLine(now, host, ca time.Time) string {
	var parts []string
	for _, c := range []struct {
		what string
		at   time.Time
	}{{"host", host}, {"CA", ca}} {
		if c.at.IsZero() {
			continue
		}
		left := c.at.Sub(now)
		s := fmt.Sprintf("%s until %s (%d days left)", c.what, c.at.Format(time.DateOnly), int(left.Hours()/24))
		switch {
		case left <= 0:
			s = fmt.Sprintf("%s EXPIRED on %s", c.what, c.at.Format(time.DateOnly))
		case left < syncer.ExpiryWarning:
			s += " WARNING: renew with tandem certs"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func short(node string) string {
	if len(node) > 12 {
		return node[:12]
	}
	return node
}

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }
