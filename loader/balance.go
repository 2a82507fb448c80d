package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
)

// openBalance opens the services' table maps (bpf/synproxy/maglev.h).
// A pinned datapath from before them has none: m keeps them nil and
// its services keep the fixed hash until the next up replaces it.
func openBalance(pins maps.Pins, m *maps.SynproxyMaps) error {
	for _, f := range []struct {
		name string
		dst  **ebpf.Map
	}{{bpf.SynproxyMapSpMaglev, &m.Maglev}, {bpf.SynproxyMapSpBackendCfg, &m.BackendCfg}, {bpf.SynproxyMapSpBackendStats, &m.BackendStats}} {
		mp, err := ebpf.LoadPinnedMap(pins.Map(f.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			for _, c := range []**ebpf.Map{&m.Maglev, &m.BackendCfg, &m.BackendStats} {
				if *c != nil {
					(*c).Close()
					*c = nil
				}
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", pins.Map(f.name), err)
		}
		*f.dst = mp
	}
	return nil
}

// parseBackend reads ADDR:PORT[@WEIGHT] (weight 1 when not given; 0
// drains the backend).
func parseBackend(s string) (netip.AddrPort, uint32, error) {
	s = strings.TrimSpace(s)
	addr, w, hasW := strings.Cut(s, "@")
	a, err := netip.ParseAddrPort(strings.TrimSpace(addr))
	if err != nil {
		return a, 0, fmt.Errorf("backend %q: want ADDR:PORT[@WEIGHT] ([ADDR]:PORT for IPv6)", s)
	}
	weight := uint64(1)
	if hasW {
		if weight, err = strconv.ParseUint(strings.TrimSpace(w), 10, 32); err != nil || weight > maps.MaxWeight {
			return a, 0, fmt.Errorf("backend %q: weight %q: want 0 (drained) to %d", s, w, maps.MaxWeight)
		}
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), uint32(weight), nil
}

// SetBackendWeight sets a backend's weight (0: drain) under the service
// lock and swaps its service's table.
func (p *Proxy) SetBackendWeight(vip, backend netip.AddrPort, weight uint32) error {
	unlock, err := ServiceLock(p.pins)
	if err != nil {
		return err
	}
	defer unlock()
	return p.SynproxyMaps.SetBackendWeight(vip, backend, weight)
}

// SetBackendHealth records a health verdict under the service lock and
// swaps the service's table: the entry point for the health checks.
func (p *Proxy) SetBackendHealth(vip, backend netip.AddrPort, healthy bool) error {
	unlock, err := ServiceLock(p.pins)
	if err != nil {
		return err
	}
	defer unlock()
	return p.SynproxyMaps.SetBackendHealth(vip, backend, healthy)
}

// ClearBackendHealth forgets a backend's health verdict under the service
// lock and swaps the service's table: for a backend no check runs for.
func (p *Proxy) ClearBackendHealth(vip, backend netip.AddrPort) error {
	unlock, err := ServiceLock(p.pins)
	if err != nil {
		return err
	}
	defer unlock()
	return p.SynproxyMaps.ClearBackendHealth(vip, backend)
}

// ensureTables gives every service without a table one (services written
// by a tandem from before tables, or by a writer that failed between the
// backends and the table): up runs it, so after an up every service's
// new flows go by its table, the same on both gateways.
func ensureTables(pins maps.Pins, m *maps.SynproxyMaps) error {
	if m.Maglev == nil {
		return nil
	}
	unlock, err := ServiceLock(pins)
	if err != nil {
		return err
	}
	defer unlock()
	svcs, err := m.ListServices()
	if err != nil {
		return err
	}
	for _, s := range svcs {
		ok, err := m.HasTable(s.ID)
		if err != nil {
			return err
		}
		if !ok {
			if err := m.Rebuild(s); err != nil {
				return err
			}
		}
	}
	return nil
}
