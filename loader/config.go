package loader

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/maps"
)

// FileConfig is the host config file (TOML). Flags override its values.
// Its datapath keys go to Options (Apply); the daemon's to
// daemon.Config (daemon.Config.ApplyFile): one file, one schema, read
// here.
//
//	bpffs      = "/sys/fs/bpf/tandem"
//	interfaces = ["eth0"]     # the VIP gate; an interface may carry other features too
//	xdp_mode   = "auto"     # auto | native | generic
//	ingress    = "xdp"      # xdp | tc
//	tc         = "auto"     # auto | tcx | clsact
//	gate       = "enforce"  # enforce | monitor
//
//	state_dir    = "/var/lib/tandem"  # sync metadata and status
//	metrics_addr = "127.0.0.1:9474"   # Prometheus; empty: off
//	control_group = "tandem"          # may use tandem vip besides root; empty: root only
//
//	[[vip]]
//	addr  = "192.0.2.10"
//	owned = true            # default true; false: a standby for this VIP
//
//	[sync]
//	role        = "primary"            # primary | standby; empty: no sync
//	peer        = "192.0.2.2:7400"     # primary: the standby's address
//	listen      = "0.0.0.0:7400"       # standby: where the primary connects
//	certs       = "/etc/tandem/certs"  # from tandem certs, or your PKI
//	name        = "gw-a"               # this host's certificate name
//	peer_name   = "gw-b"               # the peer's: the only certificate admitted
//	interval    = "10ms"                # 1ms to 10s
//	journal     = 262144               # deltas kept for a reconnecting standby
//	journal_mib = 64
//	ring_bytes  = 4194304              # each CPU's dirty ring: a power of two, 4 KiB to 64 MiB
//	test_iface  = ""                   # load the test-only synctest program here
//
//	[proxy]                            # the SYN proxy
//	interfaces  = ["eth1", "eth2"]     # client side and backend side (may include the gate's)
//	secret_file = "/etc/tandem/cookie.key"  # shared by the pair
//	mss4        = 1460                 # MSS announced to IPv4 clients (536 to 65495)
//	mss6        = 1440                 # and to IPv6 clients (1220 to 65475)
//	syn_retry   = "1s"                 # backend SYN sent again after (100ms to 10s)
//	syn_tries   = 4                    # backend SYNs before the client's RST (1 to 100)
//	challenge_interval = "500ms"       # challenge ACKs per connection at most every (10ms to 60s)
//
//	[[proxy.service]]
//	vip      = "192.0.2.10:443"
//	backends = ["10.2.0.11:443", "10.2.0.12:443@2"] # ADDR:PORT[@WEIGHT]: weight 1 by default, 0 drains
//	[proxy.service.check]              # backend health checks (docs/synproxy.md, "Health checks")
//	type     = "http"                  # tcp, http, https or command
//	path     = "/healthz"              # http(s): GET this; up when the status is 200 (status = N)
//	interval = "2s"                    # timeout = "1s", rise = 2, fall = 3, insecure = false,
//	                                   # host = "", command = ["/usr/local/bin/check"]
//
//	[esp]                              # the ESP anti-replay filter (docs/sa.md)
//	interfaces  = ["eth1"]             # where inbound ESP arrives (may include the gate's)
//	sa_filter   = "all"                # which SAs are synced: all, or spi=LO-HI,dst=PREFIX,src=,reqid=
//	source      = "auto"               # replay state from: auto (fexit, else kprobe, else aevents), or one
//	margin_safety = 2.0                # takeover: outbound margin's factor for bursts (>= 1)
//
//	[migrate]                          # migration redirects (docs/migration.md)
//	interfaces   = ["eth1"]            # where endpoints' packets arrive (may include the gate's)
//	hold_bytes   = 33554432            # the hold ring: a power of two, 64 KiB to 1 GiB (0: the default)
//	hold_packets = 65536               # packets held per endpoint at most, up to 2^24 (0: the default)
//	encap_sources = ["192.0.2.2"]      # this host's outer source for routed locations (one per family)
//
//	[election]                         # VIP ownership and failover
//	addrs       = ["192.0.2.10/24@eth1", "10.2.0.1/24@eth2"]  # moved together
//	peers       = ["10.9.0.2:7401", "192.0.2.3:7401"]         # one per path
//	peer_name   = ""                   # the peer's sync name; default: the other host certificate in sync.certs
//	listen      = "[::]:7401"
//	priority    = 100
//	preempt     = false
//	interval    = "100ms"              # 10ms to 10s
//	dead        = 3                    # adverts missed before the peer is gone (2 to 100)
//	secret_file = ""                   # default: proxy.secret_file
//
//	[migrate]                          # remote control of migrations (tandem migrate follow)
//	listen      = "10.9.0.1:7402"      # TLS 1.3, certificates of sync.certs' CA
//	clients     = ["hv-1", "hv-2"]     # the certificate names allowed to drive migrations
type FileConfig struct {
	BPFFS       string        `toml:"bpffs"`
	Interfaces  []string      `toml:"interfaces"`
	XDPMode     string        `toml:"xdp_mode"`
	Ingress     string        `toml:"ingress"`
	TC          string        `toml:"tc"`
	Gate        string        `toml:"gate"`
	StateDir    string        `toml:"state_dir"`
	MetricsAddr string        `toml:"metrics_addr"`
	VIPs        []VIPConfig   `toml:"vip"`
	Sync        SyncConfig    `toml:"sync"`
	Proxy       ProxyConfig   `toml:"proxy"`
	ESP         ESPConfig     `toml:"esp"`
	Election    ElectConfig   `toml:"election"`
	Migrate     MigrateConfig `toml:"migrate"`

	// ControlGroup may use the daemon's control socket besides root.
	ControlGroup string `toml:"control_group"`
}

// ElectConfig is the [election] table.
type ElectConfig struct {
	Addrs    []string `toml:"addrs"`
	Peers    []string `toml:"peers"`
	PeerName string   `toml:"peer_name"`
	Listen   string   `toml:"listen"`
	Priority *int     `toml:"priority"`
	Preempt  bool     `toml:"preempt"`
	Interval string   `toml:"interval"`
	Dead     int      `toml:"dead"`
	Secret   string   `toml:"secret_file"`
}

// ESPConfig is the [esp] table: the ESP anti-replay filter.
type ESPConfig struct {
	Interfaces   []string `toml:"interfaces"`
	SAFilter     string   `toml:"sa_filter"`     // which SAs are synced (xfrm.ParseFilter)
	Source       string   `toml:"source"`        // auto, fexit, kprobe, aevents
	MarginSafety float64  `toml:"margin_safety"` // the takeover margin's safety factor
}

// ProxyConfig is the [proxy] table with its [[proxy.service]] tables.
type ProxyConfig struct {
	Interfaces        []string        `toml:"interfaces"`
	Secret            string          `toml:"secret_file"`
	MSS4              int             `toml:"mss4"`
	MSS6              int             `toml:"mss6"`
	SynRetry          string          `toml:"syn_retry"`
	SynTries          int             `toml:"syn_tries"`
	ChallengeInterval string          `toml:"challenge_interval"`
	Services          []ServiceConfig `toml:"service"`
}

// ServiceConfig is one [[proxy.service]].
type ServiceConfig struct {
	VIP      string   `toml:"vip"`
	Backends []string `toml:"backends"`
	// Check is the backends' health check ([proxy.service.check]); the
	// daemon runs it (daemon.Config.Health).
	Check *health.Config `toml:"check"`
}

// SyncConfig is the [sync] table.
type SyncConfig struct {
	Role       string `toml:"role"`
	Peer       string `toml:"peer"`
	Listen     string `toml:"listen"`
	Certs      string `toml:"certs"`
	Name       string `toml:"name"`
	PeerName   string `toml:"peer_name"`
	Interval   string `toml:"interval"`
	Journal    int    `toml:"journal"`
	JournalMiB int    `toml:"journal_mib"`
	RingBytes  uint32 `toml:"ring_bytes"`
	TestIface  string `toml:"test_iface"`
}

// VIPConfig is one [[vip]] table.
type VIPConfig struct {
	Addr  string `toml:"addr"`
	Owned *bool  `toml:"owned"`
}

// Defaults returns the options tandem uses when nothing says otherwise.
func Defaults() Options {
	return Options{
		Pins:    maps.Pins{Root: maps.DefaultRoot},
		XDPMode: XDPAuto,
		Ingress: IngressXDP,
		TC:      TCAuto,
		Gate:    GateEnforce,
		VIPs:    map[netip.Addr]bool{},
		Proxy: ProxyOptions{MSS4: DefaultMSS4, MSS6: DefaultMSS6, SynRetry: DefaultSynRetry, SynTries: DefaultSynTries,
			ChallengeInterval: DefaultChallengeInterval},
	}
}

// ConfigError is a config file that cannot be used as written: a syntax
// error, an unknown key, a bad value. It is a mistake in how tandem was
// called, like a bad flag (the CLI exits 2); a file that cannot be read is
// not one.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// ReadConfig parses a config file strictly: unknown keys and bad values
// are errors (*ConfigError) that name the file and the key.
func ReadConfig(path string) (*FileConfig, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	var fc FileConfig
	md, err := toml.Decode(string(data), &fc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &ConfigError{fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)}
		}
		return nil, &ConfigError{fmt.Errorf("config %s: %w", path, err)}
	}
	if un := md.Undecoded(); len(un) > 0 {
		keys := make([]string, len(un))
		for i, k := range un {
			keys[i] = k.String()
		}
		return nil, &ConfigError{fmt.Errorf("config %s: unknown key(s) %s", path, strings.Join(keys, ", "))}
	}
	return &fc, nil
}

// MaxConfigBytes bounds a config file: a host's config is a few
// kilobytes; a larger one is a wrong path.
const MaxConfigBytes = 1 << 20

// readConfigFile reads a config that is a regular file (a symlink to one
// is followed) of at most MaxConfigBytes. The open does not block: a FIFO
// given as the config would otherwise hold the command in open(2) until
// a writer came; a device (/dev/zero) would read without end.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read config %s: not a regular file (%s): give the path of the TOML file", path, fi.Mode().Type())
	}
	if fi.Size() > MaxConfigBytes {
		return nil, fmt.Errorf("read config %s: %d bytes, larger than %d: is this the config?", path, fi.Size(), MaxConfigBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > MaxConfigBytes {
		return nil, fmt.Errorf("read config %s: larger than %d bytes: is this the config?", path, MaxConfigBytes)
	}
	return data, nil
}

// Apply lays the file's datapath values over o. Its errors are
// *ConfigError. The daemon's tables and keys ([sync] but ring_bytes and
// test_iface, [election], state_dir, metrics_addr, control_group) are
// applied by daemon.Config.ApplyFile.
func (fc *FileConfig) Apply(o *Options) error {
	if err := fc.apply(o); err != nil {
		return &ConfigError{err}
	}
	return nil
}

// apply lays every value it can and reports every bad one (joined), so
// tandem config check lists all problems, not just the first.
func (fc *FileConfig) apply(o *Options) error {
	var errs []error
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&o.Pins.Root, fc.BPFFS)
	set(&o.XDPMode, fc.XDPMode)
	set(&o.Ingress, fc.Ingress)
	set(&o.TC, fc.TC)
	set(&o.Gate, fc.Gate)
	set(&o.SyncTestIface, fc.Sync.TestIface)
	if fc.Sync.RingBytes != 0 {
		o.RingBytes = fc.Sync.RingBytes
	}
	if len(fc.Interfaces) > 0 {
		o.Interfaces = append([]string(nil), fc.Interfaces...)
	}
	if len(fc.Migrate.Interfaces) > 0 {
		o.Migrate.Ifaces = append([]string(nil), fc.Migrate.Interfaces...)
	}
	if fc.Migrate.HoldBytes != 0 {
		o.Migrate.HoldBytes = fc.Migrate.HoldBytes
	}
	if fc.Migrate.HoldPackets != 0 {
		o.Migrate.HoldPackets = fc.Migrate.HoldPackets
	}
	if len(fc.Migrate.EncapSources) > 0 {
		o.Migrate.EncapSrc = append([]string(nil), fc.Migrate.EncapSources...)
	}
	if len(fc.Proxy.Interfaces) > 0 {
		o.Proxy.Ifaces = append([]string(nil), fc.Proxy.Interfaces...)
	}
	if len(fc.ESP.Interfaces) > 0 {
		o.ESP.Ifaces = append([]string(nil), fc.ESP.Interfaces...)
	}
	fc.ESP.apply(&o.ESP)
	set(&o.Proxy.SecretFile, fc.Proxy.Secret)
	if err := fc.Proxy.applySettings(&o.Proxy); err != nil {
		errs = append(errs, err)
	}
	for i, sc := range fc.Proxy.Services {
		svc, err := ServiceFrom(sc.VIP, sc.Backends)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: proxy.service #%d: %v", i+1, err))
			continue
		}
		o.Proxy.Services = append(o.Proxy.Services, svc)
	}
	if len(fc.VIPs) > 0 {
		o.VIPs = map[netip.Addr]bool{}
		for i, v := range fc.VIPs {
			a, err := netip.ParseAddr(v.Addr)
			if err != nil {
				errs = append(errs, fmt.Errorf("config: vip #%d: %q is not an IP address", i+1, v.Addr))
				continue
			}
			if err := CheckVIP(a); err != nil {
				errs = append(errs, fmt.Errorf("config: vip #%d: %s: %w", i+1, a.Unmap(), err))
				continue
			}
			if _, dup := o.VIPs[a.Unmap()]; dup {
				errs = append(errs, fmt.Errorf("config: vip %s listed twice", a))
				continue
			}
			o.VIPs[a.Unmap()] = v.Owned == nil || *v.Owned
		}
	}
	return errors.Join(errs...)
}

// ParseVIP reads a --vip value: ADDR (owned) or ADDR=standby / ADDR=owned.
func ParseVIP(s string) (netip.Addr, bool, error) {
	addr, role, hasRole := strings.Cut(s, "=")
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("--vip %q: %q is not an IP address", s, addr)
	}
	if a.Zone() != "" {
		return netip.Addr{}, false, fmt.Errorf("--vip %q: a VIP has no zone", s)
	}
	if !hasRole || role == "owned" {
		return a.Unmap(), true, nil
	}
	if role == "standby" {
		return a.Unmap(), false, nil
	}
	return netip.Addr{}, false, fmt.Errorf("--vip %q: role %q: use ADDR, ADDR=owned or ADDR=standby", s, role)
}

// applySettings lays the [proxy] table's load-time settings over p; their
// bounds are checked with the flags' (validateProxy).
func (pc ProxyConfig) applySettings(p *ProxyOptions) error {
	var errs []error
	for _, n := range []struct {
		v   int
		dst *int
	}{{pc.MSS4, &p.MSS4}, {pc.MSS6, &p.MSS6}, {pc.SynTries, &p.SynTries}} {
		if n.v != 0 {
			*n.dst = n.v
		}
	}
	for _, d := range []struct {
		key, v string
		dst    *time.Duration
	}{{"syn_retry", pc.SynRetry, &p.SynRetry}, {"challenge_interval", pc.ChallengeInterval, &p.ChallengeInterval}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: proxy.%s %q: %v (a duration: 1s, 500ms)", d.key, d.v, err))
			continue
		}
		*d.dst = v
	}
	return errors.Join(errs...)
}
