package loader_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/tools/lab"
)

// The routed path: E's tunnel address migR is beyond the router rt, not
// on any segment of the gateway.
const (
	migR      = "10.96.5.2"
	migRtMAC  = "02:00:00:96:04:02" // rt's eth0, the gateway's next hop to migR
	migRMAC   = "02:00:00:96:05:02" // E's ethr
	migEncSrc = "10.96.4.1"         // the gateway's source for the outer header
)

// addRoutedPath adds rt and its links to the lab spec: gw eth3 — rt —
// E's ethr, and the gateway's route to migR via rt.
func addRoutedPath(spec *lab.Spec) {
	for i := range spec.Hosts {
		switch spec.Hosts[i].Name {
		case "gw":
			spec.Hosts[i].Routes = append(spec.Hosts[i].Routes, "10.96.5.0/24 via 10.96.4.2")
		case "ep":
			if spec.Hosts[i].Sysctls == nil {
				spec.Hosts[i].Sysctls = map[string]string{}
			}
			// Inner packets come in on ethr from a client whose
			// route back is another link.
			spec.Hosts[i].Sysctls["net.ipv4.conf.all.rp_filter"] = "0"
			spec.Hosts[i].Sysctls["net.ipv4.conf.default.rp_filter"] = "0"
		}
	}
	spec.Hosts = append(spec.Hosts, lab.HostSpec{Name: "rt", Forward: true})
	spec.Links = append(spec.Links,
		lab.LinkSpec{A: lab.End{Host: "gw", Iface: "eth3", Addrs: []string{"10.96.4.1/24"}},
			B: lab.End{Host: "rt", Iface: "eth0", Addrs: []string{"10.96.4.2/24"}, MAC: migRtMAC}, TxOff: true},
		lab.LinkSpec{A: lab.End{Host: "rt", Iface: "eth1", Addrs: []string{"10.96.5.1/24"}},
			B: lab.End{Host: "ep", Iface: "ethr", Addrs: []string{migR + "/24"}, MAC: migRMAC}, TxOff: true})
}

// decapIPIP is the destination host's decapsulation, as its kernel's
// tunl0 would do it: an IPv4 frame carrying IP-in-IP (protocol 4, a
// 20-byte outer header) loses the outer header and goes to the stack.
// (This host's kernel is built without CONFIG_NET_IPIP; a Debian kernel
// has it as the ipip module: `ip link set tunl0 up` on the host.)
func decapIPIP() asm.Instructions {
	return append(ipv4Prefix(34, 4), // IPPROTO_IPIP
		asm.LoadMem(asm.R7, asm.R2, 0, asm.DWord),
		asm.LoadMem(asm.R8, asm.R2, 8, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 20),
		asm.FnXdpAdjustHead.Call(),
		asm.JNE.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.StoreMem(asm.R2, 0, asm.R7, asm.DWord),
		asm.StoreMem(asm.R2, 8, asm.R8, asm.Word),
		asm.StoreImm(asm.R2, 12, 0x0008, asm.Half),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"),
		asm.Return(),
	)
}

func decapOn(t *testing.T, h *lab.Host, ifc string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: decapIPIP()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	err = h.Do(func() error {
		i, err := net.InterfaceByName(ifc)
		if err != nil {
			return err
		}
		lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: i.Index})
		if err != nil {
			return fmt.Errorf("xdp on %s: %w", ifc, err)
		}
		t.Cleanup(func() { lk.Close() })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMigrateRouted: an endpoint moves from a segment location (S) to a
// routed one (ipip:migR, the gateway encapsulates, rt routes the outer
// packet, E decapsulates) and back, each with a 300 ms blackout: nothing
// lost, duplicated or reordered either way. Going there, the held
// packets are flushed encapsulated (S is down: they can only arrive
// through rt); coming back, the routed host is the one that stops.
func TestMigrateRouted(t *testing.T) {
	skipTimingInVM(t)
	m := newMigLabSpec(t, migLabSpec(true), "--migrate-encap-src", migEncSrc)
	decapOn(t, m.l.Hosts["ep"], "ethr")
	// Fixed neighbours on the routed path: the stage does not resolve
	// one, and rt's resolution would drop what it queues at 100k/s.
	if err := m.gw.IP("neigh", "replace", "10.96.4.2", "lladdr", migRtMAC, "dev", "eth3", "nud", "permanent"); err != nil {
		t.Fatal(err)
	}
	if err := m.l.Hosts["rt"].IP("neigh", "replace", migR, "lladdr", migRMAC, "dev", "eth1", "nud", "permanent"); err != nil {
		t.Fatal(err)
	}
	rate := 100000 / testScale(t)
	for _, mv := range []migMove{
		{ep: migEP, s: migS, d: "ipip:" + migR, sIface: "eths"},
		{ep: migEP, s: "ipip:" + migR, d: migS, sIface: "ethr"},
	} {
		m.cli(t, "endpoint", "set", mv.ep.String(), mv.s)
		sent, lost, dup, reo := moveRunOf(t, m, true, rate, mv)
		t.Logf("%s -> %s: sent %d, lost %d, duplicated %d, reordered %d", mv.s, mv.d, sent, lost, dup, reo)
		if lost != 0 || dup != 0 || reo != 0 {
			t.Errorf("%s -> %s with the hold: %d lost, %d duplicated, %d reordered of %d; want none", mv.s, mv.d, lost, dup, reo, sent)
		}
	}
	// The location record says how it is reached, as set.
	m.cli(t, "endpoint", "set", migEP.String(), "--encap", migR)
	if out := m.cli(t, "endpoint", "list").stdout; !strings.Contains(out, "ipip:"+migR) {
		t.Errorf("endpoint list after set --encap %s:\n%s", migR, out)
	}
}
