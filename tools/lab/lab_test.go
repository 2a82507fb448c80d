package lab

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to build namespaces; run the suite as root, as CI does")
	}
}

// TestBridgedSegment: three hosts on a bridge in a switch host reach each
// other over IPv4 and IPv6, a routed host beyond a router is reachable,
// and Close removes every namespace.
func TestBridgedSegment(t *testing.T) {
	requireRoot(t)
	l, err := New(Spec{
		Hosts: []HostSpec{
			{Name: "sw"}, {Name: "a"}, {Name: "b", Forward: true},
			{Name: "far", Routes: []string{"10.60.0.0/24 via 10.61.0.1"}},
			{Name: "c", Routes: []string{"10.61.0.0/24 via 10.60.0.2"}},
		},
		Links: []LinkSpec{
			{A: End{Host: "a", Iface: "eth0", Addrs: []string{"10.60.0.1/24", "fd60::1/64"}}, B: End{Host: "sw", Iface: "p1"}},
			{A: End{Host: "b", Iface: "eth0", Addrs: []string{"10.60.0.2/24", "fd60::2/64"}}, B: End{Host: "sw", Iface: "p2"}},
			{A: End{Host: "c", Iface: "eth0", Addrs: []string{"10.60.0.3/24"}}, B: End{Host: "sw", Iface: "p3"}, TxOff: true},
			{A: End{Host: "b", Iface: "eth1", Addrs: []string{"10.61.0.1/24"}}, B: End{Host: "far", Iface: "eth0", Addrs: []string{"10.61.0.2/24"}}},
		},
		Bridges: []BridgeSpec{{Host: "sw", Name: "br0", Ports: []string{"p1", "p2", "p3"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ping := func(from, to string) {
		t.Helper()
		out, err := l.Host(from).Cmd("ping", "-c", "1", "-W", "2", to).CombinedOutput()
		if err != nil {
			t.Errorf("%s -> %s: %v\n%s", from, to, err, out)
		}
	}
	ping("a", "10.60.0.2")
	ping("a", "fd60::2")
	ping("c", "10.60.0.1")
	ping("c", "10.61.0.2") // routed through b
	// Do really runs in the namespace: a listener there is reachable
	// from a, and not from the root namespace's loopback.
	var ln net.Listener
	if err := l.Host("b").Do(func() (err error) {
		ln, err = net.Listen("tcp", "10.60.0.2:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	out, err := l.Host("a").Cmd("nc", "-w", "2", "10.60.0.2", "7000").CombinedOutput()
	if err != nil || string(out) != "hello" {
		t.Errorf("connect from a to a listener opened with Do: %v %q", err, out)
	}
	ns := l.Host("a").NS
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		t.Errorf("Close left %s", ns)
	}
}

// TestBadSpecRollsBack: a spec that fails halfway leaves nothing.
func TestBadSpecRollsBack(t *testing.T) {
	requireRoot(t)
	before := labNamespaces()
	_, err := New(Spec{
		Hosts: []HostSpec{{Name: "a"}, {Name: "b"}},
		Links: []LinkSpec{{A: End{Host: "a", Iface: "eth0", Addrs: []string{"10.62.0.1"}}, B: End{Host: "b", Iface: "eth0"}}},
	})
	if err == nil || !strings.Contains(err.Error(), "want CIDR") {
		t.Fatalf("bad address accepted or wrong error: %v", err)
	}
	if after := labNamespaces(); after != before {
		t.Errorf("namespaces left behind: before %d, after %d", before, after)
	}
	if _, err := New(Spec{Links: []LinkSpec{{A: End{Host: "x"}, B: End{Host: "y"}}}}); err == nil {
		t.Error("link to an unknown host accepted")
	}
}

func labNamespaces() int {
	n := 0
	des, _ := os.ReadDir("/run/netns")
	for _, d := range des {
		if strings.HasPrefix(d.Name(), nsPrefix+strconv.Itoa(os.Getpid())+"x") {
			n++
		}
	}
	return n
}

// TestSweep: a lab whose process died is swept; a live one is not.
func TestSweep(t *testing.T) {
	requireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	staleNS := nsPrefix + strconv.Itoa(dead.Process.Pid) + "x1-h"
	if out, err := exec.Command("ip", "netns", "add", staleNS).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", staleNS).Run()
	live, err := New(Spec{Hosts: []HostSpec{{Name: "h"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	time.Sleep(10 * time.Millisecond)
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + staleNS); err == nil {
		t.Errorf("Sweep left the dead process's %s", staleNS)
	}
	if _, err := os.Stat("/run/netns/" + live.Host("h").NS); err != nil {
		t.Errorf("Sweep removed a live lab: %v", err)
	}
}
