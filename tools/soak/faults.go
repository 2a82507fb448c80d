package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// A fault kind: what it does to which gateway, how often it is drawn, and
// which of the open connections it may lose.
type kind struct {
	name   string
	weight int
	// lose says what the fault may lose when it hits target, which owned
	// the VIPs before it (owner): lossNone or lossThrough (the
	// connections through that host). Anything else lost is a violation.
	lose func(owner bool) loss
	// doc is the why of lose, for -list and docs/testing.md.
	doc string
}

type loss int

const (
	lossNone    loss = iota // every open connection survives
	lossThrough             // the connections through the target may be lost
)

// kinds is every fault the soak injects. The target is drawn at random
// (either gateway), so each fault hits the owner and the standby.
var kinds = []kind{
	{name: "kill", weight: 3, lose: never,
		doc: "SIGKILL of a daemon, restarted 0.2-2 s later: the datapath serves from its pins meanwhile (the peer's takeover probe is answered by the host's kernel), the new daemon adopts it"},
	{name: "stop", weight: 2, lose: never,
		doc: "SIGSTOP of a daemon for 0.5-3 s, then SIGCONT: the datapath serves meanwhile, the peer's probe is answered"},
	{name: "flap", weight: 2, lose: never,
		doc: "a service interface (eth0 or eth1) of a gateway down for 0.5-2 s: an owner is unhealthy and gives the VIPs up, the standby (which has every entry) takes them"},
	{name: "cut-sync", weight: 2, lose: never,
		doc: "the sync link down for 1-4 s: adverts still cross the service network, nobody moves; the sync resyncs"},
	{name: "cut-service", weight: 2, lose: never,
		doc: "the switch drops every frame to and from one gateway's front or back port for 1-3 s (carrier stays up): connections through it stall and TCP retransmits afterwards"},
	{name: "partition", weight: 1, lose: never,
		doc: "both paths between the gateways cut for 1-3 s (sync link down, switch ports isolated from each other): both own; after the heal gwa keeps the VIPs by priority, and the connections are in both tables; the owner announces them again"},
	{name: "handover", weight: 2, lose: never,
		doc: "tandem vip handover on the owner (on the standby it is refused): a planned move that loses nothing"},
	{name: "restart", weight: 1, lose: throughOwner,
		doc: "SIGTERM of a daemon, tandem down, tandem up: the host's datapath and its connection table are removed while it still holds the VIP addresses (a stopped daemon's host is not taken over: its kernel answers the probe), so on the owner the connections through it are lost; on the standby nothing is (a full resync); left out by make soak until new connections on the lost ones' ports are not reset"},
	{name: "down-live", weight: 1, lose: throughOwner,
		doc: "tandem down under a running daemon, then tandem up: like restart, but the daemon sees its datapath vanish (tandem down stops the daemon first)"},
}

func never(bool) loss { return lossNone }

func throughOwner(owner bool) loss {
	if owner {
		return lossThrough
	}
	return lossNone
}

func kindByName(name string) (kind, bool) {
	for _, k := range kinds {
		if k.name == name {
			return k, true
		}
	}
	return kind{}, false
}

// enabled parses -skip (a comma-separated list of kind names) into the
// kinds to draw from.
func enabled(skip string) ([]kind, error) {
	var out []kind
	skipped := map[string]bool{}
	for _, s := range strings.Split(skip, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if _, ok := kindByName(s); !ok {
			return nil, fmt.Errorf("-skip %s: no such fault (the faults: %s)", s, strings.Join(names(kinds), ", "))
		}
		skipped[s] = true
	}
	for _, k := range kinds {
		if !skipped[k.name] {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-skip %s leaves no fault to inject", skip)
	}
	return out, nil
}

func names(ks []kind) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.name)
	}
	return out
}

// pick draws a kind by weight.
func pick(r *rand.Rand, ks []kind) kind {
	total := 0
	for _, k := range ks {
		total += k.weight
	}
	n := r.IntN(total)
	for _, k := range ks {
		if n < k.weight {
			return k
		}
		n -= k.weight
	}
	panic("unreachable")
}

// between is a random duration in [lo, hi).
func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// tally is what a run did and found.
type tally struct {
	faults     map[string]int // by kind
	lost       map[string]int // connections lost as documented, by kind
	udpLost    map[string]uint64
	settle     map[string]time.Duration // the longest settle after a heal, by kind
	checks     map[string]int           // invariant checks, by invariant
	violations []string
}

func newTally() *tally {
	return &tally{faults: map[string]int{}, lost: map[string]int{}, udpLost: map[string]uint64{},
		settle: map[string]time.Duration{}, checks: map[string]int{}}
}

func (t *tally) check(inv string) { t.checks[inv]++ }

func (t *tally) violate(round int, f string, args ...any) {
	t.violations = append(t.violations, fmt.Sprintf("round %d: ", round)+fmt.Sprintf(f, args...))
}

// summary is the table the run ends with.
func (t *tally) summary(seed uint64, d time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "soak: seed %d, %s\n\n", seed, d.Round(time.Second))
	fmt.Fprintf(&b, "%-12s %8s %18s %12s %14s\n", "fault", "injected", "conns lost (doc.)", "udp lost", "longest settle")
	var ks []string
	for k := range t.faults {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		return slices.IndexFunc(kinds, func(x kind) bool { return x.name == ks[i] }) < slices.IndexFunc(kinds, func(x kind) bool { return x.name == ks[j] })
	})
	total := 0
	for _, k := range ks {
		total += t.faults[k]
		fmt.Fprintf(&b, "%-12s %8d %18d %12d %14s\n", k, t.faults[k], t.lost[k], t.udpLost[k], t.settle[k].Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "%-12s %8d\n\n", "total", total)
	var invs []string
	for k := range t.checks {
		invs = append(invs, k)
	}
	sort.Strings(invs)
	fmt.Fprintf(&b, "%-58s %8s\n", "invariant", "checked")
	for _, k := range invs {
		fmt.Fprintf(&b, "%-58s %8d\n", k, t.checks[k])
	}
	fmt.Fprintf(&b, "\nviolations: %d\n", len(t.violations))
	for _, v := range t.violations {
		fmt.Fprintf(&b, "  %s\n", v)
	}
	if len(t.violations) > 0 {
		fmt.Fprintf(&b, "reproduce: go run ./tools/soak -seed %d\n", seed)
	}
	return b.String()
}
