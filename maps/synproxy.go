package maps

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
)

// Types of the SYN proxy's maps, generated from bpf/synproxy.c's BTF.
type (
	SvcKey      = bpf.SynproxySvcKey
	SvcVal      = bpf.SynproxySvcVal
	BackendKey  = bpf.SynproxyBackendKey
	Backend     = bpf.SynproxyBackend
	RevVal      = bpf.SynproxyRevVal
	SvcCounters = bpf.SynproxySvcCounters
	ConnKey     = bpf.SynproxyConnKey
	ConnVal     = bpf.SynproxyConnVal
	CookieKeys  = bpf.SynproxyCookieKeys
	ProxyStat   = bpf.SynproxySpStat
	ConnState   = bpf.SynproxyConnState
	ExpireArgs  = bpf.SynproxyExpireArgs
)

// MaxServices bounds service ids (sp_svc_stats is indexed by them).
const MaxServices = 1024

// ProxyStatNames label the SYN proxy's counters, indexed by ProxyStat.
var ProxyStatNames = map[ProxyStat]string{
	bpf.SynproxySpStatSP_SYN:               "syn_answered",
	bpf.SynproxySpStatSP_COOKIE_OK:         "cookie_ok",
	bpf.SynproxySpStatSP_COOKIE_BAD:        "cookie_bad",
	bpf.SynproxySpStatSP_DUP_ACK:           "client_waiting_dropped",
	bpf.SynproxySpStatSP_BAD_FLAGS:         "bad_flags",
	bpf.SynproxySpStatSP_FRAGMENT:          "fragment",
	bpf.SynproxySpStatSP_MALFORMED:         "malformed",
	bpf.SynproxySpStatSP_NO_SECRET:         "no_secret",
	bpf.SynproxySpStatSP_CONN_FULL:         "conn_table_full",
	bpf.SynproxySpStatSP_RESIZE_FAILED:     "resize_failed",
	bpf.SynproxySpStatSP_BACKEND_SYN:       "backend_syn",
	bpf.SynproxySpStatSP_SYN_RETRY:         "backend_syn_retry",
	bpf.SynproxySpStatSP_BACKEND_TIMEOUT:   "backend_timeout",
	bpf.SynproxySpStatSP_BACKEND_RST:       "backend_refused",
	bpf.SynproxySpStatSP_ESTABLISHED:       "established",
	bpf.SynproxySpStatSP_WIN_UPDATE:        "window_update",
	bpf.SynproxySpStatSP_FWD:               "to_backend",
	bpf.SynproxySpStatSP_REV:               "to_client",
	bpf.SynproxySpStatSP_CLOSED:            "closed",
	bpf.SynproxySpStatSP_BAD_CSUM:          "bad_checksum",
	bpf.SynproxySpStatSP_NO_BACKEND:        "no_backend",
	bpf.SynproxySpStatSP_KERNEL_FWD:        "kernel_forwarded",
	bpf.SynproxySpStatSP_ICMP:              "icmp_translated",
	bpf.SynproxySpStatSP_BAD_ACK:           "backend_bad_ack",
	bpf.SynproxySpStatSP_NOT_OWNER:         "not_owner",
	bpf.SynproxySpStatSP_CHALLENGE_ACK:     "challenge_ack",
	bpf.SynproxySpStatSP_CHALLENGE_LIMITED: "challenge_ack_limited",
	bpf.SynproxySpStatSP_RST_BAD:           "rst_out_of_window",
	bpf.SynproxySpStatSP_RST_STALE:         "rst_stale",
}

// ConnStateNames name the connection states for dumps.
var ConnStateNames = map[ConnState]string{
	bpf.SynproxyConnStateCONN_SYN_SENT:    "syn-sent",
	bpf.SynproxyConnStateCONN_ESTABLISHED: "established",
	bpf.SynproxyConnStateCONN_CLOSING:     "closing",
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
	Services, Backends, Rev, Keys, Stats, SvcStats, Conns *ebpf.Map
	// The services' tables and what they are built from (maglev.go);
	// nil when the pinned datapath predates them.
	Maglev, BackendCfg, BackendStats *ebpf.Map
}

// SynproxyMapsOf picks the maps out of loaded objects.
func SynproxyMapsOf(o *bpf.SynproxyMaps) *SynproxyMaps {
	return &SynproxyMaps{Services: o.SpServices, Backends: o.SpBackends, Rev: o.SpBackendRev, Keys: o.SpCookieKeys,
		Stats: o.SpStats, SvcStats: o.SpSvcStats, Conns: o.SpConns,
		Maglev: o.SpMaglev, BackendCfg: o.SpBackendCfg, BackendStats: o.SpBackendStats}
}

// SvcKeyOf is the services key of a TCP VIP:port (and, in sp_backend_rev,
// of a backend's address and port).
func SvcKeyOf(vip netip.Addr, port uint16) SvcKey {
	return SvcKey{Addr: vip.Unmap().As16(), Port: netPort(port), Proto: 6}
}

func addrOf(b [16]byte) netip.Addr { return netip.AddrFrom16(b).Unmap() }

// Service is a VIP:port and the backends its connections are spread on.
type Service struct {
	ID       uint32           `json:"id"`
	VIP      netip.AddrPort   `json:"vip"`
	Backends []netip.AddrPort `json:"backends"`
	// Weights are the backends' weights, by position, for PutService
	// (missing: 1; 0 drains). ListServices leaves them nil: the pinned
	// weights are in BackendStates.
	Weights []uint32 `json:"weights,omitempty"`
}

// Validate checks a service before it is written.
func (s *Service) Validate() error {
	if !s.VIP.IsValid() || s.VIP.Port() == 0 {
		return fmt.Errorf("service %s: want VIP:PORT", s.VIP)
	}
	if len(s.Backends) == 0 {
		return fmt.Errorf("service %s: name at least one backend ADDR:PORT", s.VIP)
	}
	seen := map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		if !b.IsValid() || b.Port() == 0 {
			return fmt.Errorf("service %s: backend %s: want ADDR:PORT", s.VIP, b)
		}
		if b.Addr().Unmap().Is4() != s.VIP.Addr().Unmap().Is4() {
			return fmt.Errorf("service %s: backend %s: not the VIP's address family (NAT keeps the family)", s.VIP, b)
		}
		if seen[b] {
			return fmt.Errorf("service %s: backend %s named twice", s.VIP, b)
		}
		seen[b] = true
	}
	if len(s.Weights) > len(s.Backends) {
		return fmt.Errorf("service %s: %d weights for %d backends", s.VIP, len(s.Weights), len(s.Backends))
	}
	for i, w := range s.Weights {
		if w > MaxWeight {
			return fmt.Errorf("service %s: backend %s: weight %d, at most %d", s.VIP, s.Backends[i], w, MaxWeight)
		}
	}
	return nil
}

// ListServices reads every service with its backends, sorted by VIP.
func (m *SynproxyMaps) ListServices() ([]Service, error) {
	var (
		k   SvcKey
		v   SvcVal
		out []Service
	)
	it := m.Services.Iterate()
	for it.Next(&k, &v) {
		s := Service{ID: v.Id, VIP: netip.AddrPortFrom(addrOf(k.Addr), HostPort(k.Port))}
		for i := uint32(0); i < v.Backends; i++ {
			var b Backend
			if err := m.Backends.Lookup(BackendKey{Svc: v.Id, Idx: i}, &b); err != nil {
				return nil, fmt.Errorf("service %s: backend %d: %w", s.VIP, i, err)
			}
			s.Backends = append(s.Backends, netip.AddrPortFrom(addrOf(b.Addr), HostPort(b.Port)))
		}
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	slices.SortFunc(out, func(a, b Service) int { return a.VIP.Compare(b.VIP) })
	return out, nil
}

// PutServicePause, when set (tests only, through the CLI's
// TANDEM_TEST_SERVICE_PAUSE), sleeps between reading the services and
// writing one: it widens the read-then-write window so that writers the
// caller failed to serialise collide every time, not once in a while.
var PutServicePause time.Duration

// PutService adds s or replaces the service at s.VIP. Backends are written
// before the service points at them, so a packet never finds a missing
// one; a backend address:port may serve only one VIP, because a backend's
// replies are mapped back to their VIP by it. Established connections keep
// the backend they have. It reads the services, then writes: callers in
// different processes must hold one lock over it (loader.Proxy does), or
// two of them pick the same free id.
func (m *SynproxyMaps) PutService(s Service) (Service, error) {
	if err := s.Validate(); err != nil {
		return s, err
	}
	all, err := m.ListServices()
	if err != nil {
		return s, err
	}
	if PutServicePause > 0 {
		time.Sleep(PutServicePause)
	}
	used := map[uint32]bool{}
	var old *Service
	for i, o := range all {
		if o.VIP == s.VIP {
			old = &all[i]
			continue
		}
		used[o.ID] = true
		for _, b := range o.Backends {
			if slices.Contains(s.Backends, b) {
				return s, fmt.Errorf("backend %s already serves %s: a backend address:port serves one VIP", b, o.VIP)
			}
		}
	}
	switch {
	case old != nil:
		s.ID = old.ID
	default:
		s.ID = 0
		for id := uint32(1); id < MaxServices; id++ {
			if !used[id] {
				s.ID = id
				break
			}
		}
		if s.ID == 0 {
			return s, fmt.Errorf("service %s: all %d service ids in use", s.VIP, MaxServices-1)
		}
	}
	for i, b := range s.Backends {
		be := Backend{Addr: b.Addr().Unmap().As16(), Port: netPort(b.Port())}
		if err := m.Backends.Put(BackendKey{Svc: s.ID, Idx: uint32(i)}, be); err != nil {
			return s, fmt.Errorf("service %s: backend %s: %w", s.VIP, b, err)
		}
		rv := RevVal{Vaddr: s.VIP.Addr().Unmap().As16(), Vport: netPort(s.VIP.Port())}
		if err := m.Rev.Put(SvcKeyOf(b.Addr(), b.Port()), rv); err != nil {
			return s, fmt.Errorf("service %s: backend %s: %w", s.VIP, b, err)
		}
	}
	if err := m.Services.Put(SvcKeyOf(s.VIP.Addr(), s.VIP.Port()), SvcVal{Id: s.ID, Backends: uint32(len(s.Backends))}); err != nil {
		return s, fmt.Errorf("service %s: %w", s.VIP, err)
	}
	// The table after the backends it names, before the old ones go.
	if err := m.putBalance(s, old); err != nil {
		return s, err
	}
	if old != nil {
		for i := len(s.Backends); i < len(old.Backends); i++ {
			_ = m.Backends.Delete(BackendKey{Svc: s.ID, Idx: uint32(i)})
		}
		for _, b := range old.Backends {
			if !slices.Contains(s.Backends, b) {
				_ = m.Rev.Delete(SvcKeyOf(b.Addr(), b.Port()))
			}
		}
	}
	return s, nil
}

// ErrNoService is returned for a VIP:port with no service.
var ErrNoService = errors.New("no such service")

// DeleteService removes the service at vip; its connections continue
// until they close (their backend is in the entry), new SYNs pass.
func (m *SynproxyMaps) DeleteService(vip netip.AddrPort) error {
	all, err := m.ListServices()
	if err != nil {
		return err
	}
	for _, s := range all {
		if s.VIP != vip {
			continue
		}
		if err := m.Services.Delete(SvcKeyOf(vip.Addr(), vip.Port())); err != nil {
			return fmt.Errorf("service %s: %w", vip, err)
		}
		m.deleteBalance(s)
		for i, b := range s.Backends {
			_ = m.Backends.Delete(BackendKey{Svc: s.ID, Idx: uint32(i)})
			_ = m.Rev.Delete(SvcKeyOf(b.Addr(), b.Port()))
		}
		return nil
	}
	return fmt.Errorf("service %s: %w (see `tandem service list`)", vip, ErrNoService)
}

// SetService is the fixture tests' shorthand: a service with backends
// (10.9.0.x:PORT or fd09::x) numbered from 1.
func (m *SynproxyMaps) SetService(vip netip.Addr, port uint16, backends []netip.AddrPort) (Service, error) {
	return m.PutService(Service{VIP: netip.AddrPortFrom(vip, port), Backends: backends})
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

// CookiePeriod is how long one cookie key is the one new cookies use; a
// cookie stays valid for one more period after.
const CookiePeriod = 64 * time.Second

// PeriodKey derives the cookie key of a period from the pair's shared
// secret: both hosts compute the same keys from the clock alone, so a
// handshake begun on one completes on the other and rotation needs no
// coordination.
func PeriodKey(secret []byte, period int64) [8]byte {
	mac := hmac.New(sha256.New, secret)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(period))
	mac.Write([]byte("tandem cookie key\x00"))
	mac.Write(b[:])
	var k [8]byte
	copy(k[:], mac.Sum(nil))
	return k
}

// PeriodAt is the cookie period of t.
func PeriodAt(t time.Time) int64 { return t.Unix() / int64(CookiePeriod/time.Second) }

// SetCookiePeriod installs the keys of period p (in slot p&1, the one new
// cookies use) and p-1 (the other slot): what a host of the pair holds at
// any time during p. It returns whether the map changed.
func (m *SynproxyMaps) SetCookiePeriod(secret []byte, p int64) (bool, error) {
	var keys [2][8]byte
	keys[p&1] = PeriodKey(secret, p)
	keys[(p-1)&1] = PeriodKey(secret, p-1)
	want := CookieKeys{Slot: uint32(p & 1), Key: [2][2]uint32{keyWords(keys[0]), keyWords(keys[1])}}
	var cur CookieKeys
	if err := m.Keys.Lookup(uint32(0), &cur); err == nil && cur == want {
		return false, nil
	}
	// The new key first, then the slot: no cookie names a slot whose key
	// is not there yet.
	step := cur
	step.Key[p&1] = want.Key[p&1]
	step.Key[(p-1)&1] = want.Key[(p-1)&1]
	if err := m.Keys.Put(uint32(0), step); err != nil {
		return false, fmt.Errorf("cookie keys: %w", err)
	}
	if err := m.Keys.Put(uint32(0), want); err != nil {
		return false, fmt.Errorf("cookie keys: %w", err)
	}
	return true, nil
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

// ServiceCounters sums a service's per-CPU counters.
func (m *SynproxyMaps) ServiceCounters(id uint32) (SvcCounters, error) {
	var per []SvcCounters
	var sum SvcCounters
	if err := m.SvcStats.Lookup(id, &per); err != nil {
		return sum, fmt.Errorf("service %d counters: %w", id, err)
	}
	for _, c := range per {
		sum.Syns += c.Syns
		sum.Conns += c.Conns
		sum.Established += c.Established
		sum.Failed += c.Failed
		sum.PktsIn += c.PktsIn
		sum.BytesIn += c.BytesIn
		sum.PktsOut += c.PktsOut
		sum.BytesOut += c.BytesOut
	}
	return sum, nil
}

// ConnCounts counts connection entries by state. It reads the table in
// batches (BPF_MAP_LOOKUP_BATCH, 4,096 entries a syscall): a scrape of a
// full table (1M entries) walked entry by entry costs two syscalls an
// entry, seconds of CPU, longer than Prometheus's scrape timeout on a
// busy host. Kernels without batch lookup are walked.
func (m *SynproxyMaps) ConnCounts() (map[string]int, error) {
	counts := make([]int, 256)
	add := func(st uint8) { counts[st]++ }
	const chunk = 4096
	keys := make([]ConnKey, chunk)
	vals := make([]ConnVal, chunk)
	var cursor ebpf.MapBatchCursor
	for read := 0; ; {
		n, err := m.Conns.BatchLookup(&cursor, keys, vals, nil)
		if errors.Is(err, ebpf.ErrNotSupported) && read == 0 {
			if err := m.connWalk(add); err != nil {
				return nil, err
			}
			break
		}
		for _, v := range vals[:n] {
			add(v.State)
		}
		read += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read connections: %w", err)
		}
	}
	out := map[string]int{}
	for st, n := range counts {
		if n == 0 {
			continue
		}
		name := ConnStateNames[ConnState(st)]
		if name == "" {
			name = fmt.Sprintf("state-%d", st)
		}
		out[name] += n
	}
	return out, nil
}

// connWalk reads the connection table entry by entry.
func (m *SynproxyMaps) connWalk(add func(uint8)) error {
	var (
		k ConnKey
		v ConnVal
	)
	it := m.Conns.Iterate()
	for it.Next(&k, &v) {
		add(v.State)
	}
	return it.Err()
}

// Timeouts for idle connection entries, by state.
type Timeouts struct {
	SynSent, Established, Closing time.Duration
}

// DefaultTimeouts: a backend that has not answered in 30 s will not; an
// established flow idle for 10 minutes is gone (TCP keepalives default to
// 2 hours: long-lived idle flows need a longer timeout); a closed one is
// kept 10 s for its last ACKs.
var DefaultTimeouts = Timeouts{SynSent: 30 * time.Second, Established: 10 * time.Minute, Closing: 10 * time.Second}

// TAINow is CLOCK_TAI in ns, the clock of the entries' times (the two
// hosts of a pair compare them).
func TAINow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_TAI, &ts); err != nil {
		return uint64(time.Now().UnixNano())
	}
	return uint64(ts.Nano())
}

// ExpireIfAny is Expire after a probe of conns for a first key: an empty
// table is not swept (swept false). The sweep visits every bucket of the
// 1M-entry table (~14 ms on a loaded 2-core VM); the probe stops at the
// first entry, and an empty table costs it one walk of the bucket heads
// (~2 ms): an idle daemon's sweep every 10 s was ~6% of its CPU time.
func ExpireIfAny(prog *ebpf.Program, conns *ebpf.Map, now uint64, t Timeouts) (deleted, shortLived uint32, swept bool, err error) {
	var k ConnKey
	switch err := conns.NextKey(nil, &k); {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, 0, false, nil
	case err != nil:
		return 0, 0, false, fmt.Errorf("expire connections: probe the table: %w", err)
	}
	deleted, shortLived, err = Expire(prog, now, t)
	return deleted, shortLived, err == nil, err
}

// Expire runs the sp_expire program at TAI time now (TAINow()): entries
// idle longer than their state's timeout are deleted (and the deletions
// replicated). It returns how many went.
func Expire(prog *ebpf.Program, now uint64, t Timeouts) (deleted, shortLived uint32, err error) {
	args := ExpireArgs{Now: now, SynSentNs: uint64(t.SynSent), EstablishedNs: uint64(t.Established), ClosingNs: uint64(t.Closing)}
	var out ExpireArgs
	ret, err := prog.Run(&ebpf.RunOptions{Context: args, ContextOut: &out})
	if err != nil {
		return 0, 0, fmt.Errorf("expire connections: %w", err)
	}
	return ret, out.ShortLived, nil
}
