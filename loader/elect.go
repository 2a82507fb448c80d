package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/tandem-net/tandem/syncer/vip"
)

// SyncAuto is the sync role that follows VIP ownership: primary while
// this host owns the VIPs, standby otherwise.
const SyncAuto = "auto"

// ElectOptions configure the VIP election the daemon runs; it runs when
// Addrs is not empty.
type ElectOptions struct {
	Addrs    []vip.Addr    // the addresses the owner holds
	Peers    []string      // the peer's advert HOST:PORT, one per path
	PeerName string        // the name the peer's adverts carry (its --sync-name); "": see PeerNameFor
	Listen   string        // ADDR:PORT for the peer's adverts
	Priority uint8         // higher wins an election (and a split brain)
	Preempt  bool          // take the VIPs from a lower-priority owner (by handover)
	Interval time.Duration // between adverts
	Dead     int           // adverts missed before the peer counts as gone
	Secret   string        // file with the pair's shared secret; default: --proxy-secret
}

// PeerNameFor is the name the peer's adverts must carry: --vip-peer-name,
// else the one host certificate in the sync's certificate directory that
// is not self's (tandem certs writes one per host, named after it). It
// never guesses from what arrives: a name pinned from the first advert
// would be whoever spoke first.
func (e ElectOptions) PeerNameFor(o *Options, self string) (string, error) {
	if e.PeerName == self {
		return "", fmt.Errorf("--vip-peer-name %q is this host's own name: name the other host", self)
	}
	if e.PeerName != "" {
		return e.PeerName, nil
	}
	var names []string
	ents, _ := os.ReadDir(o.Sync.Certs)
	for _, f := range ents {
		n, ok := strings.CutSuffix(f.Name(), ".pem")
		if ok && n != "ca" && n != "ca-key" && n != self && !strings.HasSuffix(n, "-key") {
			names = append(names, n)
		}
	}
	if len(names) != 1 {
		return "", fmt.Errorf("name the peer with --vip-peer-name NAME (its --sync-name): %s holds %d host certificates besides %q's, want exactly 1", o.Sync.Certs, len(names), self)
	}
	return names[0], nil
}

// DefaultElectListen is where adverts arrive unless --vip-listen says.
const DefaultElectListen = "[::]:7401"

// SecretFile is the file the adverts are signed with.
func (e ElectOptions) SecretFile(o *Options) string {
	if e.Secret != "" {
		return e.Secret
	}
	return o.Proxy.SecretFile
}

func (o *Options) validateElect() []error {
	e := o.Elect
	var errs []error
	if len(e.Addrs) == 0 {
		if len(e.Peers) > 0 {
			errs = append(errs, errors.New("--vip-peer without --vip-addr: name the addresses the owner holds"))
		}
		if o.Sync.Role == SyncAuto {
			errs = append(errs, errors.New("--sync-role auto follows the VIP election: give --vip-addr and --vip-peer"))
		}
		return errs
	}
	if len(e.Peers) == 0 {
		errs = append(errs, errors.New("--vip-addr: the election needs the peer's advert address (--vip-peer HOST:PORT, one per path)"))
	}
	for _, p := range append([]string{e.Listen}, e.Peers...) {
		if _, _, err := net.SplitHostPort(p); err != nil {
			errs = append(errs, fmt.Errorf("--vip-peer/--vip-listen %q: want HOST:PORT", p))
		}
	}
	if e.SecretFile(o) == "" {
		errs = append(errs, errors.New("--vip-addr: adverts are signed with the pair's secret: give --vip-secret FILE (or --proxy-secret)"))
	}
	if e.Interval < MinElectInterval {
		errs = append(errs, fmt.Errorf("--vip-interval %s: at least %s", e.Interval, MinElectInterval))
	} else if e.Interval > MaxElectInterval {
		errs = append(errs, fmt.Errorf("--vip-interval %s: between %s and %s", e.Interval, MinElectInterval, MaxElectInterval))
	}
	if e.Dead < MinElectDead {
		errs = append(errs, fmt.Errorf("--vip-dead %d: at least %d missed adverts", e.Dead, MinElectDead))
	} else if e.Dead > MaxElectDead {
		errs = append(errs, fmt.Errorf("--vip-dead %d: between %d and %d missed adverts", e.Dead, MinElectDead, MaxElectDead))
	}
	seen := map[netip.Addr]bool{}
	for _, a := range e.Addrs {
		if err := checkVIPPrefix(a.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("--vip-addr %w", err))
		}
		if seen[a.Prefix.Addr()] {
			errs = append(errs, fmt.Errorf("--vip-addr %s given twice", a.Prefix.Addr()))
		}
		seen[a.Prefix.Addr()] = true
	}
	if o.Sync.Role == SyncAuto && (o.Sync.Peer == "" || o.Sync.Listen == "") {
		errs = append(errs, errors.New("--sync-role auto: give both --sync-peer (used as primary) and --sync-listen (as standby)"))
	}
	return errs
}

// GateVIPs are the addresses the VIP gate opens for the owner: the
// addresses it holds and the SYN proxy's service VIPs.
func (o *Options) GateVIPs() []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		if a = a.Unmap(); !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, a := range o.Elect.Addrs {
		add(a.Prefix.Addr())
	}
	for _, s := range o.Proxy.Services {
		add(s.VIP.Addr())
	}
	return out
}

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

// checkVIPPrefix is CheckVIP for an address with its prefix (--vip-addr):
// an IPv4 address may also not be its subnet's network or broadcast
// address (prefixes of 30 bits and shorter).
func checkVIPPrefix(p netip.Prefix) error {
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
