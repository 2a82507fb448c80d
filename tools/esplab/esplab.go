// Package esplab builds an IPsec lab on tools/lab for tandem's ESP tests
// and benchmarks: a remote peer and one or two gateways (an HA pair holding
// the same SAs, as an HA IKE daemon installs them) on one switched segment,
// ESP SAs and policies with static keys (`ip xfrm`, transport or tunnel
// mode, ESN optional, any replay window, IPv4 or IPv6), a numbered UDP
// stream inside the policies, capture of an ESP frame on the wire and its
// raw resend, forged ESP (a huge sequence number, a bad ICV), and readers
// of the kernel's replay counters (per SA over XFRM netlink, as `ip -s
// xfrm state` shows them, and the namespace's /proc/net/xfrm_stat).
//
// A kernel without ESP (the project's 6.18 build host) refuses the first SA:
// New then returns an error that wraps ErrNoESP, and tests skip naming it.
// The Debian 6.1 VM of tools/vmtest has esp4, esp6 and authencesn.
package esplab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/xfrm"
)

// ErrNoESP: the kernel refused an ESP SA for want of ESP or an algorithm.
var ErrNoESP = errors.New("kernel feature ESP missing")

// Feature names what the lab needs, for testenv.RequireFeature.
const Feature = "ESP (esp4/esp6 with ecb(cipher_null), hmac(sha256))"

// Keys are the lab's static keys: null encryption and HMAC-SHA256 (the
// replay check and the ICV are what the lab exercises; the 6.1 VM under
// TCG cannot set up cbc(aes), while null and hmac work).
var Keys = []string{"enc", "ecb(cipher_null)", "", "auth-trunc", "hmac(sha256)",
	"0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", "128"}

// Addresses. The segment is 10.80.0.0/24 and fd80::/64: the peer .1, the
// gateways .2 and .3. The VIP (the SAs' gateway end) is on the owner's
// lo; the peer routes it via the owner's segment address. In tunnel mode
// the protected traffic runs between the peer's inner address and the
// gateways' (on lo of each).
var (
	PeerAddr4  = netip.MustParseAddr("10.80.0.1")
	PeerAddr6  = netip.MustParseAddr("fd80::1")
	GWAddr4    = []netip.Addr{netip.MustParseAddr("10.80.0.2"), netip.MustParseAddr("10.80.0.3")}
	GWAddr6    = []netip.Addr{netip.MustParseAddr("fd80::2"), netip.MustParseAddr("fd80::3")}
	VIP4       = netip.MustParseAddr("10.80.1.1")
	VIP6       = netip.MustParseAddr("fd80:1::1")
	PeerInner4 = netip.MustParseAddr("10.80.2.1")
	PeerInner6 = netip.MustParseAddr("fd80:2::1")
	GWInner4   = netip.MustParseAddr("10.80.3.1")
	GWInner6   = netip.MustParseAddr("fd80:3::1")
)

// Default SPIs.
const (
	DefaultSPIIn  = 0xc0000100 // peer -> VIP (the gateways' inbound SA)
	DefaultSPIOut = 0xc0000200 // VIP -> peer (the gateways' outbound SA)
	IdleSPIBase   = 0xd0000000 // IdleSAs: SPIs from here up
	FlowSPIBase   = 0xc1000000 // FlowSAs: SPIs from here up
	FlowPort      = 7600       // FlowSAs: UDP ports from here up
)

// Request ids bind each policy to its SAs (a template without one would
// take any SA between the same addresses, the newest first): the inbound
// SA and its rekeys, the outbound SA, flow i's SA (ReqIDFlow+i). Idle SAs
// have none.
const (
	ReqIDIn   = 1
	ReqIDOut  = 2
	ReqIDFlow = 100
)

// Spec describes an ESP lab. The zero value is one gateway, transport
// mode, IPv4, no ESN, a 64-packet window.
type Spec struct {
	Gateways int    // 1 (default) or 2: gwa and gwb hold the same SAs
	Tunnel   bool   // mode tunnel (inner addresses), else transport
	ESN      bool   // flag esn
	Window   uint32 // replay-window in packets (default 64; 0 stays 64, use NoReplay for none)
	NoReplay bool   // replay-window 0: the kernel checks nothing
	IPv6     bool   // the SAs, policies and stream in IPv6 (both families are addressed)
	SPIIn    uint32 // default DefaultSPIIn
	SPIOut   uint32 // default DefaultSPIOut
	// IdleSAs more inbound SAs on every gateway (not the peer), with no
	// traffic and no policy: SPIs IdleSPIBase.., to the VIP.
	IdleSAs int
	// FlowSAs more inbound SAs with traffic of their own: flow i is UDP
	// to port FlowPort+i, through SA FlowSPIBase+i (a policy per port,
	// ahead of the main one). Lab.Flows names them; StartFlow streams.
	FlowSAs int
	// Encap: ESP in UDP 4500 (RFC 3948, `encap espinudp 4500 4500
	// 0.0.0.0` on every SA). Every host holds a UDP socket on port 4500
	// with UDP_ENCAP_ESPINUDP (the kernel decapsulates only on such a
	// socket, as an IKE daemon holds it; EncapConn gives it) and
	// policies that let UDP to port 4500 bypass IPsec (IKE's own
	// traffic, as an IKE daemon's socket policy does).
	Encap bool
}

// Lab is a built ESP lab. Close removes it.
type Lab struct {
	*lab.Lab
	Spec
	Peer     *lab.Host
	GWs      []*lab.Host // gwa, gwb
	Owner    int         // index in GWs of the host holding the VIP
	In, Out  xfrm.SAID   // the gateways' inbound and outbound SA
	Flows    []xfrm.SAID // FlowSAs' inbound SAs
	PeerAddr netip.Addr  // the SAs' peer end
	VIP      netip.Addr  // the SAs' gateway end
	// StreamSrc and StreamDst are the addresses of the protected traffic
	// from the peer to the gateways (outer in transport mode, inner in
	// tunnel mode); reversed for the other direction.
	StreamSrc, StreamDst netip.Addr
	encapConns           map[*lab.Host][]*net.UDPConn // Encap: per host, IPv4 and IPv6
}

func (s *Spec) defaults() {
	if s.Gateways == 0 {
		s.Gateways = 1
	}
	if s.Window == 0 {
		s.Window = 64
	}
	if s.NoReplay {
		s.Window = 0
	}
	if s.SPIIn == 0 {
		s.SPIIn = DefaultSPIIn
	}
	if s.SPIOut == 0 {
		s.SPIOut = DefaultSPIOut
	}
}

// New builds the lab: namespaces, the segment, the VIP on gwa, the SAs on
// the peer and on every gateway, the policies, and resolved neighbours.
func New(spec Spec) (_ *Lab, err error) {
	spec.defaults()
	if spec.Gateways < 1 || spec.Gateways > 2 {
		return nil, fmt.Errorf("esplab: %d gateways, want 1 or 2", spec.Gateways)
	}
	gwNames := []string{"gwa", "gwb"}[:spec.Gateways]
	ls := lab.Spec{
		Hosts:   []lab.HostSpec{{Name: "sw"}, {Name: "peer", Loopback: []string{"10.80.2.1/32", "fd80:2::1/128"}}},
		Bridges: []lab.BridgeSpec{{Host: "sw", Name: "seg", Ports: []string{"peer"}}},
		Links: []lab.LinkSpec{{
			A: lab.End{Host: "peer", Iface: "eth0", Addrs: []string{"10.80.0.1/24", "fd80::1/64"}},
			B: lab.End{Host: "sw", Iface: "peer"}, TxOff: true,
		}},
	}
	for i, n := range gwNames {
		ls.Hosts = append(ls.Hosts, lab.HostSpec{Name: n, Loopback: []string{"10.80.3.1/32", "fd80:3::1/128"}})
		ls.Links = append(ls.Links, lab.LinkSpec{
			A:     lab.End{Host: n, Iface: "eth0", Addrs: []string{GWAddr4[i].String() + "/24", GWAddr6[i].String() + "/64"}},
			B:     lab.End{Host: "sw", Iface: n},
			TxOff: true,
		})
		ls.Bridges[0].Ports = append(ls.Bridges[0].Ports, n)
	}
	ll, err := lab.New(ls)
	if err != nil {
		return nil, err
	}
	l := &Lab{Lab: ll, Spec: spec, Peer: ll.Host("peer")}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	for _, n := range gwNames {
		l.GWs = append(l.GWs, ll.Host(n))
	}
	l.PeerAddr, l.VIP, l.StreamSrc, l.StreamDst = PeerAddr4, VIP4, PeerAddr4, VIP4
	if spec.Tunnel {
		l.StreamSrc, l.StreamDst = PeerInner4, GWInner4
	}
	if spec.IPv6 {
		l.PeerAddr, l.VIP, l.StreamSrc, l.StreamDst = PeerAddr6, VIP6, PeerAddr6, VIP6
		if spec.Tunnel {
			l.StreamSrc, l.StreamDst = PeerInner6, GWInner6
		}
	}
	l.In = xfrm.SAID{Dst: l.VIP, SPI: spec.SPIIn, Proto: unix.IPPROTO_ESP}
	l.Out = xfrm.SAID{Dst: l.PeerAddr, SPI: spec.SPIOut, Proto: unix.IPPROTO_ESP}

	// One SA first, alone, on the peer: a kernel without ESP refuses it.
	if err := l.addSA(l.Peer, l.PeerAddr, l.VIP, spec.SPIIn, ReqIDIn); err != nil {
		return nil, err
	}
	if err := l.addSA(l.Peer, l.VIP, l.PeerAddr, spec.SPIOut, ReqIDOut); err != nil {
		return nil, err
	}
	if err := l.batch(l.Peer, l.policies(false)); err != nil {
		return nil, err
	}
	var flows strings.Builder
	for i := range spec.FlowSAs {
		spi := FlowSPIBase + uint32(i)
		l.Flows = append(l.Flows, xfrm.SAID{Dst: l.VIP, SPI: spi, Proto: unix.IPPROTO_ESP})
		flows.WriteString(l.saLine(l.PeerAddr, l.VIP, spi, ReqIDFlow+uint32(i)))
	}
	if spec.FlowSAs > 0 {
		if err := l.batch(l.Peer, flows.String()+l.flowPolicies("out")); err != nil {
			return nil, err
		}
	}
	for _, g := range l.GWs {
		var b strings.Builder
		b.WriteString(flows.String())
		b.WriteString(l.flowPolicies("in"))
		b.WriteString(l.saLine(l.PeerAddr, l.VIP, spec.SPIIn, ReqIDIn))
		b.WriteString(l.saLine(l.VIP, l.PeerAddr, spec.SPIOut, ReqIDOut))
		b.WriteString(l.policies(true))
		for i := range spec.IdleSAs {
			b.WriteString(l.saLine(l.PeerAddr, l.VIP, IdleSPIBase+uint32(i), 0))
		}
		if err := l.batch(g, b.String()); err != nil {
			return nil, err
		}
	}
	if spec.Encap {
		if err := l.openEncap(); err != nil {
			return nil, err
		}
	}
	if err := l.placeVIP(0); err != nil {
		return nil, err
	}
	return l, nil
}

// EncapPort is RFC 3948's port for ESP in UDP (and IKE after NAT
// detection).
const EncapPort = 4500

const encapArgs = "encap espinudp 4500 4500 0.0.0.0"

// openEncap opens, on every host, UDP sockets on port 4500 (IPv4 and
// IPv6) with UDP_ENCAP_ESPINUDP: the kernel hands ESP in UDP to XFRM and
// IKE (the non-ESP marker) to the socket.
func (l *Lab) openEncap() error {
	l.encapConns = map[*lab.Host][]*net.UDPConn{}
	for _, h := range append([]*lab.Host{l.Peer}, l.GWs...) {
		for _, nw := range []string{"udp4", "udp6"} {
			var c *net.UDPConn
			err := h.Do(func() (err error) {
				c, err = net.ListenUDP(nw, &net.UDPAddr{Port: EncapPort})
				if err != nil {
					return err
				}
				rc, err := c.SyscallConn()
				if err != nil {
					return err
				}
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_ENCAP, unix.UDP_ENCAP_ESPINUDP)
				}); err != nil {
					return err
				}
				return serr
			})
			if err != nil {
				if c != nil {
					c.Close()
				}
				return fmt.Errorf("esplab: the ESP-in-UDP socket (%s :4500) on %s: %w", nw, h.Name, err)
			}
			l.encapConns[h] = append(l.encapConns[h], c)
		}
	}
	return nil
}

// EncapConn is h's ESP-in-UDP socket on port 4500 (IPv4 or IPv6, as the
// lab's SAs): what the kernel does not take as ESP (IKE, after the
// non-ESP marker, which stays in the payload) is read from it.
func (l *Lab) EncapConn(h *lab.Host) *net.UDPConn {
	cs := l.encapConns[h]
	if len(cs) < 2 {
		return nil
	}
	if l.IPv6 {
		return cs[1]
	}
	return cs[0]
}

// Close removes the lab (the ESP-in-UDP sockets first).
func (l *Lab) Close() error {
	for _, cs := range l.encapConns {
		for _, c := range cs {
			c.Close()
		}
	}
	l.encapConns = nil
	return l.Lab.Close()
}

func (l *Lab) mode() string {
	if l.Tunnel {
		return "tunnel"
	}
	return "transport"
}

// saLine is one `ip xfrm state add` in batch form.
func (l *Lab) saLine(src, dst netip.Addr, spi, reqid uint32) string {
	f := ""
	if l.ESN {
		f = " flag esn"
	}
	keys := make([]string, len(Keys))
	for i, k := range Keys {
		if k == "" {
			k = `""`
		}
		keys[i] = k
	}
	if l.Encap {
		f += " " + encapArgs
	}
	return fmt.Sprintf("xfrm state add src %s dst %s proto esp spi 0x%x reqid %d mode %s replay-window %d%s %s\n",
		src, dst, spi, reqid, l.mode(), l.Window, f, strings.Join(keys, " "))
}

func (l *Lab) addSA(h *lab.Host, src, dst netip.Addr, spi, reqid uint32) error {
	args := []string{"-n", h.NS, "xfrm", "state", "add", "src", src.String(), "dst", dst.String(), "proto", "esp",
		"spi", fmt.Sprintf("0x%x", spi), "reqid", fmt.Sprint(reqid), "mode", l.mode(), "replay-window", fmt.Sprint(l.Window)}
	if l.ESN {
		args = append(args, "flag", "esn")
	}
	if l.Encap {
		args = append(args, strings.Fields(encapArgs)...)
	}
	out, err := exec.Command("ip", append(args, Keys...)...).CombinedOutput()
	if err != nil {
		s := strings.TrimSpace(string(out))
		if strings.Contains(s, "type not found") || strings.Contains(s, "algorithm not found") || strings.Contains(s, "Protocol not supported") {
			return fmt.Errorf("%w: ip xfrm state add: %s (the Debian 6.1 VM of make vmtest has it)", ErrNoESP, s)
		}
		return fmt.Errorf("esplab: ip %s: %v: %s", strings.Join(args, " "), err, s)
	}
	return nil
}

// policies: the peer's (gw false) or a gateway's, UDP only, so ARP, ND
// and ICMP stay outside them; priority 200, behind the flows' 100.
func (l *Lab) policies(gw bool) string {
	sel := func(src, dst netip.Addr) string {
		return fmt.Sprintf("src %s dst %s proto udp", netip.PrefixFrom(src, src.BitLen()), netip.PrefixFrom(dst, dst.BitLen()))
	}
	tmpl := func(src, dst netip.Addr, reqid int) string {
		if l.Tunnel {
			return fmt.Sprintf("tmpl src %s dst %s proto esp reqid %d mode tunnel", src, dst, reqid)
		}
		return fmt.Sprintf("tmpl proto esp reqid %d mode transport", reqid)
	}
	toGW := sel(l.StreamSrc, l.StreamDst)
	toPeer := sel(l.StreamDst, l.StreamSrc)
	var b strings.Builder
	if l.Encap {
		// UDP to 4500 (IKE, marker 0) bypasses IPsec both ways, ahead
		// of every other policy; the ESP in it is the kernel's.
		for _, d := range []string{"in", "out"} {
			fmt.Fprintf(&b, "xfrm policy add src %s dst %s proto udp dport %d dir %s priority 50 action allow\n",
				netip.PrefixFrom(l.PeerAddr, l.PeerAddr.BitLen()), netip.PrefixFrom(l.VIP, l.VIP.BitLen()), EncapPort, d)
			fmt.Fprintf(&b, "xfrm policy add src %s dst %s proto udp dport %d dir %s priority 50 action allow\n",
				netip.PrefixFrom(l.VIP, l.VIP.BitLen()), netip.PrefixFrom(l.PeerAddr, l.PeerAddr.BitLen()), EncapPort, d)
		}
	}
	if gw {
		fmt.Fprintf(&b, "xfrm policy add %s dir in priority 200 %s\n", toGW, tmpl(l.PeerAddr, l.VIP, ReqIDIn))
		fmt.Fprintf(&b, "xfrm policy add %s dir out priority 200 %s\n", toPeer, tmpl(l.VIP, l.PeerAddr, ReqIDOut))
	} else {
		fmt.Fprintf(&b, "xfrm policy add %s dir out priority 200 %s\n", toGW, tmpl(l.PeerAddr, l.VIP, ReqIDIn))
		fmt.Fprintf(&b, "xfrm policy add %s dir in priority 200 %s\n", toPeer, tmpl(l.VIP, l.PeerAddr, ReqIDOut))
	}
	return b.String()
}

// flowPolicies: one policy per flow (its port, its SA's SPI in the
// template), at a priority ahead of the main policies' (a lower number).
func (l *Lab) flowPolicies(dir string) string {
	var b strings.Builder
	for i := range l.FlowSAs {
		ends, mode := "", "transport"
		if l.Tunnel {
			ends, mode = fmt.Sprintf("src %s dst %s ", l.PeerAddr, l.VIP), "tunnel"
		}
		fmt.Fprintf(&b, "xfrm policy add src %s dst %s proto udp dport %d dir %s priority 100 tmpl %sproto esp spi 0x%x reqid %d mode %s\n",
			netip.PrefixFrom(l.StreamSrc, l.StreamSrc.BitLen()), netip.PrefixFrom(l.StreamDst, l.StreamDst.BitLen()),
			FlowPort+i, dir, ends, FlowSPIBase+uint32(i), ReqIDFlow+i, mode)
	}
	return b.String()
}

func (l *Lab) batch(h *lab.Host, cmds string) error {
	d, err := os.MkdirTemp("", "esplab-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(d)
	f := filepath.Join(d, "batch")
	if err := os.WriteFile(f, []byte(cmds), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "-n", h.NS, "-batch", f).CombinedOutput(); err != nil {
		return fmt.Errorf("esplab: ip -batch on %s: %v: %s", h.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// placeVIP puts the VIP on gateway i, takes it off the others, points the
// peer's route at gateway i, and resolves the neighbours both ways (ICMP
// is outside the policies; a burst to an unresolved neighbour loses
// packets, and the tests count every one).
func (l *Lab) placeVIP(i int) error {
	for j, g := range l.GWs {
		for _, v := range []netip.Addr{VIP4, VIP6} {
			p := netip.PrefixFrom(v, v.BitLen()).String()
			if j == i {
				args := []string{"addr", "replace", p, "dev", "lo"}
				if v.Is6() {
					args = append(args, "nodad")
				}
				if err := g.IP(args...); err != nil {
					return err
				}
			} else {
				g.IP("addr", "del", p, "dev", "lo") // absent is fine
			}
		}
	}
	l.Owner = i
	for _, r := range [][]string{
		{"route", "replace", "10.80.1.1/32", "via", GWAddr4[i].String()},
		{"route", "replace", "fd80:1::1/128", "via", GWAddr6[i].String()},
		{"route", "replace", "10.80.3.1/32", "via", GWAddr4[i].String()},
		{"route", "replace", "fd80:3::1/128", "via", GWAddr6[i].String()},
	} {
		if err := l.Peer.IP(r...); err != nil {
			return err
		}
	}
	g := l.GWs[i]
	for _, r := range [][]string{
		{"route", "replace", "10.80.2.1/32", "via", PeerAddr4.String()},
		{"route", "replace", "fd80:2::1/128", "via", PeerAddr6.String()},
	} {
		if err := g.IP(r...); err != nil {
			return err
		}
	}
	for _, p := range []struct {
		h    *lab.Host
		to   netip.Addr
		from string
	}{{l.Peer, GWAddr4[i], ""}, {l.Peer, GWAddr6[i], ""}, {g, PeerAddr4, ""}, {g, PeerAddr6, ""}} {
		if out, err := p.h.Cmd("ping", "-c", "1", "-W", "5", p.to.String()).CombinedOutput(); err != nil {
			return fmt.Errorf("esplab: ping %s from %s: %v: %s", p.to, p.h.Name, err, out)
		}
	}
	return nil
}

// Failover moves the VIP (and the peer's routes) to gateway i. The SAs
// are on both gateways already; installing the replay state is the
// caller's (tandem's takeover).
func (l *Lab) Failover(i int) error {
	if i < 0 || i >= len(l.GWs) {
		return fmt.Errorf("esplab: no gateway %d", i)
	}
	return l.placeVIP(i)
}

// OwnerHost is the gateway that holds the VIP.
func (l *Lab) OwnerHost() *lab.Host { return l.GWs[l.Owner] }

// Rekey replaces the inbound SA with one under newSPI, as IKE does: the
// new SA is added on the peer and every gateway (the peer's policy picks
// the newest SA from then on), then the old one is deleted everywhere.
// l.In names the new SA afterwards.
func (l *Lab) Rekey(newSPI uint32) error {
	if err := l.AddInbound(newSPI); err != nil {
		return err
	}
	old := l.In
	l.In.SPI = newSPI
	return l.DeleteInbound(old.SPI)
}

// AddInbound adds an inbound SA (peer -> VIP) under spi on every
// gateway, then on the peer (which sends with it from then on): the first
// half of a rekey.
func (l *Lab) AddInbound(spi uint32) error {
	for _, h := range append(append([]*lab.Host{}, l.GWs...), l.Peer) {
		if err := l.addSA(h, l.PeerAddr, l.VIP, spi, ReqIDIn); err != nil {
			return err
		}
	}
	return nil
}

// DeleteInbound deletes the inbound SA spi on the peer, then on every
// gateway.
func (l *Lab) DeleteInbound(spi uint32) error {
	for _, h := range append([]*lab.Host{l.Peer}, l.GWs...) {
		if err := h.IP("xfrm", "state", "delete", "src", l.PeerAddr.String(), "dst", l.VIP.String(),
			"proto", "esp", "spi", fmt.Sprintf("0x%x", spi)); err != nil {
			return err
		}
	}
	return nil
}

// NetNS opens h's network namespace (for xfrm.Dial, xfrm.Follow); the
// caller closes the fd. Its inode is the tracer's namespace filter.
func NetNS(h *lab.Host) (fd int, ino uint32, err error) {
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+h.NS, &st); err != nil {
		return -1, 0, err
	}
	fd, err = unix.Open("/run/netns/"+h.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	return fd, uint32(st.Ino), err
}
