package loader_test

// One interface, two features: the gate and the SYN proxy in one XDP
// chain on the gateway's client-facing interface, real traffic through
// it.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
	"github.com/tandem-net/tandem/tools/traffic"
)

var (
	// pvipPlain is owned and under the gate, but no service: the proxy
	// declines its packets, the gate counts them.
	pvipPlain = netip.MustParseAddr("10.78.0.101")
	// pvipStandby is a service VIP the other host of the pair owns: the
	// gate drops what reaches this one, before the proxy sees it.
	pvipStandby = netip.MustParseAddr("10.78.0.200")
)

// chainOf reads iface's XDP chain from tandem status --json, by slot
// (chain.Slots: the packets no stage claimed).
func chainOf(t *testing.T, h *lab.Host, iface string) map[uint32]loader.ChainStage {
	t.Helper()
	for _, a := range status(t, h).Attachments {
		if a.Iface == iface && a.Hook == "xdp" {
			out := map[uint32]loader.ChainStage{}
			for _, s := range a.Chain {
				out[s.Slot] = s
			}
			return out
		}
	}
	t.Fatalf("no XDP attachment on %s in status", iface)
	return nil
}

// rawSYNs sends n TCP SYNs from h to dst:port through a raw socket: no
// socket of h's waits for an answer or retransmits, so exactly n reach
// the gateway.
func rawSYNs(t *testing.T, h *lab.Host, src, dst netip.Addr, port uint16, n int) {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		for i := range n {
			tcp := &layers.TCP{SrcPort: layers.TCPPort(41000 + i), DstPort: layers.TCPPort(port), Seq: 1000, SYN: true, Window: 64240}
			tcp.SetNetworkLayerForChecksum(ip)
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, tcp); err != nil {
				return err
			}
			if err := unix.Sendto(fd, buf.Bytes(), 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
				return fmt.Errorf("send SYN to %s: %w", dst, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// udpEchoes sends n datagrams from h to dst and waits for their echoes.
func udpEchoes(t *testing.T, h *lab.Host, dst netip.AddrPort, n int) {
	t.Helper()
	err := h.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		for i := range n {
			if _, err := fmt.Fprintf(c, "datagram %d", i); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err != nil {
				return fmt.Errorf("echo of datagram %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestChainGateAndProxy: the gateway's eth0 runs the gate and the SYN
// proxy in one chain (-i eth0 --proxy-iface eth0,be1,be2). A connection
// to an owned service VIP is proxied; SYNs to a service VIP the host does
// not own are dropped by the gate, once each, and the proxy never sees
// them; UDP and ICMP to an owned VIP that is no service pass the proxy
// and are counted by the gate; status shows the chain; and the
// 128-connection matrix passes through the two-feature interface.
func TestChainGateAndProxy(t *testing.T) {
	testenv.RequireCommand(t, "ping")
	p := newProxyLab(t)
	if err := p.gw.IP("addr", "add", pvipPlain.String()+"/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	p.up(t, "-i", "eth0", "--vip", pvip4.String(), "--vip", pvip6.String(), "--vip", pvipPlain.String(),
		"--vip", pvipStandby.String()+"=standby", "--service", pvipStandby.String()+":80=10.78.2.2:8081") // nothing listens: no SYN gets there
	p.serve(t)

	// The layout: eth0 runs both stages in chain order, the backends'
	// interfaces the proxy alone; no packet met an empty slot.
	for _, c := range []struct {
		iface string
		want  map[uint32]string // slot: feature
	}{
		{"eth0", map[uint32]string{chain.SlotGate: "gate", chain.SlotSynproxy: "synproxy", chain.Slots: "(stack)"}},
		{"be1", map[uint32]string{chain.SlotSynproxy: "synproxy", chain.Slots: "(stack)"}},
	} {
		ch := chainOf(t, p.gw, c.iface)
		if len(ch) != len(c.want) {
			t.Errorf("chain of %s: %+v, want slots %v", c.iface, ch, c.want)
		}
		for slot, feature := range c.want {
			s := ch[slot]
			if s.Feature != feature || (slot < chain.Slots && s.ProgID == 0) || s.Missed != 0 {
				t.Errorf("chain of %s, slot %d: %+v, want feature %s with a program and no missed tail calls", c.iface, slot, s, feature)
			}
		}
	}

	t.Run("owned service VIP proxied", func(t *testing.T) {
		ch0, px0, v0 := chainOf(t, p.gw, "eth0"), proxyStats(t, p), vipCounters(t, p.gw, pvip4)
		if err := p.transfer(t, pvip4); err != nil {
			t.Fatalf("transfer through the proxy: %v", err)
		}
		ch, px, v := chainOf(t, p.gw, "eth0"), proxyStats(t, p), vipCounters(t, p.gw, pvip4)
		if d := px["established"] - px0["established"]; d != 1 {
			t.Errorf("proxy established +%d, want +1", d)
		}
		if d := ch[chain.SlotSynproxy].Claimed - ch0[chain.SlotSynproxy].Claimed; d == 0 {
			t.Error("the proxy's stage claimed nothing of a proxied connection")
		}
		if d := ch[chain.SlotGate].Claimed - ch0[chain.SlotGate].Claimed; d != 0 {
			t.Errorf("the gate claimed %d packets of a connection to an owned VIP", d)
		}
		if v.Counters.RxPackets == v0.Counters.RxPackets {
			t.Error("the gate did not count the connection's packets to its VIP")
		}
	})

	t.Run("standby service VIP dropped by the gate", func(t *testing.T) {
		const n = 3
		ch0, px0, v0, st0 := chainOf(t, p.gw, "eth0"), proxyStats(t, p), vipCounters(t, p.gw, pvipStandby), status(t, p.gw).Stats
		rawSYNs(t, p.client, netip.MustParseAddr("10.78.1.2"), pvipStandby, proxyPort, n)
		// The SYNs are in flight until the gate has counted them all.
		var v loader.VIPStatus
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if v = vipCounters(t, p.gw, pvipStandby); v.Counters.DropNotOwner-v0.Counters.DropNotOwner >= n {
				break
			}
		}
		ch, px, st := chainOf(t, p.gw, "eth0"), proxyStats(t, p), status(t, p.gw).Stats
		if d := v.Counters.DropNotOwner - v0.Counters.DropNotOwner; d != n {
			t.Errorf("VIP %s drop_not_owner +%d after %d SYNs, want +%d", pvipStandby, d, n, n)
		}
		if d := st["drop_not_owner"] - st0["drop_not_owner"]; d != n {
			t.Errorf("gate drop_not_owner +%d after %d SYNs, want +%d", d, n, n)
		}
		if d := ch[chain.SlotGate].Claimed - ch0[chain.SlotGate].Claimed; d != n {
			t.Errorf("chain slot 0 (gate) claimed +%d after %d SYNs, want +%d", d, n, n)
		}
		for _, k := range []string{"not_owner", "syn_answered"} {
			if px[k] != px0[k] {
				t.Errorf("proxy %s %d -> %d: the proxy saw SYNs the gate must have dropped", k, px0[k], px[k])
			}
		}
	})

	t.Run("plain traffic to an owned VIP passes", func(t *testing.T) {
		const datagrams, pings = 20, 3
		srv, err := traffic.ListenEcho(p.gw.Do, netip.AddrPortFrom(pvipPlain, 9000))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		ch0, v0 := chainOf(t, p.gw, "eth0"), vipCounters(t, p.gw, pvipPlain)
		udpEchoes(t, p.client, netip.AddrPortFrom(pvipPlain, 9000), datagrams)
		if out, err := p.client.Cmd("ping", "-n", "-c", fmt.Sprint(pings), "-i", "0.2", "-W", "5", pvipPlain.String()).CombinedOutput(); err != nil {
			t.Fatalf("ping %s: %v\n%s", pvipPlain, err, out)
		}
		ch, v := chainOf(t, p.gw, "eth0"), vipCounters(t, p.gw, pvipPlain)
		if d := v.Counters.RxPackets - v0.Counters.RxPackets; d != datagrams+pings {
			t.Errorf("VIP %s rx_packets +%d, want +%d (the datagrams and the echo requests)", pvipPlain, d, datagrams+pings)
		}
		if d := v.Counters.TxPackets - v0.Counters.TxPackets; d != datagrams+pings {
			t.Errorf("VIP %s tx_packets +%d, want +%d (the echoes and the echo replies)", pvipPlain, d, datagrams+pings)
		}
		if d := ch[chain.Slots].Claimed - ch0[chain.Slots].Claimed; d < datagrams+pings {
			t.Errorf("end of chain +%d, want at least +%d: the packets passed to the stack", d, datagrams+pings)
		}
		if d := ch[chain.SlotGate].Claimed - ch0[chain.SlotGate].Claimed; d != 0 {
			t.Errorf("the gate claimed %d packets to an owned VIP", d)
		}
	})

	t.Run("matrix", p.matrix)

	// The human status shows the chain too, stage by stage.
	r := mustTandem(t, p.gw, "status", "--bpffs", p.gw.BPFFS(), "--state-dir", t.TempDir())
	for _, want := range []string{"Chain on eth0:", "Chain on be1:", "xdp_vipgate", "xdp_synproxy", "(stack)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}
	if t.Failed() {
		t.Logf("status:\n%s", r.stdout)
	}
}

// TestChainRepairsForeignRoot: the XDP link or the chain pins no longer
// match (an earlier build's up swapped its own program into the link, as
// a downgrade then an upgrade does; someone removed a chain map's pin).
// status says so and exits 1, and up swaps a new chain in through the
// link: a slot swap would fill slots of a chain no packet reaches.
func TestChainRepairsForeignRoot(t *testing.T) {
	cases := []struct {
		name    string
		breakIt func(t *testing.T, gw *lab.Host)
	}{
		{"the link runs another program", func(t *testing.T, gw *lab.Host) {
			l, err := link.LoadPinnedLink(filepath.Join(gw.BPFFS(), "attach", "xdp@eth0"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			// What an earlier build's up does: its own gate program,
			// straight into the link (here one that passes everything).
			p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := l.Update(p); err != nil {
				t.Fatal(err)
			}
		}},
		{"the XDP link's pin is gone", func(t *testing.T, gw *lab.Host) {
			// The link goes with its pin: eth0 runs no chain, no gate.
			if err := os.Remove(filepath.Join(gw.BPFFS(), "attach", "xdp@eth0")); err != nil {
				t.Fatal(err)
			}
		}},
		{"a chain map's pin is gone", func(t *testing.T, gw *lab.Host) {
			if err := os.Remove(filepath.Join(gw.BPFFS(), "maps", chain.PinName(chain.MapStats, "eth0"))); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := gatewayLab(t)
			gw := l.Host("gw")
			up := []string{"up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS()}
			mustTandem(t, gw, up...)
			tc.breakIt(t, gw)

			r := tandem(t, gw, "status", "--json", "--bpffs", gw.BPFFS())
			var st loader.Status
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
				t.Fatalf("status --json: %v\n%s", err, r.stdout)
			}
			problem := ""
			for _, a := range st.Attachments {
				if a.Hook == "xdp" {
					problem = a.Problem
				}
			}
			if r.code != 1 || problem == "" {
				t.Fatalf("status exit %d, xdp problem %q: want exit 1 and the problem named\n%s", r.code, problem, r.stderr)
			}
			t.Logf("status: %s", problem)

			mustTandem(t, gw, up...)
			r = tandem(t, gw, "status", "--json", "--bpffs", gw.BPFFS())
			if r.code != 0 {
				t.Fatalf("status after up: exit %d: up did not repair the chain\n%s\n%s", r.code, r.stdout, r.stderr)
			}
			for _, a := range status(t, gw).Attachments {
				if a.Hook == "xdp" && (a.Prog != "xdp_chain" || len(a.Chain) == 0 || a.Chain[0].ProgID == 0) {
					t.Fatalf("after up the link runs %s (%d), chain %+v: want the chain's entry and the gate in slot 0", a.Prog, a.ProgID, a.Chain)
				}
			}
			// The gate is the one that runs: a datagram to the VIP is counted.
			before := vipCounters(t, gw, vip4).Counters.RxPackets
			if out, err := l.Host("client").Cmd("ping", "-c", "1", "-W", "1", vip4.String()).CombinedOutput(); err != nil {
				t.Fatalf("ping %s: %v\n%s", vip4, err, out)
			}
			if after := vipCounters(t, gw, vip4).Counters.RxPackets; after == before {
				t.Fatalf("the gate counted nothing (rx %d): the link does not run the chain up filled", after)
			}
		})
	}
}

// TestUpFailureKeepsChain: an up that adds a feature to a running
// interface and then fails on another interface takes back the new chain
// too: the interface runs the chain it ran before (same entry, same
// stages), not the new feature's XDP stage without its TC program.
func TestUpFailureKeepsChain(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	if err := gw.IP("link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{"eth1", "eth1p"} {
		if err := gw.IP("link", "set", dev, "up"); err != nil {
			t.Fatal(err)
		}
	}
	// Another tool's XDP program on eth1: tandem's attach there fails.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var foreign link.Link
	if err := gw.Do(func() error {
		iface, err := net.InterfaceByName("eth1")
		if err != nil {
			return err
		}
		foreign, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	secret := filepath.Join(t.TempDir(), "cookie.key")
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}

	base := []string{"up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS()}
	mustTandem(t, gw, base...)
	before := status(t, gw)
	r := tandem(t, gw, append(base, "--proxy-iface", "eth0,eth1", "--proxy-secret", secret)...)
	if r.code != 1 || !strings.Contains(r.stderr, "eth1") {
		t.Fatalf("exit %d, stderr %q: want the refusal on eth1", r.code, r.stderr)
	}
	after := status(t, gw)
	if !after.Healthy() {
		t.Fatalf("after the failed up: %+v", after.Attachments)
	}
	sameChains(t, before, after)
}

// sameChains: after runs the attachments and chains before ran (the same
// pins, the same stages, the same XDP entry).
func sameChains(t *testing.T, before, after *loader.Status) {
	t.Helper()
	pins := func(st *loader.Status) map[string]ebpf.ProgramID {
		out := map[string]ebpf.ProgramID{}
		for _, a := range st.Attachments {
			out[a.Pin] = a.ProgID
			for _, s := range a.Chain {
				if s.Slot < chain.Slots {
					out[fmt.Sprintf("%s#%d", a.Pin, s.Slot)] = 1 // the stage is there; its program may be new
				}
			}
		}
		return out
	}
	b, a := pins(before), pins(after)
	for k := range a {
		if _, ok := b[k]; !ok {
			t.Errorf("after the failed up %s is there, and was not before", k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("after the failed up %s is gone", k)
		}
	}
	if a["xdp@eth0"] != b["xdp@eth0"] {
		t.Errorf("eth0's link runs program %d, not the entry %d it ran before the failed up", a["xdp@eth0"], b["xdp@eth0"])
	}
}

// TestUpDropsStagePinOfEarlierBuild: builds before the chain pinned the
// gate's XDP program by name (progs/xdp_vipgate); a stage is never pinned
// now (it belongs to one interface's chain), so up removes that pin: it
// held an old program loaded, and status listed it as tandem's.
func TestUpDropsStagePinOfEarlierBuild(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	up := []string{"up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS()}
	mustTandem(t, gw, up...)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	stale := filepath.Join(gw.BPFFS(), "progs", "xdp_vipgate")
	if err := p.Pin(stale); err != nil {
		t.Fatal(err)
	}
	mustTandem(t, gw, up...)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("%s is still pinned after up (%v)", stale, err)
	}
	for _, ps := range status(t, gw).Programs {
		if ps.Name == "xdp_vipgate" {
			t.Errorf("status lists program %+v, pinned by an earlier build", ps)
		}
	}
}

// TestUpAdoptsRenamedInterface: the interface was renamed under a running
// datapath (eth0 to wan0). up -i wan0 finds tandem's own XDP link on it,
// pinned under the old name, and takes it over (same link, its chain
// swapped in place) instead of failing on "another XDP program"; nothing
// stays pinned under the old name.
func TestUpAdoptsRenamedInterface(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	secret := filepath.Join(t.TempDir(), "cookie.key")
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := gw.Sysctl("net.ipv4.conf.eth0.accept_local", "0"); err != nil {
		t.Fatal(err)
	}
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--proxy-iface", "eth0", "--proxy-secret", secret)
	links := map[string]link.ID{} // by hook
	for _, a := range status(t, gw).Attachments {
		links[a.Hook] = a.LinkID
	}
	for _, args := range [][]string{{"link", "set", "eth0", "down"}, {"link", "set", "eth0", "name", "wan0"}, {"link", "set", "wan0", "up"}} {
		if err := gw.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	r := tandem(t, gw, "up", "--once", "-i", "wan0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--proxy-iface", "wan0", "--proxy-secret", secret)
	if r.code != 0 {
		t.Fatalf("up on the renamed interface: exit %d\n%s", r.code, r.stderr)
	}
	st := status(t, gw)
	if !st.Healthy() {
		t.Fatalf("status after up: %+v", st.Attachments)
	}
	for _, a := range st.Attachments {
		if a.Iface != "wan0" {
			t.Errorf("%s still pinned under the old name", a.Pin)
		}
		if a.LinkID != links[a.Hook] {
			t.Errorf("%s on wan0: link %d, was %d: want the same link (a second one runs the feature twice)", a.Hook, a.LinkID, links[a.Hook])
		}
		if a.Hook == "xdp" && (len(a.Chain) == 0 || a.Chain[0].ProgID == 0) {
			t.Errorf("xdp on wan0: chain %+v: want the chain running the gate", a.Chain)
		}
	}
	des, _ := os.ReadDir(filepath.Join(gw.BPFFS(), "maps"))
	for _, d := range des {
		if strings.HasSuffix(d.Name(), "@eth0") {
			t.Errorf("maps/%s left under the old name", d.Name())
		}
	}
	// accept_local went with the interface: down puts back its value
	// from before the first up, not the one up had set.
	mustTandem(t, gw, "down", "--bpffs", gw.BPFFS())
	if got := readSysctl(t, gw, "net.ipv4.conf.wan0.accept_local"); got != "0" {
		t.Errorf("after down: wan0's accept_local = %s, want 0 (its value before the first up)", got)
	}
}

// TestUpDaemonFailureKeepsChain: up adds the SYN proxy to eth0 (a root
// swap through eth0's running link), then its daemon cannot start (the
// metrics address is taken): the rollback puts eth0's earlier chain back,
// as for a failure within up.
func TestUpDaemonFailureKeepsChain(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	var busy net.Listener
	if err := gw.Do(func() (err error) { busy, err = net.Listen("tcp", "127.0.0.1:0"); return }); err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	secret := filepath.Join(t.TempDir(), "cookie.key")
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS())
	before := status(t, gw)
	r := tandemBounded(t, gw, 30*time.Second, "up", "-i", "eth0", "--vip", vip4.String()+"=standby", "--bpffs", gw.BPFFS(),
		"--proxy-iface", "eth0", "--proxy-secret", secret, "--state-dir", stateDir(t), "--metrics-addr", busy.Addr().String())
	if r.code != 1 || !strings.Contains(r.stderr, "address already in use") {
		t.Fatalf("exit %d, want 1 and the metrics address refused\n%s", r.code, r.stderr)
	}
	after := status(t, gw)
	if !after.Healthy() {
		t.Fatalf("after the failed up: %+v", after.Attachments)
	}
	sameChains(t, before, after)
	if len(after.VIPs) != 1 || !after.VIPs[0].Owned {
		t.Errorf("after the failed up the gate holds %+v: want %s owned, as before", after.VIPs, vip4)
	}
}

// TestUpFailureKeepsGate: an up that fails after the gate's setup (the
// SYN proxy's secret is too short) leaves the VIP gate as it was: a
// failed up never hands a VIP this host serves to the peer.
func TestUpFailureKeepsGate(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS())
	short := filepath.Join(t.TempDir(), "short.key")
	if err := os.WriteFile(short, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := tandem(t, gw, "up", "--once", "-i", "eth0", "--vip", vip4.String()+"=standby", "--vip", "10.77.0.101",
		"--bpffs", gw.BPFFS(), "--proxy-iface", "eth0", "--proxy-secret", short)
	if r.code != 1 || !strings.Contains(r.stderr, "secret") {
		t.Fatalf("exit %d, stderr %q: want the short secret refused", r.code, r.stderr)
	}
	vips := status(t, gw).VIPs
	if len(vips) != 1 || vips[0].Addr != vip4 || !vips[0].Owned {
		t.Fatalf("after the failed up the gate holds %+v: want only %s, owned, as before", vips, vip4)
	}
}
