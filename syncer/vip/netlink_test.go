package vip

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestProbeAndAnnounce on a two-host segment: a probe finds the host that
// holds an address (ARP for IPv4, a DAD NS for IPv6) and nobody for an
// address nobody holds; adding an address and announcing it moves the
// peer's existing neighbour entry to this host's MAC (gratuitous ARP,
// unsolicited NA with override).
func TestProbeAndAnnounce(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "sw"}},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "a", Iface: "eth0", Addrs: []string{"10.77.0.1/24", "fd77::1/64"}}, B: lab.End{Host: "sw", Iface: "pa"}},
			{A: lab.End{Host: "b", Iface: "eth0", Addrs: []string{"10.77.0.2/24", "fd77::2/64"}}, B: lab.End{Host: "sw", Iface: "pb"}},
			{A: lab.End{Host: "c", Iface: "eth0", Addrs: []string{"10.77.0.3/24", "fd77::3/64"}}, B: lab.End{Host: "sw", Iface: "pc"}},
		},
		Bridges: []lab.BridgeSpec{{Host: "sw", Name: "br0", Ports: []string{"pa", "pb", "pc"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, b, c := l.Host("a"), l.Host("b"), l.Host("c")
	mac := func(h *lab.Host) (m net.HardwareAddr) {
		h.Do(func() error {
			i, err := net.InterfaceByName("eth0")
			if err == nil {
				m = i.HardwareAddr
			}
			return err
		})
		return m
	}
	for _, fam := range []struct{ vip, plen, other string }{{"10.77.0.100", "/24", "10.77.0.101"}, {"fd77::100", "/64", "fd77::101"}} {
		va := Addr{Prefix: netip.MustParsePrefix(fam.vip + fam.plen), Iface: "eth0"}
		if err := a.Do(func() error { return addAddr(va) }); err != nil {
			t.Fatal(err)
		}
		// c learns the VIP at a's MAC.
		if out, err := c.Cmd("ping", "-c", "1", "-W", "2", fam.vip).CombinedOutput(); err != nil {
			t.Fatalf("ping %s: %v %s", fam.vip, err, out)
		}
		var who net.HardwareAddr
		if err := b.Do(func() (err error) { who, err = probe(va, 200*time.Millisecond); return err }); err != nil {
			t.Fatal(err)
		}
		if who.String() != mac(a).String() {
			t.Errorf("probe %s from b: answered by %v, want a (%s)", fam.vip, who, mac(a))
		}
		free := Addr{Prefix: netip.MustParsePrefix(fam.other + fam.plen), Iface: "eth0"}
		if err := b.Do(func() (err error) { who, err = probe(free, 100*time.Millisecond); return err }); err != nil || who != nil {
			t.Errorf("probe of %s nobody holds: %v %v", fam.other, who, err)
		}
		// The VIP moves to b: c's entry follows the announcement.
		if err := a.Do(func() error { return delAddr(va) }); err != nil {
			t.Fatal(err)
		}
		if err := b.Do(func() error {
			if err := addAddr(va); err != nil {
				return err
			}
			return announce(va)
		}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			out, _ := c.Cmd("ip", "neigh", "show", fam.vip).Output()
			if strings.Contains(string(out), mac(b).String()) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("c's neighbour entry for %s after b's announcement: %q, want b's MAC %s", fam.vip, out, mac(b))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		var held bool
		b.Do(func() error { held = HasAddr(va); return nil })
		if !held {
			t.Errorf("b does not hold %s after addAddr", va)
		}
	}
}

// TestIfaceUp: up with carrier, administratively down, up without
// carrier (the veth's peer is down), missing, and a name no interface can
// have.
func TestIfaceUp(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "a"}, {Name: "b"}},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "a", Iface: "eth0"}, B: lab.End{Host: "b", Iface: "eth0"}},
			{A: lab.End{Host: "a", Iface: "eth1"}, B: lab.End{Host: "b", Iface: "eth1"}},
			{A: lab.End{Host: "a", Iface: "eth2"}, B: lab.End{Host: "b", Iface: "eth2"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, b := l.Host("a"), l.Host("b")
	if err := a.IP("link", "set", "eth1", "down"); err != nil {
		t.Fatal(err)
	}
	if err := b.IP("link", "set", "eth2", "down"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ iface, err string }{
		{"eth0", ""},
		{"lo", ""},
		{"eth1", "interface eth1 is down"},
		{"eth2", "interface eth2 is down"}, // up, no carrier
		{"eth9", "interface eth9: "},
		{"a-name-longer-than-ifnamsiz", "interface a-name-longer-than-ifnamsiz: "},
	} {
		// The carrier reaches the flags a moment later (linkwatch).
		var got error
		for end := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			a.Do(func() error { got = IfaceUp(c.iface); return nil })
			if (got == nil) == (c.err == "") || time.Now().After(end) {
				break
			}
		}
		switch {
		case c.err == "" && got != nil:
			t.Errorf("IfaceUp(%s) = %v, want nil", c.iface, got)
		case c.err != "" && (got == nil || !strings.HasPrefix(got.Error(), c.err)):
			t.Errorf("IfaceUp(%s) = %v, want %q", c.iface, got, c.err)
		}
	}
}

// TestHostNetTakeover: the election's takeover operations (hostNet) add
// and announce four addresses on two interfaces without resolving an
// interface (no netlink dump of every link on the critical path), the
// announcement reaches the segment, a MAC changed under the cache is
// followed once the takeover probe has run (it resolves afresh, during
// the silence), and an interface re-created under the cache (a new
// index) is found again by the retry.
func TestHostNetTakeover(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "a"}, {Name: "c"}},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "a", Iface: "eth0", Addrs: []string{"10.78.0.1/24", "fd78::1/64"}}, B: lab.End{Host: "c", Iface: "eth0", Addrs: []string{"10.78.0.3/24", "fd78::3/64"}}},
			{A: lab.End{Host: "a", Iface: "eth1", Addrs: []string{"10.78.1.1/24"}}, B: lab.End{Host: "c", Iface: "eth1", Addrs: []string{"10.78.1.3/24"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, c := l.Host("a"), l.Host("c")
	// vip0: a veth within a (no dummy driver in every kernel).
	vip0 := [][]string{{"link", "add", "vip0", "type", "veth", "peer", "name", "vip0p"}, {"link", "set", "vip0p", "up"}, {"link", "set", "vip0", "up"}}
	for _, args := range vip0 {
		if err := a.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	addrs := []Addr{
		{Prefix: netip.MustParsePrefix("10.78.0.100/24"), Iface: "eth0"},
		{Prefix: netip.MustParsePrefix("fd78::100/64"), Iface: "eth0"},
		{Prefix: netip.MustParsePrefix("10.78.1.100/24"), Iface: "eth1"},
		{Prefix: netip.MustParsePrefix("10.78.9.100/24"), Iface: "vip0"},
	}
	var h *hostNet
	a.Do(func() error { h = newHostNet(addrs); return nil })
	defer h.Close()
	// c knows the VIP at a stale MAC: the announcement must move it.
	const stale = "02:00:00:00:00:99"
	if err := c.IP("neigh", "replace", "10.78.0.100", "lladdr", stale, "dev", "eth0", "nud", "stale"); err != nil {
		t.Fatal(err)
	}
	before := linkLookups.Load()
	if err := a.Do(func() error {
		for _, x := range addrs {
			if err := h.add(x); err != nil {
				return err
			}
		}
		for _, x := range addrs {
			if err := h.announce(x); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := linkLookups.Load() - before; n != 0 {
		t.Errorf("adding and announcing %d addresses resolved interfaces %d times, want 0", len(addrs), n)
	}
	for _, x := range addrs {
		var held bool
		a.Do(func() error { held = HasAddr(x); return nil })
		if !held {
			t.Errorf("a does not hold %s after add", x)
		}
	}
	macOf := func(h *lab.Host, ifname string) (m net.HardwareAddr) {
		h.Do(func() error {
			l, err := lookupLink(ifname)
			m = l.mac
			return err
		})
		return m
	}
	waitNeigh := func(want net.HardwareAddr) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			out, _ := c.Cmd("ip", "neigh", "show", "10.78.0.100", "dev", "eth0").Output()
			if strings.Contains(string(out), want.String()) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("c's neighbour entry for 10.78.0.100: %q, want %s", out, want)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitNeigh(macOf(a, "eth0"))

	// The MAC changes under the cache; the takeover probe (during the
	// silence) resolves afresh, and the next announcement carries it.
	const moved = "02:00:00:00:00:42"
	if err := a.IP("link", "set", "eth0", "address", moved); err != nil {
		t.Fatal(err)
	}
	if err := a.Do(func() error {
		if _, err := h.probe(addrs[0], time.Now().Add(10*time.Millisecond)); err != nil {
			return err
		}
		return h.announce(addrs[0])
	}); err != nil {
		t.Fatal(err)
	}
	waitNeigh(net.HardwareAddr{2, 0, 0, 0, 0, 0x42})

	// vip0 is re-created (a new index): the cached one fails, the retry
	// resolves it afresh.
	for _, args := range append([][]string{{"link", "del", "vip0"}}, vip0...) {
		if err := a.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Do(func() error {
		if err := h.add(addrs[3]); err != nil {
			return err
		}
		return h.announce(addrs[3])
	}); err != nil {
		t.Errorf("add and announce on a re-created interface: %v", err)
	}
	var held bool
	a.Do(func() error { held = HasAddr(addrs[3]); return nil })
	if !held {
		t.Errorf("a does not hold %s on the re-created vip0", addrs[3])
	}
}

// TestProbeSet: the early takeover probe finds who holds an address (ARP
// and NA) and nobody for a free one; and once its deadline has passed,
// its answer is read from the sockets by the caller, without waiting for
// its listening goroutine (here there is none: on a busy host it is
// scheduled late, and the takeover waited for it).
func TestProbeSet(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "a"}, {Name: "b"}},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "a", Iface: "eth0", Addrs: []string{"10.76.0.1/24", "fd76::1/64"}}, B: lab.End{Host: "b", Iface: "eth0", Addrs: []string{"10.76.0.2/24", "fd76::2/64"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, b := l.Host("a"), l.Host("b")
	held := []Addr{{Prefix: netip.MustParsePrefix("10.76.0.100/24"), Iface: "eth0"}, {Prefix: netip.MustParsePrefix("fd76::100/64"), Iface: "eth0"}}
	free := Addr{Prefix: netip.MustParsePrefix("10.76.0.101/24"), Iface: "eth0"}
	for _, x := range held {
		if err := a.Do(func() error { return addAddr(x) }); err != nil {
			t.Fatal(err)
		}
	}
	var amac net.HardwareAddr
	a.Do(func() error { l, err := lookupLink("eth0"); amac = l.mac; return err })
	for _, c := range []struct {
		addr   Addr
		answer string
	}{{held[0], amac.String()}, {held[1], amac.String()}, {free, ""}} {
		var h *hostNet
		b.Do(func() error { h = newHostNet(nil); return nil })
		// Its goroutine (run in b's namespace, as startProbe's runs in
		// the daemon's), to the end.
		p := newProbeSet([]Addr{c.addr}, time.Now().Add(300*time.Millisecond))
		go b.Do(func() error { p.run(h); return nil })
		if _, _, _, ok := p.answer(); ok {
			t.Errorf("%s: answer before the deadline: ok, want not yet", c.addr)
		}
		<-p.done
		who, errs, _, ok := p.answer()
		if !ok || errs[0] != nil || who[0].String() != c.answer {
			t.Errorf("%s: probe answered %v %v %v, want %q", c.addr, who, errs, ok, c.answer)
		}
		// No goroutine: the probe is sent, the deadline past, and the
		// caller reads the answer the kernel queued.
		q := newProbeSet([]Addr{c.addr}, time.Time{})
		if err := b.Do(func() error {
			l, err := lookupLink("eth0")
			if err != nil {
				return err
			}
			q.conns[0], err = sendProbe(l, c.addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		close(q.sent)
		time.Sleep(300 * time.Millisecond) // the answer arrives
		q.deadline = time.Now()
		got := make(chan struct{})
		go func() { who, errs, _, ok = q.answer(); close(got) }()
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: answer waits for a listening goroutine (none runs)", c.addr)
		}
		if !ok || errs[0] != nil || who[0].String() != c.answer {
			t.Errorf("%s: answer read by the caller: %v %v %v, want %q", c.addr, who, errs, ok, c.answer)
		}
		q.conns[0].Close()
		h.Close()
	}
}
