package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/gwpair"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/traffic"
)

// Bounds on every wait: generous, because the machine is shared and
// slow; each ends as soon as its event is seen.
const (
	settleWithin   = 60 * time.Second // one owner, the other caught up
	holdersWithin  = 30 * time.Second // the addresses on exactly one host
	progressWithin = 60 * time.Second // every connection moves both ways (TCP's backoff after a stall)
	tablesWithin   = 30 * time.Second // both connection tables equal
	neighWithin    = 10 * time.Second // the announcements reached every neighbour (the last 5 s after a takeover)
	flowWithin     = 30 * time.Second // the UDP stream echoes again
	goroutineSlack = 5                // a daemon's growth that is not a leak
	fdSlack        = 3
	// A steady daemon (adverts every 50 ms, a sync tick every 10 ms, the
	// connections' touches) uses a few percent of a core; an advert storm
	// uses all of it. Measured in CPU time over a wall-clock stretch: on
	// a busy machine the stretch only gets more generous.
	cpuWindow = 5 * time.Second
	cpuMax    = 0.5 // of one core
	advertMax = 4   // times the adverts due
)

// echoAddr is the UDP echo server on be1: the client reaches it through
// the gateway that owns the VIPs (a route via the VIP), so the stream
// crosses every change of owner like the connections do.
var echoAddr = netip.MustParseAddrPort("10.79.2.11:9000")

// vipAddrs are the addresses the owner holds.
var vipAddrs = []string{gwpair.VIP, gwpair.Inner, gwpair.VIP6, gwpair.Inner6}

type config struct {
	bin      string
	dir      string
	duration time.Duration
	seed     uint64
	conns    int
	kinds    []kind
	noSteady bool // no checkSteady
	out      io.Writer
}

type soak struct {
	config
	p      *gwpair.Pair
	r      *rand.Rand
	t      *tally
	be     *backends
	conns  []*conn
	echo   *traffic.EchoServer
	flood  *traffic.Flood
	logs   map[string]*os.File
	round  int
	owner  string                    // after the last settle
	base   map[string]usage          // by "pid/role": the first measure of each daemon in each role
	pinned map[string][]string       // by gateway, at the start
	stop   chan struct{}             // closed: no more rounds
	held   map[string]*gwpair.Daemon // stopped daemons (SIGSTOP), left out of the status queries
}

func (s *soak) logf(f string, args ...any) {
	fmt.Fprintf(s.out, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(f, args...))
}

// run is the whole soak: set up, rounds until the time is up, final
// checks. It returns the tally; an error means the soak could not run.
func run(cfg config, stop chan struct{}) (*tally, error) {
	s := &soak{config: cfg, r: rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x50a6)), t: newTally(), logs: map[string]*os.File{},
		base: map[string]usage{}, pinned: map[string][]string{}, stop: stop, held: map[string]*gwpair.Daemon{}}
	defer s.close()
	if err := s.setup(); err != nil {
		return s.t, err
	}
	end := time.Now().Add(s.duration)
	for time.Now().Before(end) {
		select {
		case <-s.stop:
			s.logf("interrupted")
			end = time.Now()
			continue
		default:
		}
		s.round++
		s.inject(pick(s.r, s.kinds))
	}
	s.final()
	return s.t, nil
}

func (s *soak) setup() error {
	var err error
	if s.p, err = gwpair.New(s.bin, s.dir, 50*time.Millisecond); err != nil {
		return err
	}
	for _, g := range []string{"a", "b"} {
		if s.logs[g], err = os.Create(filepath.Join(s.dir, "gw"+g+".log")); err != nil {
			return err
		}
		if err := s.start(g); err != nil {
			return err
		}
	}
	if err := gwpair.WaitFor(settleWithin, "gwa owns, gwb caught up", func() (bool, string) { return s.p.Settled("a") }); err != nil {
		return err
	}
	s.owner = "a"
	if s.be, err = serve(s.p.Backends); err != nil {
		return err
	}
	// The UDP stream: client -> (owner, forwarding) -> be1, and back.
	if err := s.p.Client.IP("route", "add", "10.79.2.0/24", "via", gwpair.VIP); err != nil {
		return err
	}
	if s.echo, err = traffic.ListenEcho(s.p.Backends[0].Do, echoAddr); err != nil {
		return err
	}
	if s.flood, err = traffic.StartFlood(s.p.Client.Do, echoAddr, traffic.FloodConfig{Size: 64, Burst: 1, Gap: 10 * time.Millisecond,
		// Paced by Gap alone: the window would close for good once a
		// fault has lost that many datagrams.
		Window: 1 << 62}); err != nil {
		return err
	}
	for i := range s.config.conns {
		c, err := dial(s.p.Client, s.be, []string{gwpair.VIP, gwpair.VIP6}[i%2])
		if err != nil {
			return err
		}
		s.conns = append(s.conns, c)
	}
	s.logf("%d connections open through the SYN proxy (IPv4 and IPv6), a UDP stream to %s; gwa owns", len(s.conns), echoAddr)
	// The start is a round like any other, without a fault.
	s.checks(kind{name: "start", lose: never}, "", false, 0)
	s.checkSteady("at the start")
	for g, h := range s.p.GW {
		if s.pinned[g], err = pins(h.BPFFS()); err != nil {
			return err
		}
	}
	return nil
}

func (s *soak) start(g string) error {
	fmt.Fprintf(s.logs[g], "=== %s: tandem up (round %d)\n", time.Now().Format(time.RFC3339Nano), s.round)
	_, err := s.p.Start(g, s.logs[g], "--metrics-addr", metricsAddr)
	return err
}

func (s *soak) close() {
	for _, c := range s.conns {
		c.close()
	}
	if s.flood != nil {
		s.flood.Stop(0)
	}
	if s.echo != nil {
		s.echo.Close()
	}
	if s.be != nil {
		s.be.close()
	}
	for _, d := range s.held {
		d.Signal(syscall.SIGCONT)
	}
	if s.p != nil {
		if err := s.p.Close(); err != nil {
			s.logf("cleanup: %v", err)
		}
	}
	for _, f := range s.logs {
		f.Close()
	}
}

// inject runs one round: the fault, a check while it lasts, the heal,
// and the checks after it.
func (s *soak) inject(k kind) {
	target := []string{"a", "b"}[s.r.IntN(2)]
	if k.name == "handover" {
		target = s.owner // on the standby it is refused
	}
	wasOwner := target == s.owner
	role := map[bool]string{true: "owner", false: "standby"}[wasOwner]
	s.t.faults[k.name]++
	mark := s.flood.Sent()
	gw := s.p.GW[target]
	what, during, heal := s.fault(k, target, gw)
	s.logf("round %d: %s on gw%s (%s): %s", s.round, k.name, target, role, what)
	if during != nil {
		s.t.check("during a fault: the VIPs' holders")
		if err := during(); err != nil {
			s.t.violate(s.round, "%s on gw%s (%s), while it lasts: %v", k.name, target, role, err)
		}
	}
	if err := heal(); err != nil {
		s.t.violate(s.round, "%s on gw%s (%s): heal: %v", k.name, target, role, err)
	}
	s.checks(k, target, wasOwner, mark)
}

// fault starts fault k on gateway target and returns what it did, a
// check of the state while it lasts (nil: none) and the heal, which
// waits out the fault's hold time first.
func (s *soak) fault(k kind, target string, gw *lab.Host) (what string, during func() error, heal func() error) {
	one := func() error { return s.holders(1) }
	hold := func(lo, hi time.Duration) time.Duration { return between(s.r, lo, hi) }
	fail := func(err error) (string, func() error, func() error) {
		return "", nil, func() error { return err }
	}
	switch k.name {
	case "kill":
		h := hold(200*time.Millisecond, 2*time.Second)
		s.p.Daemons[target].Kill()
		delete(s.p.Daemons, target)
		return fmt.Sprintf("SIGKILL, restart after %s", h.Round(time.Millisecond)), one, func() error {
			time.Sleep(h)
			return s.start(target)
		}
	case "stop":
		h := hold(500*time.Millisecond, 3*time.Second)
		d := s.p.Daemons[target]
		if err := d.Signal(syscall.SIGSTOP); err != nil {
			return fail(err)
		}
		s.held[target] = d
		delete(s.p.Daemons, target)
		return fmt.Sprintf("SIGSTOP for %s", h.Round(time.Millisecond)), one, func() error {
			time.Sleep(h)
			delete(s.held, target)
			s.p.Daemons[target] = d
			return d.Signal(syscall.SIGCONT)
		}
	case "flap":
		h := hold(500*time.Millisecond, 2*time.Second)
		iface := []string{"eth0", "eth1"}[s.r.IntN(2)]
		if err := gw.IP("link", "set", iface, "down"); err != nil {
			return fail(err)
		}
		return fmt.Sprintf("%s down for %s", iface, h.Round(time.Millisecond)), one, func() error {
			time.Sleep(h)
			return gw.IP("link", "set", iface, "up")
		}
	case "cut-sync":
		h := hold(time.Second, 4*time.Second)
		if err := gw.IP("link", "set", "sync0", "down"); err != nil {
			return fail(err)
		}
		return fmt.Sprintf("sync0 down for %s", h.Round(time.Millisecond)), one, func() error {
			time.Sleep(h)
			return gw.IP("link", "set", "sync0", "up")
		}
	case "cut-service":
		h := hold(time.Second, 3*time.Second)
		port := []string{"f", "b"}[s.r.IntN(2)] // front or back
		port = target + port
		sw := s.p.Host("sw")
		if err := nft(sw, "add table bridge soak; add chain bridge soak cut { type filter hook forward priority 0; policy accept; }; "+
			"add rule bridge soak cut iifname "+port+" drop; add rule bridge soak cut oifname "+port+" drop"); err != nil {
			return fail(err)
		}
		return fmt.Sprintf("the switch drops everything on port %s for %s", port, h.Round(time.Millisecond)), one, func() error {
			time.Sleep(h)
			return nft(sw, "delete table bridge soak")
		}
	case "partition":
		h := hold(time.Second, 3*time.Second)
		if err := s.partition("on"); err != nil {
			return fail(err)
		}
		return fmt.Sprintf("sync link and switch ports cut between the gateways for %s", h.Round(time.Millisecond)), func() error {
				return s.holders(2)
			}, func() error {
				time.Sleep(h)
				return s.partition("off")
			}
	case "handover":
		r := s.p.Tandem(gw, "vip", "handover", "--state-dir", s.p.State[target])
		var err error
		if r.Err != nil || r.Code != 0 {
			err = fmt.Errorf("tandem vip handover: exit %d %v: %s", r.Code, r.Err, strings.TrimSpace(r.Stderr))
		}
		return "tandem vip handover", nil, func() error { return err }
	case "restart":
		h := hold(200*time.Millisecond, time.Second)
		d := s.p.Daemons[target]
		delete(s.p.Daemons, target)
		d.Signal(syscall.SIGTERM)
		select {
		case <-d.Exited():
		case <-time.After(30 * time.Second):
			d.Kill()
			return fail(fmt.Errorf("the daemon on gw%s did not exit within 30 s of SIGTERM", target))
		}
		if r := s.p.Tandem(gw, "down", "--bpffs", gw.BPFFS()); r.Err != nil || r.Code != 0 {
			return fail(fmt.Errorf("tandem down: exit %d %v: %s", r.Code, r.Err, r.Stderr))
		}
		return fmt.Sprintf("SIGTERM, tandem down, tandem up after %s", h.Round(time.Millisecond)), one, func() error {
			time.Sleep(h)
			return s.start(target)
		}
	case "down-live":
		h := hold(200*time.Millisecond, time.Second)
		if r := s.p.Tandem(gw, "down", "--bpffs", gw.BPFFS()); r.Err != nil || r.Code != 0 {
			return fail(fmt.Errorf("tandem down: exit %d %v: %s", r.Code, r.Err, r.Stderr))
		}
		return fmt.Sprintf("tandem down under the daemon, tandem up after %s", h.Round(time.Millisecond)), nil, func() error {
			time.Sleep(h)
			d := s.p.Daemons[target]
			select {
			case <-d.Exited():
				delete(s.p.Daemons, target)
				return s.start(target)
			default:
			}
			// A daemon still serves the root: up applies and leaves it in charge.
			if r := s.p.Tandem(gw, s.p.Args(target)...); r.Err != nil || r.Code != 0 {
				return fmt.Errorf("tandem up with the daemon running: exit %d %v: %s", r.Code, r.Err, r.Stderr)
			}
			return nil
		}
	}
	panic("no fault " + k.name)
}

func nft(h *lab.Host, script string) error {
	out, err := h.Cmd("nft", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft %s: %v: %s", script, err, out)
	}
	return nil
}

// partition cuts (on) or heals (off) both paths between the gateways: the
// sync link, and the switch's ports isolated from each other (the client
// and the backends still reach both).
func (s *soak) partition(on string) error {
	for _, port := range []string{"af", "bf", "ab", "bb"} {
		if out, err := s.p.Host("sw").Cmd("bridge", "link", "set", "dev", port, "isolated", on).CombinedOutput(); err != nil {
			return fmt.Errorf("bridge link set %s isolated %s: %v %s", port, on, err, out)
		}
	}
	return s.p.GW["a"].IP("link", "set", "sync0", map[string]string{"on": "down", "off": "up"}[on])
}

// holding says which gateways hold all the VIP addresses; an error when
// one holds only some.
func (s *soak) holding() ([]string, error) {
	var out []string
	for _, g := range []string{"a", "b"} {
		b, err := s.p.GW[g].Cmd("ip", "-o", "addr", "show").Output()
		if err != nil {
			return nil, fmt.Errorf("ip addr on gw%s: %w", g, err)
		}
		n := 0
		for _, a := range vipAddrs {
			if strings.Contains(string(b), " "+a+"/") {
				n++
			}
		}
		switch n {
		case len(vipAddrs):
			out = append(out, g)
		case 0:
		default:
			return out, fmt.Errorf("gw%s holds %d of the %d VIP addresses", g, n, len(vipAddrs))
		}
	}
	return out, nil
}

// holders waits until exactly n gateways hold the VIP addresses.
func (s *soak) holders(n int) error {
	return gwpair.WaitFor(holdersWithin, fmt.Sprintf("the VIP addresses on exactly %d gateway(s)", n), func() (bool, string) {
		h, err := s.holding()
		if err != nil {
			return false, err.Error()
		}
		return len(h) == n, fmt.Sprintf("held by %v", h)
	})
}

// checks are the invariants after a heal: one owner holding the
// addresses, the other caught up; every connection alive and moving both
// ways (or lost as documented for k on target), both tables equal, the
// UDP stream flowing. mark is the stream's sequence when the fault began.
func (s *soak) checks(k kind, target string, wasOwner bool, mark uint64) {
	t0 := time.Now()
	s.t.check("after a heal: both daemons run")
	for g, d := range s.p.Daemons {
		select {
		case <-d.Exited():
			log := d.Log()
			s.t.violate(s.round, "%s: gw%s's daemon exited; its log ends:\n%s", k.name, g, log[max(0, len(log)-2000):])
			if err := s.start(g); err != nil {
				s.t.violate(s.round, "%s: restart gw%s's daemon: %v", k.name, g, err)
			}
		default:
		}
	}
	s.t.check("after a heal: exactly one owner")
	var owner string
	err := gwpair.WaitFor(settleWithin, "exactly one owner, the other caught up, the addresses on the owner", func() (bool, string) {
		for _, g := range []string{"a", "b"} {
			if ok, state := s.p.Settled(g); ok {
				h, err := s.holding()
				if err != nil || !slices.Equal(h, []string{g}) {
					return false, fmt.Sprintf("%s; addresses held by %v %v", state, h, err)
				}
				owner = g
				return true, state
			}
		}
		_, _, state := s.p.Owners()
		return false, state
	})
	if err != nil {
		s.t.violate(s.round, "%s: %v", k.name, err)
		return // the rest would only repeat it
	}
	if d := time.Since(t0); d > s.t.settle[k.name] {
		s.t.settle[k.name] = d
	}
	if owner != s.owner {
		s.logf("  gw%s owns now (%s after the heal)", owner, time.Since(t0).Round(time.Millisecond))
	}
	s.owner = owner
	for _, c := range []struct {
		what string
		f    func()
	}{
		{"neighbours", func() { s.checkNeighbours(k) }},
		{"leak baselines", s.measureNew},
		{"connections", func() { s.checkConns(k, target, wasOwner) }},
		{"tables", func() { s.checkTables(k) }},
		{"UDP stream", func() { s.checkUDP(k, mark) }},
	} {
		t1 := time.Now()
		c.f()
		if d := time.Since(t1); d > 5*time.Second {
			s.logf("  the %s check took %s", c.what, d.Round(time.Millisecond))
		}
	}
}

// checkNeighbours waits until the client's and the backends' neighbour
// entries for the VIP addresses name the owner's MAC (or are unresolved):
// an owner's announcements must pull every host on its segments to it.
// A host left pointing at the other gateway sends it segments it drops
// (its gate is closed) until the entry ages out, half a minute or more.
func (s *soak) checkNeighbours(k kind) {
	s.t.check("after a heal: neighbours point to the owner")
	mac := func(g, iface string) string {
		// ip, not /sys/class/net: nsenter --net leaves /sys showing the
		// initial namespace's interfaces.
		out, _ := s.p.GW[g].Cmd("ip", "-o", "link", "show", iface).Output()
		f := strings.Fields(string(out))
		if i := slices.Index(f, "link/ether"); i >= 0 && i+1 < len(f) {
			return f[i+1]
		}
		return "?"
	}
	type want struct {
		h     *lab.Host
		addrs []string
		iface string
	}
	wants := []want{{s.p.Client, []string{gwpair.VIP, gwpair.VIP6}, "eth0"}}
	for _, b := range s.p.Backends {
		wants = append(wants, want{b, []string{gwpair.Inner, gwpair.Inner6}, "eth1"})
	}
	owner := s.owner
	if err := gwpair.WaitFor(neighWithin, "every neighbour entry for the VIP addresses names the owner gw"+owner, func() (bool, string) {
		var wrong []string
		for _, w := range wants {
			good := mac(owner, w.iface)
			for _, a := range w.addrs {
				out, _ := w.h.Cmd("ip", "neigh", "show", a).Output()
				f := strings.Fields(string(out))
				if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) && f[i+1] != good {
					wrong = append(wrong, fmt.Sprintf("%s: %s", w.h.Name, strings.TrimSpace(string(out))))
				}
			}
		}
		return len(wrong) == 0, fmt.Sprintf("gw%s's MACs %s, %s; wrong: %s", owner, mac(owner, "eth0"), mac(owner, "eth1"), strings.Join(wrong, "; "))
	}); err != nil {
		s.t.violate(s.round, "%s: %v", k.name, err)
	}
}

// checkConns waits until every connection has moved both ways since now;
// a connection that broke or stalled is lost: documented for some faults
// (kind.lose), a violation otherwise. Lost ones are replaced.
func (s *soak) checkConns(k kind, target string, wasOwner bool) {
	s.t.check("after a heal: no connection lost")
	type mark struct{ up, down uint64 }
	start := make([]mark, len(s.conns))
	for i, c := range s.conns {
		start[i].up, start[i].down = c.progress()
	}
	moved := func(i int) bool {
		up, down := s.conns[i].progress()
		return up > start[i].up && down > start[i].down
	}
	gwpair.WaitFor(progressWithin, "every connection moves both ways", func() (bool, string) {
		waiting := 0
		for i, c := range s.conns {
			if c.broken() == "" && !moved(i) {
				waiting++
			}
		}
		return waiting == 0, fmt.Sprintf("%d connections did not move", waiting)
	})
	allowed := target != "" && k.lose(wasOwner) == lossThrough
	var keep []*conn
	var lost, whys []string
	for i, c := range s.conns {
		why := c.broken()
		if why == "" && !moved(i) {
			why = fmt.Sprintf("stalled: no progress both ways in %s", progressWithin)
		}
		if why == "" {
			keep = append(keep, c)
			continue
		}
		whys = append(whys, why)
		if c.corrupt() {
			s.t.violate(s.round, "%s: connection %s: its stream arrived corrupted: %s", k.name, c.name, why)
		} else if !allowed {
			lost = append(lost, c.name+" ("+why+")")
		}
		if allowed {
			s.t.lost[k.name]++
		}
		c.close()
	}
	if len(lost) > 0 {
		s.t.violate(s.round, "%s on gw%s: %d connection(s) lost: %s", k.name, target, len(lost), strings.Join(lost[:min(len(lost), 5)], "; "))
	}
	if n := len(s.conns) - len(keep); n > 0 {
		s.logf("  %d connection(s) lost (the first: %s); opening new ones", n, whys[0])
	}
	s.conns = keep
	s.t.check("after a heal: new connections work")
	for i := len(s.conns); i < s.config.conns; i++ {
		c, err := dial(s.p.Client, s.be, []string{gwpair.VIP, gwpair.VIP6}[i%2])
		if err != nil {
			s.t.violate(s.round, "%s: a new connection: %v", k.name, err)
			return
		}
		s.conns = append(s.conns, c)
	}
}

// checkTables waits until both gateways' connection tables are equal but
// for the last-seen time and its version: every live connection
// refreshes them each second, so a snapshot of two tables rarely catches
// both at the same refresh.
func (s *soak) checkTables(k kind) {
	s.t.check("after a heal: both tables equal")
	read := func(g string) (map[maps.ConnKey]maps.ConnVal, error) {
		c, err := gwpair.ConnTable(s.p.GW[g])
		for key, v := range c {
			v.Sync.Version, v.LastNs = 0, 0
			c[key] = v
		}
		return c, err
	}
	if err := gwpair.WaitFor(tablesWithin, "both connection tables equal", func() (bool, string) {
		a, errA := read("a")
		b, errB := read("b")
		if errA != nil || errB != nil {
			return false, fmt.Sprint(errA, errB)
		}
		diff := 0
		for key, v := range a {
			if w, ok := b[key]; !ok || !reflect.DeepEqual(v, w) {
				diff++
			}
		}
		for key := range b {
			if _, ok := a[key]; !ok {
				diff++
			}
		}
		return diff == 0 && len(a) >= len(s.conns), fmt.Sprintf("gwa %d entries, gwb %d, %d differ; %d connections open", len(a), len(b), diff, len(s.conns))
	}); err != nil {
		s.t.violate(s.round, "%s: %v", k.name, err)
	}
}

// checkUDP waits until the stream echoes again and counts what it lost
// since mark (the fault's start) up to a second ago.
func (s *soak) checkUDP(k kind, mark uint64) {
	s.t.check("after a heal: the UDP stream flows")
	echoes := s.flood.Echoes()
	if err := gwpair.WaitFor(flowWithin, "the UDP stream echoes again", func() (bool, string) {
		return s.flood.Echoes() > echoes+10, fmt.Sprintf("%d echoes", s.flood.Echoes()-echoes)
	}); err != nil {
		s.t.violate(s.round, "%s: %v", k.name, err)
	}
	if k.name != "start" {
		time.Sleep(time.Second) // the last echoes of the stretch arrive
		s.t.udpLost[k.name] += s.flood.MissingIn(mark, s.flood.Sent()-100)
	}
}

// measureNew measures each daemon the first time it is seen settled in
// a role (owner or standby): the baseline its end of run is compared with.
func (s *soak) measureNew() {
	for g, d := range s.p.Daemons {
		key := fmt.Sprintf("%d/%v", d.Pid(), g == s.owner)
		if _, ok := s.base[key]; ok {
			continue
		}
		u, err := measure(s.p.GW[g], d.Pid())
		if err != nil {
			s.t.violate(s.round, "measure gw%s's daemon: %v", g, err)
			continue
		}
		s.base[key] = u
	}
}

// final checks the end state: no fault is active, one owner; every
// daemon's goroutines, fds and map fds against its own start in the same
// role, and the pins against the start.
func (s *soak) final() {
	s.logf("final checks")
	s.checks(kind{name: "end", lose: never}, "", false, 0)
	for _, g := range []string{"a", "b"} {
		d := s.p.Daemons[g]
		if d == nil {
			continue
		}
		s.t.check("at the end: no goroutine, fd or map fd leak")
		key := fmt.Sprintf("%d/%v", d.Pid(), g == s.owner)
		base, ok := s.base[key]
		now, err := measure(s.p.GW[g], d.Pid())
		if err != nil || !ok {
			s.t.violate(s.round, "leak check on gw%s: %v (baseline %v)", g, err, ok)
			continue
		}
		s.logf("  gw%s daemon %d (%s): %s at its start, %s now", g, d.Pid(), map[bool]string{true: "owner", false: "standby"}[g == s.owner], base, now)
		if now.goroutines > base.goroutines+goroutineSlack || now.fds > base.fds+fdSlack || now.mapFDs > base.mapFDs {
			s.t.violate(s.round, "gw%s's daemon leaks: %s at its start, %s at the end", g, base, now)
		}
	}
	s.checkSteady("at the end")
	for g, h := range s.p.GW {
		s.t.check("at the end: the same pins as at the start")
		now, err := pins(h.BPFFS())
		if err != nil || !slices.Equal(now, s.pinned[g]) {
			s.t.violate(s.round, "gw%s's pins: %d at the start, %d at the end %v", g, len(s.pinned[g]), len(now), err)
		}
	}
	s.logf("UDP stream: %d sent, %d echoed, %d echoed twice", s.flood.Sent(), s.flood.Echoes(), s.flood.Dups())
}

// checkSteady measures each daemon's CPU time and the UDP datagrams its
// host receives (adverts: the UDP stream is forwarded, never delivered
// to a gateway) over cpuWindow of a steady pair: an advert storm or a busy
// loop shows as most of a core, the storm as thousands of datagrams a
// second where 2 paths x 20 adverts a second are due.
func (s *soak) checkSteady(when string) {
	if s.noSteady {
		return
	}
	s.t.check(when + ": steady daemons mostly idle, adverts at their rate")
	cpu0, udp0 := map[string]int64{}, map[string]int64{}
	for g, d := range s.p.Daemons {
		cpu0[g], _ = cpuTicks(d.Pid())
		udp0[g], _ = s.p.GW[g].SNMP("Udp", "InDatagrams")
	}
	t0 := time.Now()
	time.Sleep(cpuWindow)
	for g, d := range s.p.Daemons {
		cpu, err := cpuTicks(d.Pid())
		udp, err2 := s.p.GW[g].SNMP("Udp", "InDatagrams")
		if err != nil || err2 != nil {
			s.t.violate(s.round, "gw%s's daemon: %v %v", g, err, err2)
			continue
		}
		secs := time.Since(t0).Seconds()
		share := float64(cpu-cpu0[g]) / 100 / secs
		rate := float64(udp-udp0[g]) / secs
		due := 2 / s.p.Interval.Seconds()
		s.logf("  gw%s daemon: %.1f%% of a core, %.0f datagrams/s received (%.0f adverts/s due)", g, 100*share, rate, due)
		if share > cpuMax {
			s.t.violate(s.round, "%s: gw%s's daemon used %.0f%% of a core over %s of a steady pair", when, g, 100*share, cpuWindow)
		}
		if rate > advertMax*due {
			s.t.violate(s.round, "%s: gw%s received %.0f datagrams/s over %s of a steady pair, %.0f adverts/s due (an advert storm)", when, g, rate, cpuWindow, due)
		}
	}
}
