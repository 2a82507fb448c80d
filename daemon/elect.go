package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/syncer/vip"
)

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
func (e ElectOptions) PeerNameFor(c *Config, self string) (string, error) {
	if e.PeerName == self {
		return "", fmt.Errorf("--vip-peer-name %q is this host's own name: name the other host", self)
	}
	if e.PeerName != "" {
		return e.PeerName, nil
	}
	var names []string
	ents, _ := os.ReadDir(c.Sync.Certs)
	for _, f := range ents {
		n, ok := strings.CutSuffix(f.Name(), ".pem")
		if ok && n != "ca" && n != "ca-key" && n != self && !strings.HasSuffix(n, "-key") {
			names = append(names, n)
		}
	}
	if len(names) != 1 {
		return "", fmt.Errorf("name the peer with --vip-peer-name NAME (its --sync-name): %s holds %d host certificates besides %q's, want exactly 1", c.Sync.Certs, len(names), self)
	}
	return names[0], nil
}

// DefaultElectListen is where adverts arrive unless --vip-listen says.
const DefaultElectListen = "[::]:7401"

// SecretFile is the file the adverts are signed with.
func (e ElectOptions) SecretFile(c *Config) string {
	if e.Secret != "" {
		return e.Secret
	}
	return c.Datapath.Proxy.SecretFile
}

func (c *Config) validateElect() []error {
	e := c.Elect
	var errs []error
	if len(e.Addrs) == 0 {
		if len(e.Peers) > 0 {
			errs = append(errs, errors.New("--vip-peer without --vip-addr: name the addresses the owner holds"))
		}
		if c.Sync.Role == SyncAuto {
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
	if e.SecretFile(c) == "" {
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
		if err := loader.CheckVIPPrefix(a.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("--vip-addr %w", err))
		}
		if seen[a.Prefix.Addr()] {
			errs = append(errs, fmt.Errorf("--vip-addr %s given twice", a.Prefix.Addr()))
		}
		seen[a.Prefix.Addr()] = true
	}
	if c.Sync.Role == SyncAuto && (c.Sync.Peer == "" || c.Sync.Listen == "") {
		errs = append(errs, errors.New("--sync-role auto: give both --sync-peer (used as primary) and --sync-listen (as standby)"))
	}
	return errs
}

func applyElect(ec loader.ElectConfig, e *ElectOptions) error {
	var errs []error
	for _, a := range ec.Addrs {
		x, err := vip.ParseAddr(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: election.addrs: %v", err))
			continue
		}
		if err := loader.CheckVIPPrefix(x.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("config: election.addrs: %w", err))
			continue
		}
		e.Addrs = append(e.Addrs, x)
	}
	if len(ec.Peers) > 0 {
		e.Peers = append([]string(nil), ec.Peers...)
	}
	if ec.Listen != "" {
		e.Listen = ec.Listen
	}
	if ec.PeerName != "" {
		e.PeerName = ec.PeerName
	}
	if ec.Priority != nil {
		if *ec.Priority < 0 || *ec.Priority > 255 {
			errs = append(errs, fmt.Errorf("config: election.priority %d: 0 to 255", *ec.Priority))
		} else {
			e.Priority = uint8(*ec.Priority)
		}
	}
	e.Preempt = e.Preempt || ec.Preempt
	if ec.Interval != "" {
		d, err := time.ParseDuration(ec.Interval)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: election.interval %q: %v", ec.Interval, err))
		} else {
			e.Interval = d
		}
	}
	if ec.Dead != 0 {
		e.Dead = ec.Dead
	}
	if ec.Secret != "" {
		e.Secret = ec.Secret
	}
	return errors.Join(errs...)
}
