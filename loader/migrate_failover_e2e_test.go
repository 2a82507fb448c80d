package loader_test

// Failover during a move (issue 13): the gateway pair of the failover
// tests (tools/gwpair: election, state sync) with the migrate stage on
// both gateways' client-facing interface; an endpoint behind them moves
// from S (be1) to D (be2). The owner starts the move and enters the
// blackout, then dies; the standby takes the VIPs and continues the move
// from the replicated state: it holds what it receives in the blackout,
// and the switch and done sent to it deliver those packets to D, in order.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-net/tandem/migrate"
	"github.com/tandem-net/tandem/tools/gwpair"
	"github.com/tandem-net/tandem/tools/lab"
)

// mac is h's iface's hardware address.
func mac(t *testing.T, h *lab.Host, iface string) string {
	t.Helper()
	var hw string
	if err := h.Do(func() error {
		i, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		hw = i.HardwareAddr.String()
		return nil
	}); err != nil {
		t.Fatalf("%s %s: %v", h.Name, iface, err)
	}
	return hw
}

// migOn runs tandem on gateway g against its daemon's control socket.
func (p *pairLab) migOn(g string, args ...string) (string, error) {
	r := p.Tandem(p.gw[g], append(args, "--bpffs", p.gw[g].BPFFS(), "--state-dir", p.state[g])...)
	if r.Err != nil {
		return "", r.Err
	}
	if r.Code != 0 {
		return "", fmt.Errorf("tandem %s on gw%s: exit %d: %s", strings.Join(args, " "), g, r.Code, strings.TrimSpace(r.Stderr))
	}
	return r.Stdout, nil
}

// migration is what gateway g's daemon says of migEP's move (nil: none).
func (p *pairLab) migration(g string) (*migrate.Endpoint, error) {
	out, err := p.migOn(g, "endpoint", "list", "--json")
	if err != nil {
		return nil, err
	}
	var list []migrate.Endpoint
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("endpoint list on gw%s: %w", g, err)
	}
	for _, e := range list {
		if e.Addr == migEP {
			return &e, nil
		}
	}
	return nil, nil
}

// TestMigrateFailover: the owner (gwa) is SIGKILLed, and its links go
// down (a dead host's pinned XDP programs would otherwise go on holding
// into a ring nobody reads), while migEP is in the blackout of a move
// from S to D; gwb takes the VIPs and continues the move from the
// replicated state.
//
// What is lost, by design: the packets gwa held before it died (they are
// in gwa's ring, see docs/migration.md, "The controller and the pair")
// and those the client sent between the kill and the moment its
// neighbour entry for the VIP names gwb (the election's detection time:
// 3 advert intervals of silence, plus the gratuitous ARP). Those are
// counted and logged, not asserted. The second window may lose nothing
// in this lab: once gwa's port is down the bridge forgets gwa's MAC and
// floods its frames, and gwb's XDP (a veth shows XDP every frame,
// addressed to it or not) holds them; a NIC that filters by MAC would
// not. gwb's Lost counter is not compared with gwa's ring either: gwa's
// hold tickets reach gwb with the record's marks, every TouchInterval
// while it holds, so what gwa held in its last ~20 ms is missing from it
// (docs/migration.md, "What a failover loses"); the log shows gwa's
// count just before the kill beside it. What is asserted: gwb's migration
// record is gwa's (state, source, destination); every datagram sent
// after the client's neighbour entry moved to gwb reaches D exactly once,
// in order (held by gwb in the blackout, flushed at the switch, then
// straight to D); none of them reaches S.
//
// Inside the VM (TCG) the same verdicts at a scaled pace: the steps from
// gwa's blackout to gwb's done took longer there than a 20 s stream at
// 1,000 datagrams/s (gwa held 9,052 datagrams before it died), so there
// the stream runs until the steps are done and then a short tail
// (seqSendUntil), at a hundredth of the host's rate (vmMoveTiming's
// pace), and every wait is TANDEM_TEST_SCALE times the host's.
//
// It still skips there (TANDEM_MIGRATE_VM_TIMING=1 runs it): of two VM
// runs at TANDEM_TEST_SCALE=10 one passed (44 s), the other, on a loaded
// host, had every datagram after the takeover at D once but 4 of them
// out of order (98 s); where the order broke is now logged, not yet seen.
func TestMigrateFailover(t *testing.T) {
	skipTimingInVM(t)
	scale := testScale(t)
	wait := func(d time.Duration) time.Duration { return time.Duration(scale) * d }
	p := newPairLab(t)
	p.StartWait = wait(30 * time.Second)
	extra := []string{"--migrate-iface", "eth0"}
	p.start(t, "a", extra...)
	p.start(t, "b", extra...)
	p.settled(t, "a", wait(30*time.Second))

	// S and D both carry the endpoint's address (a VM's address on
	// whichever host runs it); the client reaches it through the VIP.
	s, d := p.backends[0], p.backends[1]
	const sHop, dHop = "10.79.2.11", "10.79.2.12"
	for _, h := range []*lab.Host{s, d} {
		if err := h.IP("addr", "add", migEP.String()+"/32", "dev", "lo"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.client.IP("route", "add", migEP.String()+"/32", "via", fvip); err != nil {
		t.Fatal(err)
	}
	// Both gateways know both hosts' MACs, fixed: the stage forwards by
	// the neighbour table and drops (no_route) rather than resolve.
	for _, g := range []string{"a", "b"} {
		for _, n := range []struct {
			hop string
			h   *lab.Host
		}{{sHop, s}, {dHop, d}} {
			if err := p.gw[g].IP("neigh", "replace", n.hop, "lladdr", mac(t, n.h, "eth0"), "dev", "eth1", "nud", "permanent"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := p.migOn("a", "endpoint", "set", migEP.String(), sHop); err != nil {
		t.Fatal(err)
	}
	if _, err := p.migOn("a", "migrate", "start", migEP.String(), "--to", dHop); err != nil {
		t.Fatal(err)
	}
	waitFor(t, wait(10*time.Second), "gwb has the migration", func() (bool, string) {
		e, err := p.migration("b")
		if err != nil {
			return false, err.Error()
		}
		return e != nil && e.Migration != nil && e.Migration.State == migrate.StateMigrating, fmt.Sprintf("%+v", e)
	})

	rs, rd := listenSeq(t, s, 9000), listenSeq(t, d, 9000)
	gwbMAC := mac(t, p.gw["b"], "eth0")
	// The host: 10,000 datagrams/s for 10 s, the steps inside it. The
	// VM: the stream ends tailFor after the steps (stop), or after
	// streamFor at the latest (the verdict then says the stream ended
	// before the move was done).
	rate, streamFor := 10000, 10*time.Second
	var (
		stop    chan struct{}
		tailFor time.Duration
	)
	if os.Getenv("TANDEM_VMTEST") != "" {
		rate, streamFor = max(10000/(scale*scale), 200), 5*time.Minute
		stop, tailFor = make(chan struct{}), 3*time.Second
		t.Logf("in the VM: %d datagrams/s until the steps are done, then %s", rate, tailFor)
	}
	var (
		progress            atomic.Uint64
		askedAt, blackoutAt uint64 // datagrams written when gwa was asked to hold, when it said it did
		killAt              uint64 // ... when gwa died
		takeover, switchAt  uint64 // ... when the client's entry named gwb, at the switch
		doneAt              uint64 // ... when the move was done
		before              *migrate.Endpoint
		after, final        *migrate.Endpoint
		detect              time.Duration
		evErr               error
	)
	step := func() {
		if stop != nil {
			defer close(stop) // done or failed: the stream's tail
		}
		fail := func(err error) { evErr = err }
		askedAt = progress.Load()
		if _, err := p.migOn("a", "migrate", "blackout", migEP.String()); err != nil {
			fail(err)
			return
		}
		blackoutAt = progress.Load()
		// The blackout is replicated before the owner dies (the sync
		// runs every 10 ms): the failover under test is of a move in
		// its blackout, not a race with the sync.
		if err := gwpair.WaitFor(wait(10*time.Second), "gwb has the blackout", func() (bool, string) {
			e, err := p.migration("b")
			if err != nil {
				return false, err.Error()
			}
			return e != nil && e.Migration != nil && e.Migration.State == migrate.StateBlackout, fmt.Sprintf("%+v", e)
		}); err != nil {
			fail(err)
			return
		}
		var err error
		if before, err = p.migration("a"); err != nil {
			fail(err)
			return
		}
		// gwa's hold count reaches gwb while gwa holds (the owner marks
		// a holding record for the sync): gwb's copy catches up with
		// what gwa said it held. Before, gwb's copy kept the count of
		// the blackout step itself.
		if err := gwpair.WaitFor(wait(10*time.Second), "gwb's copy of the hold count reaches gwa's", func() (bool, string) {
			e, err := p.migration("b")
			if err != nil {
				return false, err.Error()
			}
			if e == nil || e.Migration == nil {
				return false, fmt.Sprintf("gwb has no migration: %+v", e)
			}
			return e.Migration.Held >= before.Migration.Held, fmt.Sprintf("gwb's copy says %d held, gwa said %d", e.Migration.Held, before.Migration.Held)
		}); err != nil {
			fail(err)
			return
		}
		p.daemons["a"].Kill()
		for _, i := range []string{"eth0", "eth1"} {
			if err := p.gw["a"].IP("link", "set", i, "down"); err != nil {
				fail(err)
				return
			}
		}
		killAt = progress.Load()
		start := time.Now()
		// The takeover as the client sees it: its neighbour entry for
		// the VIP names gwb (the gratuitous ARP arrived).
		if err := gwpair.WaitFor(wait(10*time.Second), "the client's neighbour entry for the VIP names gwb", func() (bool, string) {
			out, err := p.client.Cmd("ip", "neigh", "show", fvip, "dev", "eth0").CombinedOutput()
			return err == nil && strings.Contains(string(out), gwbMAC), string(out)
		}); err != nil {
			fail(err)
			return
		}
		takeover = progress.Load()
		detect = time.Since(start)
		if after, err = p.migration("b"); err != nil {
			fail(err)
			return
		}
		// gwb holds for a while: the blackout goes on past the takeover.
		time.Sleep(wait(300 * time.Millisecond))
		switchAt = progress.Load()
		if _, err := p.migOn("b", "migrate", "switch", migEP.String()); err != nil {
			fail(err)
			return
		}
		if final, err = p.migration("b"); err != nil {
			fail(err)
			return
		}
		if _, err := p.migOn("b", "migrate", "done", migEP.String()); err != nil {
			fail(err)
			return
		}
		doneAt = progress.Load()
	}
	sent := seqSendUntil(t, p.client, migEP, 9000, rate, streamFor, stop, tailFor, []event{{500 * time.Millisecond, step}}, &progress)
	time.Sleep(wait(300 * time.Millisecond)) // the last datagrams reach D
	gotS, gotD := rs.stop(), rd.stop()
	for _, l := range strings.Split(p.daemons["b"].Log(), "\n") {
		if strings.Contains(l, "migration") || strings.Contains(l, "took the VIPs") || strings.Contains(l, "sync role") {
			t.Log(l)
		}
	}
	if evErr != nil {
		t.Fatal(evErr)
	}
	if doneAt >= sent {
		t.Fatalf("the stream (%d datagrams) ended before the move was done (%d): nothing went straight to D", sent, doneAt)
	}

	// The new owner continues the old owner's move.
	if after == nil || after.Migration == nil || before == nil || before.Migration == nil {
		t.Fatalf("migration on gwa before the kill: %+v; on gwb after the takeover: %+v", before, after)
	}
	bm, am := before.Migration, after.Migration
	if bm.State != migrate.StateBlackout || am.State != bm.State || am.From != bm.From || am.To != bm.To {
		t.Errorf("gwb's migration after the takeover: %s %s -> %s; gwa's before the kill: %s %s -> %s",
			am.State, am.From, am.To, bm.State, bm.From, bm.To)
	}
	if final == nil || final.Migration == nil || final.Migration.State != migrate.StateSwitched {
		t.Errorf("gwb after the switch: %+v", final)
	}
	// gwb counts lost at least what gwa had held when gwb's copy caught
	// up (none of it was flushed: gwa died in the blackout). Read after
	// the switch: the takeover as the client sees it (the ARP) can come
	// before gwb's controller adopts the record and counts the loss.
	if final != nil && final.Migration != nil && final.Migration.Lost < bm.Held {
		t.Errorf("gwb counts %d held packets lost after the switch; gwa had held %d before it died, all in its ring", final.Migration.Lost, bm.Held)
	}

	// From takeover+1 on every datagram was written after the client's
	// entry named gwb (seqSendTo).
	first := takeover + 1
	atS := map[uint64]int{}
	for _, q := range gotS {
		atS[q]++
		if q >= first {
			t.Errorf("datagram %d, sent after the takeover (from %d), reached S", q, first)
		}
	}
	for _, q := range gotD {
		if atS[q] > 0 {
			t.Errorf("datagram %d reached both S and D", q)
		}
	}
	for q, n := range atS {
		if n > 1 {
			t.Errorf("datagram %d reached S %d times", q, n)
		}
	}
	_, dupD, reoD := judge(gotD, sent) // over everything sent: only its order and duplicates matter
	var missing []uint64
	seenD := map[uint64]bool{}
	for _, q := range gotD {
		seenD[q] = true
	}
	for q := first; q < sent; q++ {
		if !seenD[q] {
			missing = append(missing, q)
		}
	}
	if reoD > 0 {
		// Where the order broke: each datagram that arrived after a
		// higher one, with its neighbours in D's arrival order.
		var b strings.Builder
		var hi uint64
		n := 0
		for i, q := range gotD {
			if i > 0 && q < hi && n < 10 {
				n++
				fmt.Fprintf(&b, "  arrival %d: %d after %d (around it: %v)\n", i, q, hi, gotD[max(0, i-3):min(len(gotD), i+4)])
			}
			hi = max(hi, q)
		}
		t.Logf("out of order at D (kill %d, takeover %d, switch %d, done %d):\n%s", killAt, takeover, switchAt, doneAt, b.String())
	}
	if len(missing) > 0 || dupD > 0 || reoD > 0 {
		t.Errorf("at D: %d of the %d datagrams sent after the takeover missing (first: %v), %d duplicated, %d out of order",
			len(missing), sent-first, missing[:min(len(missing), 10)], dupD, reoD)
	}
	// What was lost, and where, by the timeline (not asserted, see the
	// comment on the test).
	count := func(from, to uint64) (lost uint64) {
		for q := from; q < to; q++ {
			if atS[q] == 0 && !seenD[q] {
				lost++
			}
		}
		return
	}
	heldAtD := 0
	for _, q := range gotD {
		if q >= first && q < switchAt {
			heldAtD++
		}
	}
	t.Logf("sent %d at %d/s; at S %d, at D %d", sent, rate, len(gotS), len(gotD))
	t.Logf("migrating (0..%d): lost %d", askedAt, count(0, askedAt))
	t.Logf("while gwa's blackout step ran (%d..%d): lost %d (held by gwa: in its ring when it died)", askedAt, blackoutAt, count(askedAt, blackoutAt))
	t.Logf("held by gwa, which died (%d..%d): lost %d", blackoutAt, killAt, count(blackoutAt, killAt))
	t.Logf("kill to takeover, %s (%d..%d, the election's detection and the ARP): lost %d",
		detect.Round(time.Millisecond), killAt, first, count(killAt, first))
	t.Logf("held by gwb (%d..%d): %d delivered to D after the switch; after it (%d..%d): lost %d",
		first, switchAt, heldAtD, switchAt, sent, count(switchAt, sent))
	t.Logf("gwa's record just before the kill: %+v", *bm)
	t.Logf("gwb's record: before the switch %+v, after %+v", *am, *final.Migration)
}
