// Command demo builds a lab (client, gateway, backend), runs tandem on the
// gateway, sends real traffic through it and shows what the datapath saw;
// then a pair of gateways running the SYN proxy with the election and the
// state sync, whose owner dies under live connections.
// It checks its own results and exits non-zero when they are wrong, so the
// demo is also a smoke test. Run it as root: `make demo`.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/traffic"
)

var (
	vip4    = netip.MustParseAddr("10.80.0.100")
	vip6    = netip.MustParseAddr("fd80::100")
	standby = netip.MustParseAddr("10.80.0.200")
)

func main() {
	bin := flag.String("tandem", "bin/tandem", "path of the tandem binary")
	keep := flag.Bool("keep", false, "leave the lab up at the end (remove it with: ip netns del NAME...)")
	flag.Parse()
	if err := run(*bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(bin string, keep bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces and loads BPF programs: run it as root (sudo make demo)")
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("tandem binary %s: %w (make build)", bin, err)
	}
	if err := lab.Sweep(); err != nil {
		fmt.Println("note: sweeping old labs:", err)
	}
	step("building the lab: client <-> gateway <-> backend (network namespaces, veth)")
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{
			{Name: "client", Routes: []string{"10.80.0.0/24 via 10.80.1.1", "10.80.2.0/24 via 10.80.1.1", "fd80::/64 via fd80:1::1"}},
			{Name: "gateway", Forward: true, Loopback: []string{"10.80.0.100/32", "10.80.0.200/32", "fd80::100/128"}},
			{Name: "backend", Routes: []string{"10.80.1.0/24 via 10.80.2.1"}},
		},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "client", Iface: "eth0", Addrs: []string{"10.80.1.2/24", "fd80:1::2/64"}},
				B: lab.End{Host: "gateway", Iface: "eth0", Addrs: []string{"10.80.1.1/24", "fd80:1::1/64"}}},
			{A: lab.End{Host: "gateway", Iface: "eth1", Addrs: []string{"10.80.2.1/24"}},
				B: lab.End{Host: "backend", Iface: "eth0", Addrs: []string{"10.80.2.2/24"}}},
		},
	})
	if err != nil {
		return err
	}
	gw, client, backend := l.Host("gateway"), l.Host("client"), l.Host("backend")
	root := gw.BPFFS()
	cleanup := func() {
		if keep {
			fmt.Printf("lab kept: namespaces %s-*, pins under %s\n", l.ID, root)
			return
		}
		gw.Cmd(bin, "down", "--bpffs", root).Run()
		l.Close()
	}
	defer cleanup()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; cleanup(); os.Exit(130) }()

	sh := func(h *lab.Host, name string, args ...string) error {
		fmt.Printf("    [%s] %s %v\n", h.Name, name, args)
		cmd := h.Cmd(name, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
		return cmd.Run()
	}
	step("tandem up on the gateway: XDP on eth0, TC egress; VIPs %s and %s owned, %s standby", vip4, vip6, standby)
	if err := sh(gw, bin, "up", "--once", "-i", "eth0", "--vip", vip4.String(), "--vip", vip6.String(), "--vip", standby.String()+"=standby", "--bpffs", root); err != nil {
		return fmt.Errorf("tandem up: %w", err)
	}

	step("UDP echo: 1000 datagrams each to %s and %s", vip4, vip6)
	for _, v := range []netip.Addr{vip4, vip6} {
		srv, err := traffic.ListenEcho(gw.Do, netip.AddrPortFrom(v, 9000))
		if err != nil {
			return err
		}
		f, err := traffic.StartFlood(client.Do, netip.AddrPortFrom(v, 9000), traffic.FloodConfig{Max: 1000, Burst: 50, Gap: time.Millisecond})
		if err != nil {
			return err
		}
		f.Wait()
		r := f.Stop(3 * time.Second)
		srv.Close()
		fmt.Printf("    %s: sent %d, echoed %d\n", v, r.Sent, r.Echoed)
		if r.Lost() != 0 {
			return fmt.Errorf("%d datagrams to %s lost", r.Lost(), v)
		}
	}

	step("TCP: 1 MiB to a server on %s and back, content hash checked", vip4)
	if err := tcpEcho(gw, client, netip.AddrPortFrom(vip4, 8080), 1<<20); err != nil {
		return err
	}

	step("routed traffic to the backend (not a VIP) passes untouched")
	if err := sh(client, "ping", "-c", "3", "-i", "0.2", "-q", "10.80.2.2"); err != nil {
		return fmt.Errorf("ping backend: %w", err)
	}
	_ = backend

	step("traffic to the standby VIP %s is dropped by the gate", standby)
	f, err := traffic.StartFlood(client.Do, netip.AddrPortFrom(standby, 9000), traffic.FloodConfig{Max: 100})
	if err != nil {
		return err
	}
	f.Wait()
	if r := f.Stop(500 * time.Millisecond); r.Echoed != 0 {
		return fmt.Errorf("%d datagrams to the standby VIP came back: the gate is open", r.Echoed)
	}
	fmt.Println("    100 sent, none answered")

	step("checking the counters against what was sent")
	out, err := gw.Cmd(bin, "status", "--json", "--bpffs", root).Output()
	if err != nil {
		return fmt.Errorf("tandem status: %w", err)
	}
	var st loader.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return fmt.Errorf("tandem status --json: %w", err)
	}
	want := map[netip.Addr]func(c maps.VIPCounters) bool{
		vip4:    func(c maps.VIPCounters) bool { return c.RxPackets >= 1000 && c.TxPackets >= 1000 },
		vip6:    func(c maps.VIPCounters) bool { return c.RxPackets >= 1000 && c.TxPackets >= 1000 },
		standby: func(c maps.VIPCounters) bool { return c.DropNotOwner >= 100 && c.RxPackets == 0 },
	}
	for _, v := range st.VIPs {
		if ok := want[v.Addr]; ok == nil || !ok(v.Counters) {
			return fmt.Errorf("VIP %s: counters %+v do not match the traffic sent", v.Addr, v.Counters)
		}
		delete(want, v.Addr)
	}
	if len(want) != 0 {
		return fmt.Errorf("VIPs missing from status: %v", want)
	}
	fmt.Println("    every VIP counted what was sent to it")

	step("what the datapath counted (tandem status)")
	if err := sh(gw, bin, "status", "--bpffs", root); err != nil {
		return err
	}
	step("the same maps through bpftool, with BTF field names")
	if err := sh(gw, "bpftool", "map", "dump", "pinned", root+"/maps/vip_gate"); err != nil {
		return err
	}
	if !keep {
		step("tandem down: every attachment and pin removed")
		if err := sh(gw, bin, "down", "--bpffs", root); err != nil {
			return err
		}
	}
	return failover(bin, keep)
}

// tcpEcho sends n random bytes over TCP to a server on addr in gw that
// echoes them, and checks the hash of what came back.
func tcpEcho(gw, client *lab.Host, addr netip.AddrPort, n int) error {
	var ln net.Listener
	if err := gw.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	var c net.Conn
	if err := client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), 3*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	var got bytes.Buffer
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(&got, c); err != nil {
		return fmt.Errorf("tcp echo: %w", err)
	}
	want, have := sha256.Sum256(data), sha256.Sum256(got.Bytes())
	fmt.Printf("    %d bytes sent, %d echoed, sha256 %x… %s\n", n, got.Len(), have[:6], map[bool]string{true: "match", false: "MISMATCH"}[want == have])
	if want != have {
		return errors.New("tcp echo: content differs")
	}
	return nil
}
