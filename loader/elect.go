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
	if e.Interval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--vip-interval %s: at least 10ms", e.Interval))
	}
	if e.Dead < 2 {
		errs = append(errs, fmt.Errorf("--vip-dead %d: at least 2 missed adverts", e.Dead))
	}
	seen := map[netip.Addr]bool{}
	for _, a := range e.Addrs {
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
