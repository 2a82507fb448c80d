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

	// Load-time settings of the programs (bpf/synproxy/maps.h, cfg_*);
	// Defaults sets them, the bounds are validateProxy's.
	//
	// MSS4 and MSS6 are the MSS announced to clients: lower them when the
	// path to the backends has a lower MTU (a tunnel).
	MSS4, MSS6 int
	// SynRetry is how long a backend that has not answered gets before
	// the next SYN (sent when the waiting client's segments arrive);
	// after SynTries SYNs the client gets a RST, like the kernel's
	// tcp_syn_retries.
	SynRetry time.Duration
	SynTries int
	// ChallengeInterval: at most one challenge ACK (RFC 5961) per
	// connection this often, like the kernel's tcp_invalid_ratelimit.
	ChallengeInterval time.Duration
}

// The proxy's load-time settings by default: the values the programs are
// built with (TestProxyDefaultsMatchProgram), and their bounds.
const (
	DefaultMSS4              = 1460
	DefaultMSS6              = 1440
	DefaultSynRetry          = time.Second
	DefaultSynTries          = 4
	DefaultChallengeInterval = 500 * time.Millisecond

	MinMSS4, MaxMSS4 = 536, 65495  // RFC 9293's least for IPv4; a 64 KiB packet's
	MinMSS6, MaxMSS6 = 1220, 65475 // IPv6's 1280-byte minimum MTU; a 64 KiB packet's
	MinSynRetry      = 100 * time.Millisecond
	MaxSynRetry      = 10 * time.Second
	MinSynTries      = 1
	MaxSynTries      = 100
	// Below about 1 ms the program's clock (ns >> 20) sees no interval.
	MinChallengeInterval = 10 * time.Millisecond
	MaxChallengeInterval = 60 * time.Second
)

// setProxyConsts writes the proxy's load-time settings into its spec.
func setProxyConsts(spec *ebpf.CollectionSpec, p ProxyOptions) error {
	for name, v := range map[string]any{
		bpf.SynproxyVarCfgMss4:        uint16(p.MSS4),
		bpf.SynproxyVarCfgMss6:        uint16(p.MSS6),
		bpf.SynproxyVarCfgSynRetryNs:  uint64(p.SynRetry),
		bpf.SynproxyVarCfgSynTries:    uint32(p.SynTries),
		bpf.SynproxyVarCfgChallengeNs: uint64(p.ChallengeInterval),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
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

// ParseService reads a --service value:
// VIP:PORT=BACKEND:PORT[@WEIGHT],BACKEND:PORT[@WEIGHT]...
func ParseService(s string) (maps.Service, error) {
	vip, bs, ok := strings.Cut(s, "=")
	if !ok {
		return maps.Service{}, fmt.Errorf("service %q: want VIP:PORT=BACKEND:PORT[@WEIGHT][,BACKEND:PORT[@WEIGHT]...]", s)
	}
	return ServiceFrom(vip, strings.Split(bs, ","))
}

// ServiceFrom builds a service from its VIP:PORT and backends'
// ADDR:PORT[@WEIGHT] (weight 1 when not given, 0 drains).
func ServiceFrom(vip string, backends []string) (maps.Service, error) {
	var svc maps.Service
	v, err := netip.ParseAddrPort(strings.TrimSpace(vip))
	if err != nil {
		return svc, fmt.Errorf("service VIP %q: want ADDR:PORT ([ADDR]:PORT for IPv6)", vip)
	}
	svc.VIP = netip.AddrPortFrom(v.Addr().Unmap(), v.Port())
	for _, b := range backends {
		a, w, err := parseBackend(b)
		if err != nil {
			return svc, fmt.Errorf("service %s: %w", svc.VIP, err)
		}
		svc.Backends = append(svc.Backends, a)
		svc.Weights = append(svc.Weights, w)
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
	errs = append(errs, p.validateSettings()...)
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

// validateSettings checks the load-time settings against their bounds.
func (p ProxyOptions) validateSettings() []error {
	var errs []error
	between := func(flag string, v, lo, hi int, why string) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("--%s %d: between %d and %d (%s)", flag, v, lo, hi, why))
		}
	}
	between("proxy-mss4", p.MSS4, MinMSS4, MaxMSS4, "bytes; the path MTU to the backends less 40")
	between("proxy-mss6", p.MSS6, MinMSS6, MaxMSS6, "bytes; the path MTU to the backends less 60")
	between("proxy-syn-tries", p.SynTries, MinSynTries, MaxSynTries, "backend SYNs before the client gets a RST")
	for _, d := range []struct {
		flag   string
		v      time.Duration
		lo, hi time.Duration
	}{{"proxy-syn-retry", p.SynRetry, MinSynRetry, MaxSynRetry}, {"proxy-challenge-interval", p.ChallengeInterval, MinChallengeInterval, MaxChallengeInterval}} {
		if d.v < d.lo || d.v > d.hi {
			errs = append(errs, fmt.Errorf("--%s %s: between %s and %s", d.flag, d.v, d.lo, d.hi))
		}
	}
	// An entry waiting for its backend expires this long after the
	// cookie ACK whatever the retries: the last SYN must go out before.
	if wait := time.Duration(p.SynTries-1) * p.SynRetry; len(errs) == 0 && wait >= maps.DefaultTimeouts.SynSent {
		errs = append(errs, fmt.Errorf("--proxy-syn-tries %d with --proxy-syn-retry %s: the last SYN would go out %s after the first, but an entry waiting for its backend expires after %s: lower either", p.SynTries, p.SynRetry, wait, maps.DefaultTimeouts.SynSent))
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
		Flags: proxyFlags,
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
		Prepare: func(o *Options, spec *ebpf.CollectionSpec) error {
			if err := prepareRings(bpf.SynproxyMapSyncRings)(o, spec); err != nil {
				return err
			}
			return setProxyConsts(spec, o.Proxy)
		},
		Setup: setupSynproxy,
	})
}

func proxyFlags(fs *pflag.FlagSet) func(o *Options) error {
	ifaces := fs.StringSlice("proxy-iface", nil, "run the SYN proxy on this interface, client or backend side (repeat); it may carry the gate too")
	secret := fs.String("proxy-secret", "", "file with the pair's shared cookie secret (at least 16 bytes; mode 0600 or stricter, owned by root or you)")
	services := fs.StringArray("service", nil, "proxy service VIP:PORT=BACKEND:PORT[@WEIGHT][,BACKEND:PORT[@WEIGHT]...] (repeat); weight 1 by default, 0 drains; new flows go by a Maglev table")
	d := Defaults().Proxy
	mss4 := fs.Int("proxy-mss4", d.MSS4, "MSS the SYN proxy announces to IPv4 clients (536 to 65495; lower it for a tunnel to the backends)")
	mss6 := fs.Int("proxy-mss6", d.MSS6, "MSS the SYN proxy announces to IPv6 clients (1220 to 65475)")
	retry := fs.Duration("proxy-syn-retry", d.SynRetry, "a backend that has not answered gets another SYN after this (100ms to 10s)")
	tries := fs.Int("proxy-syn-tries", d.SynTries, "backend SYNs before the client gets a RST (1 to 100)")
	challenge := fs.Duration("proxy-challenge-interval", d.ChallengeInterval, "at most one challenge ACK (RFC 5961) per connection this often (10ms to 60s)")
	return func(o *Options) error {
		for name, set := range map[string]func(){"proxy-mss4": func() { o.Proxy.MSS4 = *mss4 }, "proxy-mss6": func() { o.Proxy.MSS6 = *mss6 },
			"proxy-syn-retry": func() { o.Proxy.SynRetry = *retry }, "proxy-syn-tries": func() { o.Proxy.SynTries = *tries },
			"proxy-challenge-interval": func() { o.Proxy.ChallengeInterval = *challenge }} {
			if fs.Changed(name) {
				set()
			}
		}
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
	if err := ensureTables(o.Pins, m); err != nil {
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
	if err := openBalance(pins, p.SynproxyMaps); err != nil {
		p.Close()
		return nil, err
	}
	if prog, err := ebpf.LoadPinnedProgram(pins.Prog(bpf.SynproxyProgSpExpire), nil); err == nil {
		p.Expire = prog
	}
	return p, nil
}

// Close releases the maps.
func (p *Proxy) Close() {
	for _, m := range []*ebpf.Map{p.Services, p.Backends, p.Rev, p.Keys, p.Stats, p.SvcStats, p.Conns, p.Maglev, p.BackendCfg, p.BackendStats} {
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
		if expired, short, _, err = maps.ExpireIfAny(p.Expire, p.Conns, maps.TAINow(), t); err == nil {
			p.nextSweep = now.Add(SweepInterval(short, t))
		}
	}
	return
}
