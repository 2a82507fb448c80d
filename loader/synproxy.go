package loader

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// ProxyOptions configure the SYN proxy (bpf/synproxy.c).
type ProxyOptions struct {
	// Ifaces get the proxy's XDP program (clients' SYNs and ACKs, and
	// every established segment both ways) and its TC ingress program
	// (backends' SYN-ACKs): the client side and the backend side.
	Ifaces []string
	// SecretFile holds the pair's shared cookie secret (at least 16
	// bytes); the cookie keys are derived from it and the clock.
	SecretFile string
	// Services are added or replaced by up; services added with tandem
	// service add and not in the config are left alone.
	Services []maps.Service
}

// MinSecretBytes is the shortest cookie secret accepted.
const MinSecretBytes = 16

// maxSecretBytes bounds what ReadSecret reads: a secret is a few dozen
// bytes, and a path to an endless file must not hang the daemon.
const maxSecretBytes = 64 << 10

// ReadSecret reads the pair's shared secret (cookie keys, signed adverts).
// Like ssh with a private key, it refuses a file that group or others may
// read or write, one owned by anyone but root or this user (who could
// change it), and anything but a regular file.
func ReadSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cookie secret: %w (make one on one host with `(umask 077; head -c 32 /dev/urandom > %s)` and copy it to the peer)", err, path)
	}
	defer f.Close()
	// The checks read the opened file, so a rename between check and
	// read cannot slip another file in.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secret %s is not a regular file (mode %s)", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secret %s is open to group or others (mode %04o): chmod 600 %s", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("secret %s is owned by uid %d, neither root nor this user (uid %d): chown %d %s", path, st.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("cookie secret: read %s: %w", path, err)
	}
	if len(b) > maxSecretBytes {
		return nil, fmt.Errorf("secret %s: more than %d bytes; a secret is a few dozen (head -c 32 /dev/urandom)", path, maxSecretBytes)
	}
	b = bytes.TrimSpace(b)
	if len(b) < MinSecretBytes {
		return nil, fmt.Errorf("cookie secret %s: %d bytes, want at least %d ((umask 077; head -c 32 /dev/urandom > %s))", path, len(b), MinSecretBytes, path)
	}
	return b, nil
}

// ParseService reads a --service value: VIP:PORT=BACKEND:PORT,BACKEND:PORT.
func ParseService(s string) (maps.Service, error) {
	vip, bs, ok := strings.Cut(s, "=")
	if !ok {
		return maps.Service{}, fmt.Errorf("service %q: want VIP:PORT=BACKEND:PORT[,BACKEND:PORT...]", s)
	}
	return ServiceFrom(vip, strings.Split(bs, ","))
}

// ServiceFrom builds a service from its VIP:PORT and backends' ADDR:PORT.
func ServiceFrom(vip string, backends []string) (maps.Service, error) {
	var svc maps.Service
	v, err := netip.ParseAddrPort(strings.TrimSpace(vip))
	if err != nil {
		return svc, fmt.Errorf("service VIP %q: want ADDR:PORT ([ADDR]:PORT for IPv6)", vip)
	}
	svc.VIP = netip.AddrPortFrom(v.Addr().Unmap(), v.Port())
	for _, b := range backends {
		a, err := netip.ParseAddrPort(strings.TrimSpace(b))
		if err != nil {
			return svc, fmt.Errorf("service %s: backend %q: want ADDR:PORT ([ADDR]:PORT for IPv6)", svc.VIP, b)
		}
		svc.Backends = append(svc.Backends, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
	}
	return svc, checkService(svc)
}

// checkService is maps.Service.Validate and CheckVIP for the VIP and
// every backend.
func checkService(s maps.Service) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := CheckVIP(s.VIP.Addr()); err != nil {
		return fmt.Errorf("service VIP %s: %w", s.VIP.Addr(), err)
	}
	for _, b := range s.Backends {
		if err := CheckVIP(b.Addr()); err != nil {
			return fmt.Errorf("service %s: backend %s: %w", s.VIP, b.Addr(), err)
		}
	}
	return nil
}

func (o *Options) validateProxy() []error {
	var errs []error
	p := o.Proxy
	pseen := map[string]bool{}
	for _, i := range p.Ifaces {
		if i == o.SyncTestIface {
			errs = append(errs, fmt.Errorf("interface %s: both --sync-test-iface and --proxy-iface", i))
		}
		if pseen[i] {
			errs = append(errs, fmt.Errorf("--proxy-iface %s named twice", i))
		}
		pseen[i] = true
	}
	if len(p.Ifaces) > 0 && p.SecretFile == "" {
		errs = append(errs, errors.New("--proxy-iface: the SYN proxy needs --proxy-secret FILE (the pair's shared cookie secret)"))
	}
	if len(p.Ifaces) == 0 && len(p.Services) > 0 {
		errs = append(errs, errors.New("services configured but no --proxy-iface to serve them on"))
	}
	vips := map[netip.AddrPort]bool{}
	for _, s := range p.Services {
		if err := checkService(s); err != nil {
			errs = append(errs, err)
		}
		if vips[s.VIP] {
			errs = append(errs, fmt.Errorf("service %s configured twice", s.VIP))
		}
		vips[s.VIP] = true
	}
	return errs
}

// The SYN proxy (bpf/synproxy.c): its XDP stage (slot 3, after the gate)
// answers SYNs to services with cookies and translates proxied flows; its
// TC ingress program turns backends' SYN-ACKs into the handshake's end.
func init() {
	Register(&Feature{
		Name:   "synproxy",
		File:   "synproxy.c",
		Slot:   chain.SlotSynproxy,
		Spec:   bpf.LoadSynproxy,
		XDP:    bpf.SynproxyProgXdpSynproxy,
		Ifaces: func(o *Options) []string { return o.Proxy.Ifaces },
		Hooks: func(o *Options) (bool, map[Direction]string) {
			return true, map[Direction]string{Ingress: bpf.SynproxyProgTcSynproxy}
		},
		Flags:    proxyFlags,
		Counters: func(pins maps.Pins) (map[string]uint64, error) {
			p, err := OpenProxy(pins)
			if err != nil {
				return nil, err
			}
			defer p.Close()
			return p.ProxyStats()
		},
		Validate: func(o *Options) []error { return o.validateProxy() },
		Synced:   []maps.SyncedMap{{ID: uint32(bpf.SynproxySyncMapIdSYNC_MAP_CONN), Name: bpf.SynproxyMapSpConns}},
		Prepare:  prepareRings(bpf.SynproxyMapSyncRings),
		Setup:    setupSynproxy,
	})
}

func proxyFlags(fs *pflag.FlagSet) func(o *Options) error {
	ifaces := fs.StringSlice("proxy-iface", nil, "run the SYN proxy on this interface, client or backend side (repeat); it may carry the gate too")
	secret := fs.String("proxy-secret", "", "file with the pair's shared cookie secret (at least 16 bytes; mode 0600 or stricter, owned by root or you)")
	services := fs.StringArray("service", nil, "proxy service VIP:PORT=BACKEND:PORT[,BACKEND:PORT...] (repeat)")
	return func(o *Options) error {
		if fs.Changed("proxy-iface") {
			o.Proxy.Ifaces = trimmed(*ifaces)
		}
		if fs.Changed("proxy-secret") {
			o.Proxy.SecretFile = *secret
		}
		for _, s := range *services {
			svc, err := ParseService(s)
			if err != nil {
				return fmt.Errorf("--service: %w", err)
			}
			o.Proxy.Services = append(o.Proxy.Services, svc)
		}
		return nil
	}
}

// prepareRings gives the dirty rings (shared by every replicated
// program) their size.
func prepareRings(name string) func(o *Options, spec *ebpf.CollectionSpec) error {
	return func(o *Options, spec *ebpf.CollectionSpec) error {
		inner, err := maps.RingSpec(o.ringBytes())
		if err != nil {
			return err
		}
		spec.Maps[name].InnerMap = inner
		return nil
	}
}

// setupRings gives every CPU its dirty ring. The rings exist from the
// start, daemon or not: until a daemon drains them, a full ring is
// counted as an overflow and the daemon rescans. The sync maps have the
// same names in every replicated feature's object (pinned by name: one
// set per root).
func setupRings(o *Options, coll *ebpf.Collection) error {
	inner, err := maps.RingSpec(o.ringBytes())
	if err != nil {
		return err
	}
	s := &maps.SyncMaps{Rings: coll.Maps[bpf.SynproxyMapSyncRings], Epoch: coll.Maps[bpf.SynproxyMapSyncEpoch], Overflow: coll.Maps[bpf.SynproxyMapSyncOverflow]}
	return s.SetupRings(inner)
}

// setupSynproxy installs the cookie keys of the current period and the
// configured services, and lets the kernel take translated segments with
// a local source on the proxy interfaces.
func setupSynproxy(o *Options, coll *ebpf.Collection) error {
	secret, err := ReadSecret(o.Proxy.SecretFile)
	if err != nil {
		return err
	}
	if err := setupRings(o, coll); err != nil {
		return err
	}
	var objs bpf.SynproxyMaps
	if err := coll.Assign(&objs); err != nil {
		return fmt.Errorf("synproxy maps: %w", err)
	}
	m := maps.SynproxyMapsOf(&objs)
	if _, err := m.SetCookiePeriod(secret, maps.PeriodAt(time.Now())); err != nil {
		return err
	}
	if err := putServices(o.Pins, m, o.Proxy.Services); err != nil {
		return err
	}
	for _, name := range o.Proxy.Ifaces {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("--proxy-iface %s: not found in this network namespace (see `ip link`)", name)
		}
		// A translated segment the program leaves to the kernel (no
		// neighbour entry yet, after a takeover above all) has the VIP
		// as its source: the host holding the VIP would drop it as a
		// martian without accept_local (down restores it).
		if err := setSysctl(o.Pins, "net/ipv4/conf/"+name+"/accept_local", "1"); err != nil {
			return fmt.Errorf("--proxy-iface %s: %w", name, err)
		}
	}
	return nil
}

// putServices writes services under the service lock.
func putServices(pins maps.Pins, m *maps.SynproxyMaps, svcs []maps.Service) error {
	if len(svcs) == 0 {
		return nil
	}
	unlock, err := ServiceLock(pins)
	if err != nil {
		return err
	}
	defer unlock()
	for _, svc := range svcs {
		if _, err := m.PutService(svc); err != nil {
			return err
		}
	}
	return nil
}

// Proxy is the pinned SYN proxy, for the CLI and the daemon. Its
// PutService and DeleteService hold the service lock.
type Proxy struct {
	*maps.SynproxyMaps
	Expire *ebpf.Program // nil when only the maps were found
	pins   maps.Pins
	// nextSweep: an expiry sweep walks every bucket of the connection
	// table (1M), milliseconds of CPU whatever it holds. With no entry in
	// a state whose timeout is short, the next sweep waits longer.
	nextSweep time.Time
}

// SweepInterval is how long the daemon waits for the next expiry sweep:
// a second while entries with a short timeout (waiting for a backend,
// closing) exist; else the closing timeout, at most 10 s (an established
// flow's timeout is minutes). An entry is expired at most that late.
func SweepInterval(shortLived uint32, t maps.Timeouts) time.Duration {
	if shortLived > 0 {
		return time.Second
	}
	return max(time.Second, min(10*time.Second, t.Closing))
}

// PutService adds or replaces a service under the service lock.
func (p *Proxy) PutService(s maps.Service) (maps.Service, error) {
	unlock, err := ServiceLock(p.pins)
	if err != nil {
		return s, err
	}
	defer unlock()
	return p.SynproxyMaps.PutService(s)
}

// DeleteService removes a service under the service lock.
func (p *Proxy) DeleteService(vip netip.AddrPort) error {
	unlock, err := ServiceLock(p.pins)
	if err != nil {
		return err
	}
	defer unlock()
	return p.SynproxyMaps.DeleteService(vip)
}

// ErrNoProxy: nothing pinned says a SYN proxy was loaded.
var ErrNoProxy = errors.New("no SYN proxy loaded here (tandem up --proxy-iface ... loads it)")

// OpenProxy opens the pinned SYN proxy maps (and its expiry program).
func OpenProxy(pins maps.Pins) (*Proxy, error) {
	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(pins.Map(name), nil)
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoProxy
		}
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", pins.Map(name), err)
		}
		return m, nil
	}
	p := &Proxy{SynproxyMaps: &maps.SynproxyMaps{}, pins: pins}
	var err error
	for _, f := range []struct {
		name string
		dst  **ebpf.Map
	}{
		{bpf.SynproxyMapSpServices, &p.Services}, {bpf.SynproxyMapSpBackends, &p.Backends}, {bpf.SynproxyMapSpBackendRev, &p.Rev},
		{bpf.SynproxyMapSpCookieKeys, &p.Keys}, {bpf.SynproxyMapSpStats, &p.Stats}, {bpf.SynproxyMapSpSvcStats, &p.SvcStats}, {bpf.SynproxyMapSpConns, &p.Conns},
	} {
		if *f.dst, err = open(f.name); err != nil {
			p.Close()
			return nil, err
		}
	}
	if prog, err := ebpf.LoadPinnedProgram(pins.Prog(bpf.SynproxyProgSpExpire), nil); err == nil {
		p.Expire = prog
	}
	return p, nil
}

// Close releases the maps.
func (p *Proxy) Close() {
	for _, m := range []*ebpf.Map{p.Services, p.Backends, p.Rev, p.Keys, p.Stats, p.SvcStats, p.Conns} {
		if m != nil {
			m.Close()
		}
	}
	if p.Expire != nil {
		p.Expire.Close()
	}
}

// Maintain is the daemon's periodic work for the proxy: the cookie keys
// of the current period (rotation) and the expiry of idle entries.
func (p *Proxy) Maintain(secret []byte, now time.Time, t maps.Timeouts) (rotated bool, expired uint32, err error) {
	if rotated, err = p.SetCookiePeriod(secret, maps.PeriodAt(now)); err != nil {
		return
	}
	if p.Expire != nil && !now.Before(p.nextSweep) {
		var short uint32
		if expired, short, err = maps.Expire(p.Expire, maps.TAINow(), t); err == nil {
			p.nextSweep = now.Add(SweepInterval(short, t))
		}
	}
	return
}
