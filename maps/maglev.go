package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/lb"
)

// Types of the service tables' maps (bpf/synproxy/maglev.h).
type (
	BackendCfg      = bpf.SynproxyBackendCfg
	BackendCounters = bpf.SynproxyBackendCounters
)

const (
	backendSet  = uint32(bpf.SynproxyBackendFlagsBACKEND_F_SET)
	backendDown = uint32(bpf.SynproxyBackendFlagsBACKEND_F_DOWN)
	// backendChecked: a verdict exists (HealthUp or HealthDown).
	backendChecked = uint32(bpf.SynproxyBackendFlagsBACKEND_F_CHECKED)
)

// MaxWeight bounds a backend's weight: the table has 65,537 slots, so a
// finer ratio than this means nothing.
const MaxWeight = 10000

// Health names, for the service list: until the health checks have a
// verdict, a backend is "unchecked" (and takes flows).
const (
	HealthUp        = "up"
	HealthDown      = "down"
	HealthUnchecked = "unchecked"
)

// BackendState is one backend of a service as its table sees it.
type BackendState struct {
	Addr    netip.AddrPort `json:"addr"`
	Weight  uint32         `json:"weight"`
	Drained bool           `json:"drained"` // weight 0: no new connections
	Health  string         `json:"health"`  // HealthUp, HealthDown, HealthUnchecked
	Slots   int            `json:"slots"`   // of the installed table's lb.TableSize
	Share   float64        `json:"share"`   // Slots / lb.TableSize
	Conns   uint64         `json:"conns"`   // new connections sent to it
}

// weightOf is backend i's configured weight in s (1 when s names none).
func (s *Service) weightOf(i int) uint32 {
	if i < len(s.Weights) {
		return s.Weights[i]
	}
	return 1
}

// putBalance writes what s's table is built from: each backend's weight
// (its health verdict kept when it already had one), zeroed counters for
// every idx whose backend changed, and the table. old is the service s
// replaces (nil: a new one). PutService calls it after the backends.
func (m *SynproxyMaps) putBalance(s Service, old *Service) error {
	if m.Maglev == nil {
		return nil // an older pinned datapath: the fixed hash, no weights
	}
	for i, b := range s.Backends {
		k := SvcKeyOf(b.Addr(), b.Port())
		var cur BackendCfg
		flags := backendSet
		if err := m.BackendCfg.Lookup(k, &cur); err == nil {
			flags |= cur.Flags & (backendDown | backendChecked)
		}
		if err := m.BackendCfg.Put(k, BackendCfg{Weight: s.weightOf(i), Flags: flags}); err != nil {
			return fmt.Errorf("service %s: backend %s: weight: %w", s.VIP, b, err)
		}
		if old == nil || i >= len(old.Backends) || old.Backends[i] != b {
			zero := make([]BackendCounters, ebpf.MustPossibleCPU())
			if err := m.BackendStats.Put(BackendKey{Svc: s.ID, Idx: uint32(i)}, zero); err != nil {
				return fmt.Errorf("service %s: backend %s: counters: %w", s.VIP, b, err)
			}
		}
	}
	if err := m.Rebuild(s); err != nil {
		return err
	}
	if old != nil {
		for i := len(s.Backends); i < len(old.Backends); i++ {
			_ = m.BackendStats.Delete(BackendKey{Svc: s.ID, Idx: uint32(i)})
		}
		for _, b := range old.Backends {
			if !slices.Contains(s.Backends, b) {
				_ = m.BackendCfg.Delete(SvcKeyOf(b.Addr(), b.Port()))
			}
		}
	}
	return nil
}

// deleteBalance removes a deleted service's table, weights and counters.
func (m *SynproxyMaps) deleteBalance(s Service) {
	if m.Maglev == nil {
		return
	}
	_ = m.Maglev.Delete(s.ID)
	for i, b := range s.Backends {
		_ = m.BackendCfg.Delete(SvcKeyOf(b.Addr(), b.Port()))
		_ = m.BackendStats.Delete(BackendKey{Svc: s.ID, Idx: uint32(i)})
	}
}

// inputs are s's backends as the table builder takes them, from the
// pinned weights and health verdicts. A backend with no entry (written by
// an older tandem) has weight 1 and no verdict.
func (m *SynproxyMaps) inputs(s Service) ([]lb.Backend, []BackendCfg, error) {
	in := make([]lb.Backend, len(s.Backends))
	cfgs := make([]BackendCfg, len(s.Backends))
	for i, b := range s.Backends {
		c := BackendCfg{Weight: 1}
		if err := m.BackendCfg.Lookup(SvcKeyOf(b.Addr(), b.Port()), &c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil, fmt.Errorf("service %s: backend %s: %w", s.VIP, b, err)
		}
		cfgs[i] = c
		in[i] = lb.Backend{Addr: b, Weight: c.Weight, Healthy: c.Flags&backendDown == 0}
	}
	return in, cfgs, nil
}

// Rebuild builds s's table from its backends' pinned weights and health
// verdicts and swaps it in. The health checks call it (through
// SetBackendHealth) whenever a verdict changes.
func (m *SynproxyMaps) Rebuild(s Service) error {
	in, _, err := m.inputs(s)
	if err != nil {
		return err
	}
	return m.SetTable(s.ID, lb.Build(in, lb.TableSize))
}

// SetTable installs table (lb.TableSize slots of backend idxs) as service
// id's: a new inner map, filled, then put in sp_maglev's slot in one
// update, so a cookie ACK reads the old table or the new one, never a mix.
// The old table goes when the last program run holding it ends.
func (m *SynproxyMaps) SetTable(id uint32, table []uint32) error {
	if len(table) != lb.TableSize {
		return fmt.Errorf("service %d: table of %d slots, want %d", id, len(table), lb.TableSize)
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Name: "sp_maglev_tbl", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: lb.TableSize})
	if err != nil {
		return fmt.Errorf("service %d: new table: %w", id, err)
	}
	defer inner.Close()
	keys := make([]uint32, len(table))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := inner.BatchUpdate(keys, table, nil); err != nil {
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("service %d: fill table: %w", id, err)
		}
		for i, v := range table {
			if err := inner.Put(uint32(i), v); err != nil {
				return fmt.Errorf("service %d: fill table: %w", id, err)
			}
		}
	}
	if err := m.Maglev.Put(id, inner); err != nil {
		return fmt.Errorf("service %d: install table: %w", id, err)
	}
	return nil
}

// innerTable opens service id's table. Reading an array of maps gives
// the inner map's id, which the caller then opens: a swap in between
// frees that map (ENOENT, not ErrKeyNotExist), and the lookup is repeated,
// finding the new table.
func (m *SynproxyMaps) innerTable(id uint32) (*ebpf.Map, error) {
	var err error
	for range 100 {
		var inner *ebpf.Map
		if err = m.Maglev.Lookup(id, &inner); err == nil {
			return inner, nil
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) || !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	return nil, err
}

// HasTable reports whether service id has a table installed.
func (m *SynproxyMaps) HasTable(id uint32) (bool, error) {
	inner, err := m.innerTable(id)
	if err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("service %d: table: %w", id, err)
	}
	inner.Close()
	return true, nil
}

// Table reads service id's installed table (nil: none installed).
func (m *SynproxyMaps) Table(id uint32) ([]uint32, error) {
	inner, err := m.innerTable(id)
	if err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("service %d: table: %w", id, err)
	}
	defer inner.Close()
	out := make([]uint32, lb.TableSize)
	keys := make([]uint32, lb.TableSize)
	var cursor ebpf.MapBatchCursor
	n, err := inner.BatchLookup(&cursor, keys, out, nil)
	if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		if n == lb.TableSize {
			return out, nil
		}
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return nil, fmt.Errorf("service %d: read table: %w", id, err)
	}
	for i := range out {
		if err := inner.Lookup(uint32(i), &out[i]); err != nil {
			return nil, fmt.Errorf("service %d: read table: %w", id, err)
		}
	}
	return out, nil
}

// findService is the service at vip and the idx of backend in it.
func (m *SynproxyMaps) findService(vip, backend netip.AddrPort) (Service, int, error) {
	all, err := m.ListServices()
	if err != nil {
		return Service{}, 0, err
	}
	for _, s := range all {
		if s.VIP != vip {
			continue
		}
		i := slices.Index(s.Backends, backend)
		if i < 0 {
			return s, -1, fmt.Errorf("service %s has no backend %s (see `tandem service list`)", vip, backend)
		}
		return s, i, nil
	}
	return Service{}, -1, fmt.Errorf("service %s: %w (see `tandem service list`)", vip, ErrNoService)
}

// updateCfg changes one backend's entry and rebuilds its service's table.
func (m *SynproxyMaps) updateCfg(vip, backend netip.AddrPort, f func(*BackendCfg)) error {
	if m.Maglev == nil {
		return errors.New("the pinned SYN proxy predates weights: run tandem up to replace it")
	}
	s, _, err := m.findService(vip, backend)
	if err != nil {
		return err
	}
	k := SvcKeyOf(backend.Addr(), backend.Port())
	c := BackendCfg{Weight: 1, Flags: backendSet}
	if err := m.BackendCfg.Lookup(k, &c); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("backend %s: %w", backend, err)
	}
	was := c
	f(&c)
	c.Flags |= backendSet
	// The health checks report every interval: an unchanged input with a
	// table in place rebuilds nothing.
	if c == was {
		if ok, err := m.HasTable(s.ID); err != nil || ok {
			return err
		}
	}
	if err := m.BackendCfg.Put(k, c); err != nil {
		return fmt.Errorf("backend %s: %w", backend, err)
	}
	return m.Rebuild(s)
}

// SetBackendWeight sets a backend's weight (0 drains it: no new
// connections, its open ones continue) and swaps its service's table.
// Callers in different processes hold the service lock (loader.Proxy).
func (m *SynproxyMaps) SetBackendWeight(vip, backend netip.AddrPort, weight uint32) error {
	if weight > MaxWeight {
		return fmt.Errorf("weight %d: at most %d", weight, MaxWeight)
	}
	return m.updateCfg(vip, backend, func(c *BackendCfg) { c.Weight = weight })
}

// SetBackendHealth records the health checks' verdict on a backend and
// swaps its service's table when it changed (a down backend takes no new
// connections; its open ones are left alone). The health checks call it,
// as often as they like: an unchanged verdict costs two map lookups.
func (m *SynproxyMaps) SetBackendHealth(vip, backend netip.AddrPort, healthy bool) error {
	return m.updateCfg(vip, backend, func(c *BackendCfg) {
		c.Flags &^= backendDown
		c.Flags |= backendChecked
		if !healthy {
			c.Flags |= backendDown
		}
	})
}

// ClearBackendHealth forgets the health checks' verdict on a backend (no
// check runs for it any more): it is unchecked, takes new connections by
// its weight, and its service's table is swapped when it was down.
func (m *SynproxyMaps) ClearBackendHealth(vip, backend netip.AddrPort) error {
	return m.updateCfg(vip, backend, func(c *BackendCfg) { c.Flags &^= backendDown | backendChecked })
}

// BackendStates reads s's backends: weight, health verdict, share of the
// installed table, new connections.
func (m *SynproxyMaps) BackendStates(s Service) ([]BackendState, error) {
	out := make([]BackendState, len(s.Backends))
	for i, b := range s.Backends {
		out[i] = BackendState{Addr: b, Weight: 1, Health: HealthUnchecked}
	}
	if m.Maglev == nil {
		return out, nil
	}
	_, cfgs, err := m.inputs(s)
	if err != nil {
		return nil, err
	}
	table, err := m.Table(s.ID)
	if err != nil {
		return nil, err
	}
	shares := lb.Shares(table, len(s.Backends))
	for i := range out {
		out[i].Weight, out[i].Drained = cfgs[i].Weight, cfgs[i].Weight == 0
		switch {
		case cfgs[i].Flags&backendDown != 0:
			out[i].Health = HealthDown
		case cfgs[i].Flags&backendChecked != 0:
			out[i].Health = HealthUp
		}
		out[i].Slots = shares[i]
		out[i].Share = float64(shares[i]) / lb.TableSize
		var per []BackendCounters
		if err := m.BackendStats.Lookup(BackendKey{Svc: s.ID, Idx: uint32(i)}, &per); err == nil {
			for _, c := range per {
				out[i].Conns += c.Conns
			}
		}
	}
	return out, nil
}

// flowKey is the fixed key of bpf/synproxy/handshake.h's flow_hash.
var flowKey = func() (k [8]byte) {
	binary.LittleEndian.PutUint32(k[:4], 0x74616e64)
	binary.LittleEndian.PutUint32(k[4:], 0x656d2d62)
	return k
}()

// FlowHash is the datapath's flow hash of a new flow (flow_hash): slot
// FlowHash % lb.TableSize of the service's table picks its backend.
func FlowHash(client, vip netip.AddrPort) uint32 {
	return flowMAC(flowKey, CookieFlow{Client: client.Addr(), VIP: vip.Addr(), ClientPort: client.Port(), VIPPort: vip.Port()}, 0)
}
