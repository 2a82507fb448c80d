package maps

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
)

// Types of the SYN proxy's maps, generated from bpf/synproxy.c's BTF.
type (
	SvcKey     = bpf.SynproxySvcKey
	SvcVal     = bpf.SynproxySvcVal
	ConnKey    = bpf.SynproxyConnKey
	ConnVal    = bpf.SynproxyConnVal
	CookieKeys = bpf.SynproxyCookieKeys
	ProxyStat  = bpf.SynproxySpStat
)

// ProxyStatNames label the SYN proxy's counters, indexed by ProxyStat.
var ProxyStatNames = map[ProxyStat]string{
	bpf.SynproxySpStatSP_SYN:           "syn_answered",
	bpf.SynproxySpStatSP_COOKIE_OK:     "cookie_ok",
	bpf.SynproxySpStatSP_COOKIE_BAD:    "cookie_bad",
	bpf.SynproxySpStatSP_DUP_ACK:       "dup_ack",
	bpf.SynproxySpStatSP_BAD_FLAGS:     "bad_flags",
	bpf.SynproxySpStatSP_FRAGMENT:      "fragment",
	bpf.SynproxySpStatSP_MALFORMED:     "malformed",
	bpf.SynproxySpStatSP_NO_SECRET:     "no_secret",
	bpf.SynproxySpStatSP_CONN_FULL:     "conn_table_full",
	bpf.SynproxySpStatSP_RESIZE_FAILED: "resize_failed",
}

// netPort is a port as the datapath keeps it: network byte order in a
// native-endian field.
func netPort(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// HostPort is the inverse of netPort.
func HostPort(p uint16) uint16 { return netPort(p) }

// SynproxyMaps are the SYN proxy's maps.
type SynproxyMaps struct {
	Services, Keys, Stats, Conns *ebpf.Map
}

// SvcKeyOf is the services key of a TCP VIP:port.
func SvcKeyOf(vip netip.Addr, port uint16) SvcKey {
	return SvcKey{Addr: vip.Unmap().As16(), Port: netPort(port), Proto: 6}
}

// SetService adds or replaces the service at vip:port.
func (m *SynproxyMaps) SetService(vip netip.Addr, port uint16, id, backends uint32) error {
	if err := m.Services.Put(SvcKeyOf(vip, port), SvcVal{Id: id, Backends: backends}); err != nil {
		return fmt.Errorf("service %s: %w", netip.AddrPortFrom(vip, port), err)
	}
	return nil
}

// DeleteService removes the service at vip:port.
func (m *SynproxyMaps) DeleteService(vip netip.Addr, port uint16) error {
	if err := m.Services.Delete(SvcKeyOf(vip, port)); err != nil {
		return fmt.Errorf("service %s: %w", netip.AddrPortFrom(vip, port), err)
	}
	return nil
}

func keyWords(k [8]byte) [2]uint32 {
	return [2]uint32{binary.LittleEndian.Uint32(k[:4]), binary.LittleEndian.Uint32(k[4:])}
}

// SetCookieKeys installs both cookie secrets and the slot new cookies use.
func (m *SynproxyMaps) SetCookieKeys(keys [2][8]byte, slot uint32) error {
	v := CookieKeys{Slot: slot & 1, Key: [2][2]uint32{keyWords(keys[0]), keyWords(keys[1])}}
	return m.Keys.Put(uint32(0), v)
}

// RotateCookieKey puts key in the slot not in use, then makes it the one
// new cookies use: cookies made with the previous key still validate
// until the next rotation overwrites it.
func (m *SynproxyMaps) RotateCookieKey(key [8]byte) error {
	var v CookieKeys
	if err := m.Keys.Lookup(uint32(0), &v); err != nil {
		return err
	}
	next := (v.Slot + 1) & 1
	v.Key[next] = keyWords(key)
	// Two writes: the new key lands before any cookie names its slot.
	if err := m.Keys.Put(uint32(0), v); err != nil {
		return err
	}
	v.Slot = next
	return m.Keys.Put(uint32(0), v)
}

// ProxyStats sums the per-CPU counters.
func (m *SynproxyMaps) ProxyStats() (map[string]uint64, error) {
	out := map[string]uint64{}
	for s, name := range ProxyStatNames {
		var per []uint64
		if err := m.Stats.Lookup(uint32(s), &per); err != nil {
			return nil, err
		}
		for _, n := range per {
			out[name] += n
		}
	}
	return out, nil
}
