package synflood_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/synflood"
	"github.com/tandem-net/tandem/tools/testenv"
)

// snmp reads one counter of /proc/net/snmp in h.
func snmp(t *testing.T, h *lab.Host, proto, name string) int {
	t.Helper()
	v, err := h.SNMP(proto, name)
	if err != nil {
		t.Fatal(err)
	}
	return int(v)
}

// TestFlood: every generated SYN reaches the peer's TCP with valid IP and
// TCP checksums (its stack counts them in, none as a checksum error).
func TestFlood(t *testing.T) {
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "a"}, {Name: "b", Routes: []string{"default via 10.55.0.1"}}},
		Links: []lab.LinkSpec{{A: lab.End{Host: "a", Iface: "eth0", Addrs: []string{"10.55.0.1/24"}}, B: lab.End{Host: "b", Iface: "eth0", Addrs: []string{"10.55.0.2/24"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, b := l.Host("a"), l.Host("b")
	// Frames XDP transmits into a veth need an XDP program on the peer.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	var bMAC net.HardwareAddr
	if err := b.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		bMAC = i.HardwareAddr
		l, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: i.Index})
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	before, beforeErr := snmp(t, b, "Tcp", "InSegs"), snmp(t, b, "Tcp", "InCsumErrors")
	if err := a.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		g, err := synflood.New(i.HardwareAddr, bMAC, netip.MustParseAddrPort("10.55.0.2:9"))
		if err != nil {
			return err
		}
		defer g.Close()
		return g.Send(i.Index, n)
	}); err != nil {
		t.Fatal(err)
	}
	if got := snmp(t, b, "Tcp", "InSegs") - before; got != n {
		t.Errorf("the peer's TCP took %d segments, want %d", got, n)
	}
	if e := snmp(t, b, "Tcp", "InCsumErrors") - beforeErr; e != 0 {
		t.Errorf("%d checksum errors", e)
	}
}
