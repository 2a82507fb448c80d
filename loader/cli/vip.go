package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tandem-net/tandem/daemon"
)

func init() {
	register(&command{
		name:    "vip",
		summary: "show the VIP election, or hand the VIPs to the peer (handover writes)",
		args:    "[status | handover]",
		long: `
With --vip-addr, the daemon (tandem up) runs an election with its peer and
moves the VIPs: the owner holds the --vip-addr addresses and its VIP gate
is open for them and for the SYN proxy's service VIPs. Adverts go every
--vip-interval over every --vip-peer path, signed with the pair's secret
(and at once, rate-limited, when what they say changes). Adverts are heard
only from a --vip-peer address, under the peer's name (--vip-peer-name),
and fresh: a new boot of the peer is heard once it echoes a random
challenge (no clocks compared). A peer silent for --vip-dead adverts (or
unhealthy: an interface down, a datapath the daemon cannot repair) is
replaced: the standby probes that
nobody answers for the addresses (ARP; NS for IPv6), adds them, opens its
gate and announces them (gratuitous ARP, unsolicited NA) on a schedule. A
split brain (both owning after a partition) is settled when adverts return:
priority, then generation (the later primary), then name.

  status     (the default) this host's view: owner or not and why, the
             peer, health, sync, adverts sent, received, dropped by the
             socket's buffer and refused by reason; --json for scripts
  handover   run on the owner: flush the state sync (drain it now and
             wait until the peer acknowledged every change made before
             the handover; a peer that does not is an error within 30 s),
             wait for the peer to catch up, move the addresses, keep
             serving stragglers until the announcements land, then close
             the gate here. No packet is lost.

Both talk to the daemon through its control socket in --state-dir, which
only root and members of the daemon's control group (control_group in its
config, tandem up --control-group) may use: the daemon makes the state
directory 0700 (0750 with a control group) and the socket 0600 (0660), and
checks each caller's credentials (SO_PEERCRED).`,
		examples: `  tandem vip
  tandem vip --json | jq .owner
  tandem vip handover
`,
		flags: addJSONRootFlags,
		run:   runVIP,
	})
}

func runVIP(env Env, opts any, args []string) error {
	f := opts.(*jsonFlags)
	c, err := f.rootFlags.config()
	if err != nil {
		return err
	}
	action := "status"
	if len(args) > 0 {
		action = args[0]
	}
	if len(args) > 1 || (action != "status" && action != "handover") {
		return usagef("tandem vip [status | handover]")
	}
	sock := daemon.ControlSocket(c.StateDir)
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("permission denied on %s: tandem vip needs root, or membership of the daemon's control group (control_group in its config, --control-group)", sock)
	}
	if err != nil {
		return fmt.Errorf("no daemon runs an election here (%s: %v); start one with tandem up --vip-addr ... (or give its --state-dir)", sock, errors.Unwrap(err))
	}
	defer conn.Close()
	fmt.Fprintln(conn, action)
	if action == "handover" {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ok":
				return nil
			case strings.HasPrefix(line, "error: permission denied"):
				return fmt.Errorf("handover: %s (tandem vip needs root, or membership of the daemon's control group)", strings.TrimPrefix(line, "error: "))
			case strings.HasPrefix(line, "error: "):
				return errors.New("handover: " + strings.TrimPrefix(line, "error: "))
			}
			fmt.Fprintln(env.Stdout, line)
		}
		return errors.New("handover: the daemon closed the connection without an answer (see its log)")
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if msg, ok := strings.CutPrefix(string(data), "error: "); ok {
		return fmt.Errorf("%s (tandem vip needs root, or membership of the daemon's control group)", strings.TrimSpace(msg))
	}
	var st daemon.ElectionStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("daemon status: %w", err)
	}
	if f.json {
		return writeJSON(env.Stdout, st)
	}
	printVIPStatus(env.Stdout, st)
	return nil
}

func printVIPStatus(w io.Writer, st daemon.ElectionStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	role := "standby"
	if st.Owner {
		role = "OWNER"
	}
	fmt.Fprintf(tw, "host\t%s (priority %d, generation %d)\n", st.Name, st.Priority, st.Generation)
	fmt.Fprintf(tw, "role\t%s since %s: %s\n", role, st.Since.Format(time.RFC3339), st.Why)
	fmt.Fprintf(tw, "addresses\t%s\n", strings.Join(st.Addrs, ", "))
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY: " + st.Problem
	}
	fmt.Fprintf(tw, "health\t%s; caught up: %v; sync primary: %v\n", health, st.CaughtUp, st.Primary)
	switch {
	case st.PeerSeen.IsZero():
		fmt.Fprintf(tw, "peer\tnever heard\n")
	default:
		state := "silent"
		if st.PeerAlive {
			state = "alive"
		}
		fmt.Fprintf(tw, "peer\t%s %s (owner %v, healthy %v), last advert %s ago\n", st.Peer, state, st.PeerOwner, st.PeerHealthy, time.Since(st.PeerSeen).Round(time.Millisecond))
	}
	if st.ReloadError != "" {
		fmt.Fprintf(tw, "reload\tFAILED, the running config carries on: %s\n", st.ReloadError)
	}
	fmt.Fprintf(tw, "history\t%d takeovers, %d releases\n", st.Takeovers, st.Releases)
	fmt.Fprintf(tw, "adverts\t%d sent, %d received, %d dropped by the socket's buffer\n", st.Sent, st.Received, st.Dropped)
	r := st.RefusedBy
	fmt.Fprintf(tw, "refused\t%d: %d bad MAC, %d malformed, %d wrong source, %d wrong name, %d replayed, %d unanswered challenge, %d own\n",
		st.Refused, r.BadMAC, r.Malformed, r.WrongSource, r.WrongName, r.Replay, r.Unanswered, r.Own)
	tw.Flush()
}
