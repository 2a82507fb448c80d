package daemon

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/loader"
)

// applyHealthFile takes each [[proxy.service]]'s check table.
func (c *Config) applyHealthFile(fc *loader.FileConfig) error {
	for i, sc := range fc.Proxy.Services {
		if sc.Check == nil {
			continue
		}
		vip, err := netip.ParseAddrPort(sc.VIP)
		if err != nil {
			return fmt.Errorf("config: proxy.service[%d].vip %q: want VIP:PORT", i, sc.VIP)
		}
		chk, err := sc.Check.Check()
		if err != nil {
			return fmt.Errorf("config: proxy.service[%d] (%s): %w", i, sc.VIP, err)
		}
		if c.Health == nil {
			c.Health = map[netip.AddrPort]health.Check{}
		}
		c.Health[unmapped(vip)] = chk
	}
	return nil
}

func unmapped(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// ParseHealthFlag reads --health-check VIP:PORT=KIND[,KEY=VALUE...] (see
// health.ParseCheck) into c.Health; a flag for a service overrides the
// config file's check.
func (c *Config) ParseHealthFlag(s string) error {
	vipS, spec, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("--health-check %q: want VIP:PORT=KIND[,KEY=VALUE...] (tcp, http, https, command)", s)
	}
	vip, err := netip.ParseAddrPort(vipS)
	if err != nil {
		return fmt.Errorf("--health-check %q: VIP:PORT ([ADDR]:PORT for IPv6): %v", s, err)
	}
	chk, err := health.ParseCheck(spec)
	if err != nil {
		return fmt.Errorf("--health-check %s: %w", vipS, err)
	}
	if c.Health == nil {
		c.Health = map[netip.AddrPort]health.Check{}
	}
	c.Health[unmapped(vip)] = chk
	return nil
}
