// Command guest is /init of the QEMU migration lab's guest: it loads the
// virtio network driver, gives eth0 the guest's address and echoes UDP on
// port 7 until the machine stops. It needs no root file system and no 9p
// mount (a 9p mount blocks migration). tools/qemumig builds it statically.
//
// The address comes from the kernel command line, qemumig.addr=A.B.C.D/N;
// the network is on-link (the hosts answer ARP for everything by proxy),
// so the guest needs no route and its neighbour entry for the hosts' tap
// MAC stays right on either host.
package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// modules in load order: virtio-net-pci's dependencies first.
var modules = []string{"virtio_ring.ko", "virtio.ko", "virtio_pci_legacy_dev.ko", "virtio_pci_modern_dev.ko",
	"virtio_pci.ko", "failover.ko", "net_failover.ko", "virtio_net.ko"}

func main() {
	unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	unix.Mount("proc", "/proc", "proc", 0, "")
	unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		os.Stdout, os.Stderr = c, c
	}
	// run echoes until it fails.
	fmt.Println("qemumig guest: error:", run())
	// PID 1 must not exit.
	for {
		time.Sleep(time.Hour)
	}
}

// run loads the NIC modules, sets the address from the kernel command
// line and echoes UDP; it returns only with an error.
func run() error {
	for _, m := range modules {
		f, err := os.Open("/modules/" + m)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", m, err)
		}
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	var pfx netip.Prefix
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "qemumig.addr="); ok {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return fmt.Errorf("qemumig.addr: %w", err)
			}
			pfx = p
		}
	}
	if !pfx.IsValid() {
		return fmt.Errorf("no qemumig.addr= on the kernel command line")
	}
	var err error
	for i := 0; i < 100; i++ {
		if _, err = net.InterfaceByName("eth0"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	if err := ifup("lo", netip.MustParsePrefix("127.0.0.1/8")); err != nil {
		return err
	}
	if err := ifup("eth0", pfx); err != nil {
		return err
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: 7})
	if err != nil {
		return err
	}
	// A resumed TCG guest runs slowly for a while, and the held packets
	// arrive in one burst: a socket buffer of 4 MiB, not the default
	// 208 KiB, keeps the guest's own socket from dropping them.
	os.WriteFile("/proc/sys/net/core/rmem_max", []byte("4194304"), 0o644)
	c.SetReadBuffer(4 << 20)
	go reportUDPErrors()
	fmt.Println("qemumig guest: echoing UDP on", pfx.Addr(), "port 7")
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// reportUDPErrors prints the guest's UDP receive errors on the console
// when they change: a datagram the guest dropped itself is the guest's
// loss, not the move's (the lab reads these lines).
func reportUDPErrors() {
	last := ""
	for {
		time.Sleep(200 * time.Millisecond)
		b, err := os.ReadFile("/proc/net/snmp")
		if err != nil {
			return
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i++ {
			if strings.HasPrefix(lines[i], "Udp:") && strings.HasPrefix(lines[i+1], "Udp:") {
				names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
				var out []string
				for j := 1; j < len(names) && j < len(vals); j++ {
					if names[j] == "InErrors" || names[j] == "RcvbufErrors" || names[j] == "SndbufErrors" {
						out = append(out, names[j]+"="+vals[j])
					}
				}
				if s := strings.Join(out, " "); s != last {
					fmt.Println("qemumig guest: udp", s)
					last = s
				}
				break
			}
		}
	}
}

// ifup gives dev its address and brings it up, through the old ioctls (no
// netlink library in a 2 MB init).
func ifup(dev string, p netip.Prefix) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(dev)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(p.Addr().AsSlice()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("%s address: %w", dev, err)
	}
	mask := net.CIDRMask(p.Bits(), 32)
	ifr, _ = unix.NewIfreq(dev)
	ifr.SetInet4Addr(mask)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("%s netmask: %w", dev, err)
	}
	ifr, _ = unix.NewIfreq(dev)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s up: %w", dev, err)
	}
	return nil
}
