package loader_test

// Services end to end (issue 17's "done when"): health checks that take a
// killed backend out of the Maglev table while the others' connections
// run on, and a pair where a handshake begun on one gateway and completed
// on the other reaches the backend both tables name, the owner's health
// verdicts replicated into the standby's table.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/lb"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/lab"
)

// countedBackend is a backend's server on a lab host: it names itself
// ("10.78.2.2:8080\n") and then echoes, and counts the connections it
// accepts from the client (the proxy keeps the client's address; the
// health checks come from the gateway's, and are not counted).
type countedBackend struct {
	h       *lab.Host
	addr    netip.AddrPort
	client  netip.Addr
	accepts atomic.Int64

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
}

func startBackend(t *testing.T, h *lab.Host, addr netip.AddrPort, client netip.Addr) *countedBackend {
	t.Helper()
	b := &countedBackend{h: h, addr: addr, client: client}
	b.listen(t)
	t.Cleanup(func() {
		b.kill()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

// listen (again) on the backend's port.
func (b *countedBackend) listen(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := b.h.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", b.addr.Port()))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.ln = ln
	b.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if a, ok := c.RemoteAddr().(*net.TCPAddr); ok && a.AddrPort().Addr().Unmap() == b.client {
				b.accepts.Add(1)
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			go func() {
				defer c.Close()
				if _, err := io.WriteString(c, b.addr.String()+"\n"); err == nil {
					io.Copy(c, c)
				}
			}()
		}
	}()
}

// kill closes the listener: new connections are refused (the backend's
// kernel answers a SYN with a RST) while those it accepted run on.
func (b *countedBackend) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
}

// echoed sends size bytes seeded by seed on c and reads them back,
// compared byte for byte.
func echoed(c namedConn, seed uint64, size int, bound time.Duration) error {
	msg := make([]byte, size)
	io.ReadFull(seeded(binary.LittleEndian.AppendUint64(nil, seed)), msg)
	c.c.SetDeadline(time.Now().Add(bound))
	werr := make(chan error, 1)
	go func() { _, err := c.c.Write(msg); werr <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c.r, got); err != nil {
		return fmt.Errorf("to %s: read: %w", c.backend, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("to %s: write: %w", c.backend, err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("to %s: the echo differs from what was sent", c.backend)
	}
	return nil
}

// stateOf is the backend at addr in states.
func stateOf(states []maps.BackendState, addr netip.AddrPort) maps.BackendState {
	for _, s := range states {
		if s.Addr == addr {
			return s
		}
	}
	return maps.BackendState{}
}

// TestServiceHealthKill: a service with three backends weighted 1:2:3 and
// TCP health checks (fall 3, rise 2) on the proxy lab's gateway (the
// daemon). Connections from fixed ports until 100 run on the two that
// stay; then the weight-2 backend's server is killed. While it is down
// by less than fall checks, new connections to it are refused by it;
// its verdict goes down at exactly the fall-th failed check, and from the
// moment the table has it out, 100 new connections all reach the others
// (the datapath's per-backend counter of the killed one and its own
// accept count do not move). The 100 connections to the others, and those
// the killed backend had accepted before, echo their data intact
// throughout. The server comes back: up after exactly rise passes, with
// its weight's share of the table, and it takes new connections again
// (counted by the datapath and by its accepts, equally).
func TestServiceHealthKill(t *testing.T) {
	p := newProxyLab(t)
	client := netip.MustParseAddr("10.78.1.2")
	vip := netip.AddrPortFrom(pvip4, proxyPort)
	addrs := []netip.AddrPort{netip.MustParseAddrPort("10.78.2.2:8080"), netip.MustParseAddrPort("10.78.3.2:8080"), netip.MustParseAddrPort("10.78.2.2:8081")}
	bes := []*countedBackend{startBackend(t, p.backends[0], addrs[0], client), startBackend(t, p.backends[1], addrs[1], client), startBackend(t, p.backends[0], addrs[2], client)}
	const killed = 1 // be2, weight 2
	const fall, rise = 3, 2
	scale := time.Duration(scaleOf())
	dir := t.TempDir()
	log := healthDaemon(t, p.gw, "--proxy-iface", "eth0,be1,be2", "--proxy-secret", p.secret, "--state-dir", dir,
		"--service", fmt.Sprintf("%s=%s@1,%s@2,%s@3", vip, addrs[0], addrs[1], addrs[2]),
		"--health-check", fmt.Sprintf("%s=tcp,interval=%s,timeout=%s,fall=%d,rise=%d", vip, 500*time.Millisecond*scale, 400*time.Millisecond*scale, fall, rise))
	bound := min(20*scale, 120) * time.Second
	waitStates := func(what string, ok func([]maps.BackendState) bool) []maps.BackendState {
		t.Helper()
		var st []maps.BackendState
		for deadline := time.Now().Add(bound); ; time.Sleep(50 * time.Millisecond) {
			if st = serviceStatesOn(t, p.gw, vip); ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v\ndaemon's log:\n%s", what, st, log())
			}
		}
	}
	waitStates("all three up", func(st []maps.BackendState) bool {
		return !slices.ContainsFunc(st, func(s maps.BackendState) bool { return s.Health != maps.HealthUp })
	})

	// The long connections: 100 to the backends that stay, and whatever
	// the killed one takes meanwhile.
	var others, onKilled []namedConn
	port := 44000
	for ; len(others) < 100; port++ {
		c := p.dialNamed(t, port)
		t.Cleanup(func() { c.c.Close() })
		if c.backend == addrs[killed].String() {
			onKilled = append(onKilled, c)
		} else {
			others = append(others, c)
		}
	}
	if len(onKilled) == 0 {
		t.Fatalf("%d connections, none to %s (weight 2 of 6): the test needs some", port-44000, addrs[killed])
	}
	round := 0
	stream := func(when string) {
		t.Helper()
		round++
		for i, c := range append(slices.Clone(others), onKilled...) {
			if err := echoed(c, uint64(round*1000+i), 32<<10, 30*time.Second*scale); err != nil {
				t.Fatalf("%s: long connection %d: %v", when, i, err)
			}
		}
	}
	stream("before the kill")

	// From the kill to the verdict the 100 long connections stream
	// without a pause, round after round, each round's echo compared.
	stop, streamed := make(chan struct{}), make(chan error, 1)
	var rounds atomic.Int64
	go func() {
		for r := 0; ; r++ {
			select {
			case <-stop:
				streamed <- nil
				return
			default:
			}
			for i, c := range others {
				if err := echoed(c, uint64(1_000_000+r*1000+i), 8<<10, 30*time.Second*scale); err != nil {
					streamed <- fmt.Errorf("round %d, long connection %d: %w", r, i, err)
					return
				}
			}
			rounds.Add(1)
		}
	}()
	bes[killed].kill()
	// Until the verdict: new connections; those the table still sends
	// to the killed backend are refused by it (its RST reaches the
	// client).
	refused, reached := 0, map[string]int{}
	before := serviceStatesOn(t, p.gw, vip)
	var down []maps.BackendState
	for deadline := time.Now().Add(bound); ; port++ {
		if c, err := p.tryNamed(port); err != nil {
			refused++
		} else {
			reached[c.backend]++
			c.c.Close()
		}
		st := serviceStatesOn(t, p.gw, vip)
		// The verdict is recorded, then the table swapped: both.
		if k := stateOf(st, addrs[killed]); k.Health == maps.HealthDown && k.Slots == 0 {
			down = st
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not down after %s: %+v\n%s", addrs[killed], bound, st, log())
		}
	}
	close(stop)
	if err := <-streamed; err != nil {
		t.Fatalf("streaming between the kill and the verdict: %v", err)
	}
	t.Logf("between the kill and the verdict: %d new connections refused by the killed backend, %v reached the others; the long connections streamed %d rounds", refused, reached, rounds.Load())
	if got := stateOf(down, addrs[killed]).Conns - stateOf(before, addrs[killed]).Conns; got != uint64(refused) {
		t.Errorf("the datapath counted %d new connections to the killed backend after the kill, the client saw %d refused", got, refused)
	}
	ev := healthEvents(log())
	if len(ev) != 1 || ev[0].up || ev[0].backend != addrs[killed].String() || ev[0].failed != fall {
		t.Fatalf("events %+v, want one: %s down after exactly fall = %d failed checks (every check before the kill passed)", ev, addrs[killed], fall)
	}
	// The others share the table 1:3.
	if a, c := stateOf(down, addrs[0]).Slots, stateOf(down, addrs[2]).Slots; a+c != lb.TableSize || a*4 < lb.TableSize-400 || a*4 > lb.TableSize+400 {
		t.Errorf("slots after the kill %d and %d, want all %d at 1:3", a, c, lb.TableSize)
	}
	stream("after the kill")

	newConns := func(from int) (map[string]int, []maps.BackendState, []int64) {
		t.Helper()
		before := serviceStatesOn(t, p.gw, vip)
		var acc []int64
		for _, b := range bes {
			acc = append(acc, b.accepts.Load())
		}
		got := map[string]int{}
		for i := range 100 {
			c := p.dialNamed(t, from+i)
			if err := echoed(c, uint64(from+i), 4<<10, 30*time.Second*scale); err != nil {
				t.Fatalf("new connection from port %d: %v", from+i, err)
			}
			got[c.backend]++
			c.c.Close()
		}
		after := serviceStatesOn(t, p.gw, vip)
		for i, b := range bes {
			dp := stateOf(after, b.addr).Conns - stateOf(before, b.addr).Conns
			if n := b.accepts.Load() - acc[i]; dp != uint64(got[b.addr.String()]) || n != int64(got[b.addr.String()]) {
				t.Errorf("%s: %d of the 100 new connections named it, the datapath counted %d, it accepted %d", b.addr, got[b.addr.String()], dp, n)
			}
		}
		return got, after, acc
	}
	got, _, _ := newConns(46000)
	if got[addrs[killed].String()] != 0 {
		t.Errorf("after the down verdict, %d of 100 new connections reached the killed backend", got[addrs[killed].String()])
	}
	t.Logf("100 new connections while it is down: %v", got)
	stream("while it is down")

	bes[killed].listen(t)
	up := waitStates("the backend up again", func(st []maps.BackendState) bool {
		k := stateOf(st, addrs[killed])
		return k.Health == maps.HealthUp && k.Slots > 0
	})
	if s := stateOf(up, addrs[killed]).Slots; s*3 < lb.TableSize-300 || s*3 > lb.TableSize+300 {
		t.Errorf("back with %d slots, want its weight's third of %d", s, lb.TableSize)
	}
	ev = healthEvents(log())
	if len(ev) != 2 || !ev[1].up || ev[1].backend != addrs[killed].String() {
		t.Fatalf("events %+v, want down then up", ev)
	}
	if passes := (ev[1].checks - ev[0].checks) - (ev[1].failed - ev[0].failed); passes != rise {
		t.Errorf("up after %d passes, want rise = %d", passes, rise)
	}
	got, _, _ = newConns(47000)
	if got[addrs[killed].String()] == 0 {
		t.Errorf("back up, the backend took none of 100 new connections: %v", got)
	}
	t.Logf("100 new connections once it is back: %v", got)
	stream("after it came back")
	if n := strings.Count(log(), `msg="backend down"`); n != 1 {
		t.Errorf("%d 'backend down' lines, want 1", n)
	}
	t.Logf("service list:\n%s", mustTandem(t, p.gw, "service", "list", "--bpffs", p.gw.BPFFS(), "--state-dir", dir).stdout)
}

// tableOn reads h's installed table of the service at vip and the
// service's backends (by table idx).
func tableOn(t *testing.T, h *lab.Host, vip netip.AddrPort) ([]uint32, []netip.AddrPort) {
	t.Helper()
	px, err := loader.OpenProxy(maps.Pins{Root: h.BPFFS()})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	svcs, err := px.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.VIP == vip {
			tbl, err := px.Table(s.ID)
			if err != nil || tbl == nil {
				t.Fatalf("%s: the table of %s: %v (installed: %v)", h.Name, vip, err, tbl != nil)
			}
			return tbl, s.Backends
		}
	}
	t.Fatalf("%s: no service %s", h.Name, vip)
	return nil, nil
}

// macOf is h's iface's hardware address.
func macOf(t *testing.T, h *lab.Host, iface string) string {
	t.Helper()
	var mac string
	if err := h.Do(func() error {
		i, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		mac = i.HardwareAddr.String()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// run runs a command in h.
func run(t *testing.T, h *lab.Host, name string, args ...string) {
	t.Helper()
	if out, err := h.Cmd(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %s %s: %v\n%s", h.Name, name, strings.Join(args, " "), err, out)
	}
}

// steerSYNs is an XDP program for the switch's port from the client: an
// IPv4 TCP SYN to vip gets mac as its destination; everything passes on
// to the bridge.
func steerSYNs(vip netip.Addr, mac string) asm.Instructions {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		panic(err)
	}
	a := vip.As4()
	return append(ipv4Prefix(48, 6),
		asm.LoadMem(asm.R5, asm.R2, 30, asm.Word),
		asm.JNE.Imm32(asm.R5, int32(binary.NativeEndian.Uint32(a[:])), "pass"),
		asm.LoadMem(asm.R5, asm.R2, 47, asm.Byte), // TCP flags
		asm.And.Imm(asm.R5, 0x02),
		asm.JEq.Imm(asm.R5, 0, "pass"),
		asm.StoreImm(asm.R2, 0, int64(int32(binary.NativeEndian.Uint32(hw[:4]))), asm.Word),
		asm.StoreImm(asm.R2, 4, int64(int16(binary.NativeEndian.Uint16(hw[4:6]))), asm.Half),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"), // XDP_PASS
		asm.Return(),
	)
}

// TestServiceHandshakeAcrossPair: the failover lab's two gateways run the
// daemon (gwa the sync primary, gwb the standby) with one service, three
// backends weighted 1:2:3 and TCP health checks. The client's SYNs reach
// gwa and everything after them gwb (its neighbour entry for the VIP
// names gwb; an XDP program on the switch's port from the client rewrites
// a SYN's destination MAC to gwa's): every handshake is begun on gwa (its SYN-ACK cookie) and
// completed on gwb (the cookie ACK), which sends the backend SYN. Each
// connection reaches the backend gwa's table names for its flow, and the
// two tables are equal. Then gwa's checks of the weight-2 backend fail
// (an nft drop on gwa alone, so gwb's own checks still pass): gwb uses
// the owner's verdict, its table leaves the backend out like gwa's, and
// no crossing handshake reaches it. Its checks pass again: back in both.
func TestServiceHandshakeAcrossPair(t *testing.T) {
	p := newPairLab(t)
	client := netip.MustParseAddr("10.79.1.10")
	vip := netip.MustParseAddrPort(fmt.Sprintf("%s:%d", fvip, fport))
	addrs := []netip.AddrPort{netip.MustParseAddrPort("10.79.2.11:8080"), netip.MustParseAddrPort("10.79.2.12:8080"), netip.MustParseAddrPort("10.79.2.11:8081")}
	bes := []*countedBackend{startBackend(t, p.backends[0], addrs[0], client), startBackend(t, p.backends[1], addrs[1], client), startBackend(t, p.backends[0], addrs[2], client)}
	const failing = 1
	gwa, gwb := p.gw["a"], p.gw["b"]

	// The steering. No election: the VIP is served by both gateways
	// (no gate entry), the client reaches it by a static neighbour entry,
	// and the backends route back through gwb (it holds their gateway
	// address).
	run(t, p.client, "ip", "neigh", "replace", fvip, "lladdr", macOf(t, gwb, "eth0"), "dev", "eth0", "nud", "permanent")
	steer, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: steerSYNs(netip.MustParseAddr(fvip), macOf(t, gwa, "eth0"))})
	if err != nil {
		t.Fatal(err)
	}
	defer steer.Close()
	if err := p.Host("sw").Do(func() error {
		ifc, err := net.InterfaceByName("client")
		if err != nil {
			return err
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: steer, Interface: ifc.Index})
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The switch knows both gateways' front MACs from the start: a frame
	// to a MAC it has not learnt is flooded to every port, and the other
	// gateway's XDP would see it too (XDP runs before the stack drops
	// frames for another host), so a handshake would not cross.
	for port, gw := range map[string]*lab.Host{"af": gwa, "bf": gwb} {
		run(t, p.Host("sw"), "bridge", "fdb", "replace", macOf(t, gw, "eth0"), "dev", port, "master", "static")
	}
	if err := gwb.IP("addr", "add", finner+"/24", "dev", "eth1"); err != nil {
		t.Fatal(err)
	}

	scale := time.Duration(scaleOf())
	common := []string{"--proxy-iface", "eth0,eth1", "--proxy-secret", p.secret, "--sync-certs", p.certs, "--sync-interval", "10ms",
		"--service", fmt.Sprintf("%s=%s@1,%s@2,%s@3", vip, addrs[0], addrs[1], addrs[2]),
		"--health-check", fmt.Sprintf("%s=tcp,interval=%s,timeout=%s,fall=2,rise=2", vip, 500*time.Millisecond*scale, 400*time.Millisecond*scale)}
	healthDaemon(t, gwb, append([]string{"--sync-role", "standby", "--sync-listen", "10.79.9.2:7400", "--sync-name", "b", "--state-dir", p.state["b"]}, common...)...)
	log := healthDaemon(t, gwa, append([]string{"--sync-role", "primary", "--sync-peer", "10.79.9.2:7400", "--sync-name", "a", "--state-dir", p.state["a"]}, common...)...)

	bound := min(20*scale, 120) * time.Second
	// settle waits until gwb uses the owner's verdicts want ("UDU": up,
	// down, up by addrs) and both gateways' tables are equal.
	settle := func(want string) []uint32 {
		t.Helper()
		var st map[string]health.BackendStatus
		for deadline := time.Now().Add(bound); ; time.Sleep(100 * time.Millisecond) {
			st = healthOf(t, gwb, p.state["b"])
			ok := true
			states := serviceStatesOn(t, gwb, vip)
			for i, a := range addrs {
				s := stateOf(states, a)
				ok = ok && s.Health == map[byte]string{'U': maps.HealthUp, 'D': maps.HealthDown}[want[i]]
			}
			if ok {
				ta, ba := tableOn(t, gwa, vip)
				tb, bb := tableOn(t, gwb, vip)
				if slices.Equal(ta, tb) && slices.Equal(ba, bb) {
					return ta
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("gwb's verdicts in use not %s from the owner with equal tables: %+v\n%+v\nowner's log:\n%s", want, serviceStatesOn(t, gwb, vip), st, log())
			}
		}
	}
	port := 50000
	// cross makes n connections, each begun on gwa and completed on gwb,
	// and checks each reached the backend the table names for its flow.
	cross := func(n int, table []uint32) map[string]int {
		t.Helper()
		_, backends := tableOn(t, gwa, vip)
		sa, sb := proxyStatsAt(t, gwa), proxyStatsAt(t, gwb)
		got := map[string]int{}
		for range n {
			from := netip.AddrPortFrom(client, uint16(port))
			port++
			c, err := tryNamedOn(p.client, from, vip)
			if err != nil {
				t.Fatal(err)
			}
			want := backends[table[maps.FlowHash(from, vip)%lb.TableSize]]
			if c.backend != want.String() {
				t.Errorf("the connection from %s reached %s, the tables name %s", from, c.backend, want)
			}
			if err := echoed(c, uint64(port), 16<<10, 30*time.Second*scale); err != nil {
				t.Errorf("the connection from %s: %v", from, err)
			}
			c.c.Close()
			got[c.backend]++
		}
		// Every handshake crossed: gwa answered the SYNs and saw no
		// cookie ACK; gwb validated the cookies and sent the backend
		// SYNs, and answered no SYN.
		da, db := proxyStatsAt(t, gwa), proxyStatsAt(t, gwb)
		if d := da["syn_answered"] - sa["syn_answered"]; d != uint64(n) || da["cookie_ok"] != sa["cookie_ok"] {
			t.Errorf("gwa answered %d SYNs (want %d) and took %d cookie ACKs (want 0)", d, n, da["cookie_ok"]-sa["cookie_ok"])
		}
		if d := db["cookie_ok"] - sb["cookie_ok"]; d != uint64(n) || db["syn_answered"] != sb["syn_answered"] || db["backend_syn"]-sb["backend_syn"] != uint64(n) {
			t.Errorf("gwb took %d cookie ACKs and sent %d backend SYNs (want %d each) and answered %d SYNs (want 0)",
				d, db["backend_syn"]-sb["backend_syn"], n, db["syn_answered"]-sb["syn_answered"])
		}
		return got
	}

	table := settle("UUU")
	if sh := lb.Shares(table, 3); sh[0]*6 < lb.TableSize-600 || sh[1]*3 < lb.TableSize-300 || sh[2]*2 < lb.TableSize-200 {
		t.Errorf("table shares %v, want 1:2:3 of %d", sh, lb.TableSize)
	}
	got := cross(60, table)
	t.Logf("all up, weights 1:2:3: %v", got)
	if len(got) != 3 {
		t.Errorf("60 crossing handshakes reached %v: want every backend", got)
	}

	// gwa's checks of the weight-2 backend fail; gwb's pass.
	// (A drop, so the checks time out: the 6.1 VM has no nft reject.)
	run(t, gwa, "nft", "add", "table", "ip", "svctest")
	run(t, gwa, "nft", "add", "chain", "ip", "svctest", "out", "{ type filter hook output priority 0; }")
	run(t, gwa, "nft", "add", "rule", "ip", "svctest", "out", "ip", "daddr", addrs[failing].Addr().String(), "tcp", "dport", fmt.Sprint(addrs[failing].Port()), "drop")
	table = settle("UDU")
	// The status file follows the table within a second.
	for deadline := time.Now().Add(bound); ; time.Sleep(100 * time.Millisecond) {
		st := healthOf(t, gwb, p.state["b"])[addrs[failing].Addr().String()]
		if !st.Up && st.OwnUp && st.Source == health.SourceOwner {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gwb's status of %s: %+v, want down from the owner while its own checks pass", addrs[failing], st)
		}
	}
	acc := bes[failing].accepts.Load()
	got = cross(60, table)
	t.Logf("the weight-2 backend down on the owner: %v", got)
	if got[addrs[failing].String()] != 0 || bes[failing].accepts.Load() != acc {
		t.Errorf("%d crossing handshakes reached the backend the owner has down (it accepted %d)", got[addrs[failing].String()], bes[failing].accepts.Load()-acc)
	}

	run(t, gwa, "nft", "delete", "table", "ip", "svctest")
	table = settle("UUU")
	got = cross(60, table)
	t.Logf("back up: %v", got)
	if got[addrs[failing].String()] == 0 {
		t.Errorf("back up on the owner, the backend took none of 60 crossing handshakes: %v", got)
	}
}

// TestServiceCheckRemoved: a backend that the health checks took down,
// then its service's check removed from the config, by a restart of the
// daemon or by a reload (SIGHUP). Nothing will ever check it again, so
// its old verdict must not keep it out of the table: it is unchecked
// again and takes new connections (it was kept down for ever: `down`,
// no slot).
func TestServiceCheckRemoved(t *testing.T) {
	for _, how := range []string{"restart", "reload"} {
		t.Run(how, func(t *testing.T) {
			p := newProxyLab(t)
			client := netip.MustParseAddr("10.78.1.2")
			vip := netip.AddrPortFrom(pvip4, proxyPort)
			addrs := []netip.AddrPort{netip.MustParseAddrPort("10.78.2.2:8080"), netip.MustParseAddrPort("10.78.3.2:8080")}
			bes := []*countedBackend{startBackend(t, p.backends[0], addrs[0], client), startBackend(t, p.backends[1], addrs[1], client)}
			scale := time.Duration(scaleOf())
			conf := filepath.Join(t.TempDir(), "tandem.toml")
			write := func(check bool) {
				t.Helper()
				data := fmt.Sprintf(`[proxy]
interfaces = ["eth0", "be1", "be2"]
secret_file = %q
[[proxy.service]]
vip = "%s"
backends = ["%s", "%s"]
`, p.secret, vip, addrs[0], addrs[1])
				if check {
					data += fmt.Sprintf(`[proxy.service.check]
type = "tcp"
interval = "%s"
timeout = "%s"
rise = 2
fall = 2
`, 500*time.Millisecond*scale, 400*time.Millisecond*scale)
				}
				if err := os.WriteFile(conf, []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			write(true)
			args := []string{"--config", conf, "--state-dir", t.TempDir()}
			cmd, log := healthDaemonCmd(t, p.gw, args...)
			bound := min(20*scale, 120) * time.Second
			wait := func(what string, ok func(maps.BackendState) bool) {
				t.Helper()
				for deadline := time.Now().Add(bound); ; time.Sleep(50 * time.Millisecond) {
					st := serviceStatesOn(t, p.gw, vip)
					if ok(stateOf(st, addrs[1])) {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: %+v\ndaemon's log:\n%s", what, st, log())
					}
				}
			}
			bes[1].kill()
			wait("be2 down, out of the table", func(s maps.BackendState) bool { return s.Health == maps.HealthDown && s.Slots == 0 })
			write(false)
			if how == "restart" {
				if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				cmd.Wait()
				_, log = healthDaemonCmd(t, p.gw, args...)
			} else {
				if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
				// The old checks end with the reload: the server comes
				// back only after (else they would see it up first).
				for deadline := time.Now().Add(bound); !strings.Contains(log(), "msg=reloaded"); time.Sleep(20 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("no reload after SIGHUP:\n%s", log())
					}
				}
			}
			bes[1].listen(t)
			wait("be2 unchecked and in the table once no check is configured", func(s maps.BackendState) bool {
				return s.Health == maps.HealthUnchecked && s.Slots > 0
			})
			got := map[string]int{}
			for i := range 20 {
				c := p.dialNamed(t, 48000+i)
				got[c.backend]++
				c.c.Close()
			}
			if got[addrs[1].String()] == 0 {
				t.Errorf("20 new connections went %v: none to %s", got, addrs[1])
			}
		})
	}
}
