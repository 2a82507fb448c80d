package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"
)

// Addr is one address the owner holds: a prefix on an interface.
type Addr struct {
	Prefix netip.Prefix // the address and its on-link prefix length
	Iface  string
}

func (a Addr) String() string { return a.Prefix.String() + "@" + a.Iface }

// ParseAddr reads ADDR/LEN@IFACE.
func ParseAddr(s string) (Addr, error) {
	p, ifname, ok := cutLast(s, "@")
	if !ok || ifname == "" {
		return Addr{}, fmt.Errorf("--vip-addr %q: want ADDR/LEN@IFACE, e.g. 192.0.2.10/24@eth0", s)
	}
	pfx, err := netip.ParsePrefix(p)
	if err != nil {
		return Addr{}, fmt.Errorf("--vip-addr %q: %w", s, err)
	}
	if pfx.Addr().Zone() != "" {
		return Addr{}, fmt.Errorf("--vip-addr %q: no zone", s)
	}
	return Addr{Prefix: netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()), Iface: ifname}, nil
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

// addrMessage is a's rtnetlink request on the interface with index idx.
// IPv6 addresses skip the kernel's duplicate address detection (the
// takeover probed already, and DAD would hold the address unusable for a
// second).
func addrMessage(a Addr, idx int) *rtnetlink.AddressMessage {
	fam, flags := uint8(unix.AF_INET), uint32(0)
	if a.Prefix.Addr().Is6() {
		fam, flags = unix.AF_INET6, unix.IFA_F_NODAD
	}
	ip := net.IP(a.Prefix.Addr().AsSlice())
	attrs := &rtnetlink.AddressAttributes{Address: ip, Local: ip, Flags: flags}
	return &rtnetlink.AddressMessage{Family: fam, PrefixLength: uint8(a.Prefix.Bits()), Scope: unix.RT_SCOPE_UNIVERSE,
		Index: uint32(idx), Attributes: attrs}
}

// newAddr adds a over c; an address already there is fine.
func newAddr(c *rtnetlink.Conn, a Addr, idx int) error {
	if err := c.Address.New(addrMessage(a, idx)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s: %w", a, err)
	}
	return nil
}

// deleteAddr removes a over c; an address already gone is fine.
func deleteAddr(c *rtnetlink.Conn, a Addr, idx int) error {
	if err := c.Address.Delete(addrMessage(a, idx)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", a, err)
	}
	return nil
}

// addAddr adds a to its interface; an address already there is fine.
// It looks everything up afresh: the election uses hostNet.add.
func addAddr(a Addr) error {
	ifc, err := net.InterfaceByName(a.Iface)
	if err != nil {
		return fmt.Errorf("add %s: %w", a, err)
	}
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	return newAddr(c, a, ifc.Index)
}

// delAddr removes a; an address already gone is fine.
func delAddr(a Addr) error {
	ifc, err := net.InterfaceByName(a.Iface)
	if err != nil {
		if isNoSuchIface(err) {
			return nil // the interface is gone, and the address with it
		}
		return fmt.Errorf("remove %s: %w", a, err)
	}
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return fmt.Errorf("rtnetlink: %w", err)
	}
	defer c.Close()
	return deleteAddr(c, a, ifc.Index)
}

func isNoSuchIface(err error) bool {
	var e *net.OpError
	return errors.As(err, &e) || err.Error() == "route ip+net: no such network interface"
}

// HasAddr says whether a is configured on its interface.
func HasAddr(a Addr) bool {
	ifc, err := net.InterfaceByName(a.Iface)
	if err != nil {
		return false
	}
	as, err := ifc.Addrs()
	if err != nil {
		return false
	}
	for _, x := range as {
		if n, ok := x.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.Prefix.Addr() {
				return true
			}
		}
	}
	return false
}

// IfaceUp says whether an interface exists, is up and has carrier.
// The election asks every round, for every interface: one ioctl each
// (net.InterfaceByName dumps every link over netlink, which was a seventh
// of an idle daemon's CPU time).
func IfaceUp(name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	// Any socket reaches the interface ioctls; a local one needs no
	// address family configured.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	if f := ifr.Uint16(); f&unix.IFF_UP == 0 || f&unix.IFF_RUNNING == 0 {
		return fmt.Errorf("interface %s is down", name)
	}
	return nil
}

// packetConn is a raw socket on one interface for one ethertype.
type packetConn struct {
	fd    int
	ifc   link
	proto uint16
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// link is what the takeover needs of an interface.
type link struct {
	name  string
	index int
	mac   net.HardwareAddr
}

// linkLookups counts lookupLink's dumps (tests: none on the takeover path).
var linkLookups atomic.Uint64

// lookupLink resolves an interface by name (a netlink dump of every
// link: not for the takeover's critical path, see hostNet).
func lookupLink(name string) (link, error) {
	linkLookups.Add(1)
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return link{}, err
	}
	return link{name: name, index: ifc.Index, mac: ifc.HardwareAddr}, nil
}

func openPacketOn(l link, proto uint16) (*packetConn, error) {
	// Protocol 0 at creation and the real one at bind: a socket created
	// with a protocol is already hooked in, and re-binding it unhooks it
	// first, which waits for an RCU grace period (tens of milliseconds).
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket on %s: %w", l.name, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: l.index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket to %s: %w", l.name, err)
	}
	return &packetConn{fd: fd, ifc: l, proto: proto}, nil
}

// Close releases the socket in the background: closing a packet socket
// waits for an RCU grace period (synchronize_net), tens of milliseconds
// that a takeover must not spend.
func (c *packetConn) Close() error {
	go unix.Close(c.fd)
	return nil
}

func (c *packetConn) send(frame []byte, dst net.HardwareAddr) error {
	return sendFrame(c.fd, c.ifc.index, c.proto, frame, dst)
}

// sendFrame sends frame out of interface idx on packet socket fd (bound
// or not: an unbound one with protocol 0 sends and never receives).
func sendFrame(fd, idx int, proto uint16, frame []byte, dst net.HardwareAddr) error {
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: idx, Halen: 6}
	copy(sa.Addr[:], dst)
	return unix.Sendto(fd, frame, 0, sa)
}

// recv waits until deadline for frames and hands each to f; f returning
// true stops the wait. It waits in ppoll, whose timeout is a
// high-resolution timer: a socket's SO_RCVTIMEO counts in jiffies and
// overshot a 10 ms probe by up to two of them (8 ms at HZ=250), which a
// takeover waited out.
func (c *packetConn) recv(deadline time.Time, f func([]byte) bool) error {
	buf := make([]byte, 2048)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		ts := unix.NsecToTimespec(left.Nanoseconds())
		pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		if n, err := unix.Ppoll(pfd, &ts, nil); n == 0 || errors.Is(err, unix.EINTR) {
			continue
		} else if err != nil {
			return err
		}
		n, _, err := unix.Recvfrom(c.fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if f(buf[:n]) {
			return nil
		}
	}
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func serialize(ls ...gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// arpFrame is an ARP request from sender (0.0.0.0 for a probe) about
// target, broadcast.
func arpFrame(mac net.HardwareAddr, sender, target netip.Addr) ([]byte, error) {
	s := sender.As4()
	t := target.As4()
	return serialize(
		&layers.Ethernet{SrcMAC: mac, DstMAC: broadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: mac, SourceProtAddress: s[:], DstHwAddress: make([]byte, 6), DstProtAddress: t[:]})
}

// solicitedNode is the multicast group a neighbour solicitation for a
// goes to, and its MAC.
func solicitedNode(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	b := a.As16()
	g := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	gb := g.As16()
	return g, net.HardwareAddr{0x33, 0x33, gb[12], gb[13], gb[14], gb[15]}
}

// nsFrame is a duplicate-address-detection probe for target: a neighbour
// solicitation from ::, to the solicited-node group.
func nsFrame(mac net.HardwareAddr, target netip.Addr) ([]byte, net.HardwareAddr, error) {
	g, gmac := solicitedNode(target)
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: net.IPv6unspecified, DstIP: g.AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	f, err := serialize(&layers.Ethernet{SrcMAC: mac, DstMAC: gmac, EthernetType: layers.EthernetTypeIPv6}, ip, ic,
		&layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice()})
	return f, gmac, err
}

// naFrame is an unsolicited neighbour advertisement of target (override
// set) to all nodes.
func naFrame(mac net.HardwareAddr, target netip.Addr) ([]byte, net.HardwareAddr, error) {
	all := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: target.AsSlice(), DstIP: net.ParseIP("ff02::1")}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	f, err := serialize(&layers.Ethernet{SrcMAC: mac, DstMAC: all, EthernetType: layers.EthernetTypeIPv6}, ip, ic,
		&layers.ICMPv6NeighborAdvertisement{Flags: 0x20, TargetAddress: target.AsSlice(), // override
			Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: mac}}})
	return f, all, err
}

// announceFrame is the gratuitous ARP (IPv4) or unsolicited NA (IPv6)
// for a from mac: the frame, its ethertype and its destination.
func announceFrame(mac net.HardwareAddr, a Addr) ([]byte, uint16, net.HardwareAddr, error) {
	if a.Prefix.Addr().Is4() {
		f, err := arpFrame(mac, a.Prefix.Addr(), a.Prefix.Addr())
		return f, unix.ETH_P_ARP, broadcast, err
	}
	f, dst, err := naFrame(mac, a.Prefix.Addr())
	return f, unix.ETH_P_IPV6, dst, err
}

// announce sends one gratuitous ARP (IPv4) or unsolicited NA (IPv6) for
// a, looking everything up afresh: the election uses hostNet.announce.
func announce(a Addr) error {
	l, err := lookupLink(a.Iface)
	if err != nil {
		return err
	}
	f, proto, dst, err := announceFrame(l.mac, a)
	if err != nil {
		return err
	}
	c, err := openPacketOn(l, proto)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.send(f, dst)
}

// probe asks the segment whether anybody holds a (ARP probe; NS from ::)
// and waits up to wait for an answer. It returns the answering MAC, or
// nil when nobody answered.
func probe(a Addr, wait time.Duration) (net.HardwareAddr, error) {
	l, err := lookupLink(a.Iface)
	if err != nil {
		return nil, err
	}
	return probeOn(l, a, time.Now().Add(wait))
}

// probeOn probes a on l and listens until deadline.
func probeOn(l link, a Addr, deadline time.Time) (net.HardwareAddr, error) {
	c, err := sendProbe(l, a)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var who net.HardwareAddr
	err = c.recv(deadline, func(b []byte) bool {
		who = probeAnswer(c.ifc, a, b)
		return who != nil
	})
	return who, err
}

// sendProbe opens a packet socket for a's answers on l and sends the
// probe (an ARP probe from 0.0.0.0; a DAD NS from ::).
func sendProbe(l link, a Addr) (*packetConn, error) {
	ip := a.Prefix.Addr()
	proto, v4 := uint16(unix.ETH_P_IPV6), ip.Is4()
	if v4 {
		proto = unix.ETH_P_ARP
	}
	c, err := openPacketOn(l, proto)
	if err != nil {
		return nil, err
	}
	var f []byte
	dst := broadcast
	if v4 {
		f, err = arpFrame(c.ifc.mac, netip.IPv4Unspecified(), ip)
	} else {
		f, dst, err = nsFrame(c.ifc.mac, ip)
	}
	if err == nil {
		err = c.send(f, dst)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("probe %s: %w", a, err)
	}
	return c, nil
}

// probeAnswer is the MAC of another host that frame b says holds a (an
// ARP from a, an NA for a), or nil.
func probeAnswer(l link, a Addr, b []byte) net.HardwareAddr {
	ip := a.Prefix.Addr()
	pk := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.NoCopy)
	if ip.Is4() {
		arp, ok := pk.Layer(layers.LayerTypeARP).(*layers.ARP)
		if !ok || net.HardwareAddr(arp.SourceHwAddress).String() == l.mac.String() {
			return nil
		}
		if s, ok := netip.AddrFromSlice(arp.SourceProtAddress); ok && s == ip {
			return append(net.HardwareAddr{}, arp.SourceHwAddress...)
		}
		return nil
	}
	na, ok := pk.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
	if eth, ok2 := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); ok && ok2 && eth.SrcMAC.String() != l.mac.String() {
		if t, ok := netip.AddrFromSlice(na.TargetAddress); ok && t == ip {
			return append(net.HardwareAddr{}, eth.SrcMAC...)
		}
	}
	return nil
}
