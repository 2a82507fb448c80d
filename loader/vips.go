package loader

import (
	"fmt"
	"net/netip"
)

// CheckVIP refuses an address no host can own as a VIP (or send to as a
// backend): the answer says what the address is.
func CheckVIP(a netip.Addr) error {
	a = a.Unmap()
	var why string
	switch {
	case !a.IsValid():
		why = "not an IP address"
	case a.IsUnspecified():
		why = "the unspecified address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "the broadcast address"
	case a.IsMulticast():
		why = "a multicast address"
	case a.IsLoopback():
		why = "a loopback address"
	case a.IsLinkLocalUnicast():
		why = "a link-local address"
	case a.Is4() && a.As4()[0] == 0:
		why = "in 0.0.0.0/8 (this network: never a destination)"
	default:
		return nil
	}
	return fmt.Errorf("%s; a VIP or backend is a unicast address clients can reach", why)
}

// CheckVIPPrefix is CheckVIP for an address with its prefix (--vip-addr):
// an IPv4 address may also not be its subnet's network or broadcast
// address (prefixes of 30 bits and shorter).
func CheckVIPPrefix(p netip.Prefix) error {
	if err := CheckVIP(p.Addr()); err != nil {
		return fmt.Errorf("%s: %w", p.Addr(), err)
	}
	a := p.Addr()
	if !a.Is4() || p.Bits() > 30 {
		return nil
	}
	net := p.Masked()
	b := net.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	bcast := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	switch a {
	case net.Addr():
		return fmt.Errorf("%s: the network address of %s; give the VIP a host address of its subnet", p, net)
	case bcast:
		return fmt.Errorf("%s: the broadcast address of %s; give the VIP a host address of its subnet", p, net)
	}
	return nil
}
