package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
)

// rootFlags are shared by every command that finds the pins.
type rootFlags struct {
	config   string
	bpffs    string
	stateDir string
	fs       *pflag.FlagSet
}

func addRootFlags(fs *pflag.FlagSet) *rootFlags {
	r := &rootFlags{fs: fs}
	fs.StringVarP(&r.config, "config", "c", "", "host config file (TOML); flags override its values")
	fs.StringVar(&r.bpffs, "bpffs", maps.DefaultRoot, "root under which maps, programs and links are pinned")
	fs.StringVar(&r.stateDir, "state-dir", loader.DefaultStateDir, "where the daemon keeps its sync metadata and status")
	return r
}

// options builds loader options: defaults, then the config file, then the
// flags the user set.
func (r *rootFlags) options() (loader.Options, error) {
	o := loader.Defaults()
	if r.config != "" {
		fc, err := loader.ReadConfig(r.config)
		if err != nil {
			return o, err
		}
		if err := fc.Apply(&o); err != nil {
			return o, err
		}
	}
	if r.fs.Changed("bpffs") {
		o.Pins.Root = r.bpffs
	}
	if r.fs.Changed("state-dir") {
		o.StateDir = r.stateDir
	}
	if !filepath.IsAbs(o.Pins.Root) {
		return o, usagef("--bpffs %q: must be an absolute path (below /sys/fs/bpf)", o.Pins.Root)
	}
	return o, nil
}

type upFlags struct {
	*rootFlags
	ifaces   []string
	xdpMode  string
	ingress  string
	tc       string
	gate     string
	vips     []string
	once     bool
	interval time.Duration
	verbose  bool
	sync     loader.SyncOptions
	testIf   string
	ring     uint32
	metrics  string
	proxy    []string
	secret   string
	services []string
	ptune    loader.ProxyOptions // the proxy's load-time settings (--proxy-mss4 ...)
	vaddrs   []string
	vpeers   []string
	elect    loader.ElectOptions

	stopTimeout time.Duration // down: how long to wait for the daemon to stop
}

func init() {
	register(&command{
		name:    "up",
		summary: "load and attach the datapath, or replace it in place; then run the daemon",
		long: `
Loads tandem's programs, attaches them to each interface (ingress: XDP, or
TC with --ingress tc; egress: TC) and pins maps, programs and links under
--bpffs, mounting bpffs first if it is not mounted. XDP runs in native mode
and falls back to generic only when the driver has no native XDP (or when
--xdp-mode generic asks). TC hooks use TCX links where the kernel has them,
else a clsact qdisc with a direct-action cls_bpf filter.

Run again, up replaces every program in place through its pinned link or
filter: traffic never stops. Attachments no longer configured are removed
after their replacements are in place (a clsact qdisc tandem created stays
until down: creating or deleting a qdisc briefly stops the device's queues).
Pinned maps are kept, so counters survive.

Then up stays in the foreground as the daemon: it checks the attachments
every --check-interval and re-applies the config when one is broken, and on
SIGHUP. SIGINT/SIGTERM (or SIGKILL) stop the daemon, never the datapath:
a later up adopts what is pinned; tandem down removes it. If a daemon
already serves --bpffs, up applies the change and leaves that daemon to it;
if it asks for other daemon options (--state-dir, --metrics-addr, --sync-*,
the --vip-* election, --proxy-secret, --control-group) it refuses before
changing anything and names them: those need a restart of the daemon.
--once applies and exits without running the daemon.

Before it attaches anything, up checks what the daemon needs (certificates,
secrets, the control group) and locks --state-dir (one daemon per state
directory). If the daemon still cannot start, up takes back what it made:
everything when nothing was pinned under --bpffs before, else only the
attachments it added (a datapath that ran before keeps running). The daemon
makes --state-dir private (0700; 0750 for --control-group) and its control
socket (tandem vip) answers root and --control-group members only. Maps
replaced under the running daemon (unpinned, or pinned anew by another up)
are noticed at the next check: the daemon re-applies what is missing and
moves every map handle to the pinned maps.

State sync: with --sync-role, the daemon also replicates every registered
map to the peer host. The primary drains the per-CPU dirty rings every
--sync-interval and streams the changed entries to --sync-peer over TLS 1.3
with mutual certificates (--sync-certs, as tandem certs lays them out; this
host's certificate is --sync-name, and the only certificate admitted from
the peer, in both directions, is --sync-peer-name: another host of the same
CA, or this host's own certificate, is refused). The standby accepts the primary on
--sync-listen and applies in order. On every (re)connect the primary picks
the cheapest safe resync (aligned, journal, incremental or full) from both
hosts' metadata in --state-dir, and logs the choice and why. A daemon that
starts as primary serves a new generation, so its standby resyncs in full.
--metrics-addr serves Prometheus metrics at /metrics; tandem status shows
the session and the replication lag.

SYN proxy: --proxy-iface loads the zero-window SYN proxy on the client-side
and backend-side interfaces (XDP, plus TC ingress for the backends'
SYN-ACKs). SYNs to a service (--service, or tandem service add) are
answered with window-0 cookie SYN-ACKs; only a client that returns a valid
cookie gets a backend connection. --proxy-secret names the pair's shared
secret: both hosts derive the same cookie keys from it and the clock, so a
handshake begun on one completes on the other; the daemon rotates them
every 64 s (a cookie stays valid one period more) and expires idle
connection entries. Connection entries are replicated by --sync-role.
Partial checksums from local sockets on veths (tx offload) cannot be
translated: turn tx offload off on such endpoints (ethtool -K DEV tx off).`,
		examples: `  tandem up -i eth0 --vip 192.0.2.10
  tandem up --config /etc/tandem/tandem.toml
  tandem up -i eth0 -i eth1 --vip 2001:db8::10 --vip 192.0.2.11=standby --once
  tandem up -i veth0 --ingress tc --tc clsact --gate monitor --once
  tandem up -i eth0 --sync-role primary --sync-peer 192.0.2.2:7400 --sync-name gw-a --sync-peer-name gw-b --metrics-addr 127.0.0.1:9474
  tandem up -i eth0 --sync-role standby --sync-listen 192.0.2.2:7400 --sync-name gw-b --sync-peer-name gw-a
  tandem up --proxy-iface eth1 --proxy-iface eth2 --proxy-secret /etc/tandem/cookie.key --service 192.0.2.10:443=10.2.0.11:443,10.2.0.12:443
`,
		flags: func(fs *pflag.FlagSet) any {
			f := &upFlags{rootFlags: addRootFlags(fs)}
			fs.StringSliceVarP(&f.ifaces, "iface", "i", nil, "interface to attach to (repeat, or comma-separate)")
			fs.StringVar(&f.xdpMode, "xdp-mode", loader.XDPAuto, "XDP mode: auto (native, else generic), native, generic")
			fs.StringVar(&f.ingress, "ingress", loader.IngressXDP, "ingress hook: xdp or tc")
			fs.StringVar(&f.tc, "tc", loader.TCAuto, "TC attach path: auto (tcx where available), tcx, clsact")
			fs.StringVar(&f.gate, "gate", loader.GateEnforce, "for VIPs this host does not own: enforce (drop) or monitor (count, pass)")
			fs.StringArrayVar(&f.vips, "vip", nil, "VIP as ADDR (owned here) or ADDR=standby (repeat); a unicast address: not unspecified, broadcast, multicast, loopback or link-local")
			fs.BoolVar(&f.once, "once", false, "apply and exit; do not run the daemon")
			fs.DurationVar(&f.interval, "check-interval", time.Second, "how often the daemon checks its attachments (100ms to 1h)")
			fs.BoolVarP(&f.verbose, "verbose", "v", false, "log debug detail")
			d := loader.Defaults()
			fs.StringVar(&f.sync.Role, "sync-role", "", "replicate state: primary (send) or standby (receive); empty: no sync")
			fs.StringVar(&f.sync.Peer, "sync-peer", "", "primary: the standby's HOST:PORT")
			fs.StringVar(&f.sync.Listen, "sync-listen", d.Sync.Listen, "standby: ADDR:PORT to accept the primary on")
			fs.StringVar(&f.sync.Certs, "sync-certs", d.Sync.Certs, "directory with ca.pem and NAME.pem/NAME-key.pem (see tandem certs)")
			fs.StringVar(&f.sync.Name, "sync-name", "", "this host's certificate name (default: the hostname)")
			fs.StringVar(&f.sync.PeerName, "sync-peer-name", "", "the peer's certificate name, the only one admitted (default: the one other host certificate in --sync-certs)")
			fs.DurationVar(&f.sync.Interval, "sync-interval", d.Sync.Interval, "how often the primary drains the dirty rings and sends (1ms to 10s)")
			fs.IntVar(&f.sync.Journal, "sync-journal", syncer.DefaultJournalEntries, "deltas the primary keeps for a standby that reconnects (journal resync; at most 16777216)")
			fs.IntVar(&f.sync.JournalMiB, "sync-journal-mib", syncer.DefaultJournalBytes>>20, "and at most this many MiB of them (at most 4096)")
			fs.Uint32Var(&f.ring, "sync-ring-bytes", maps.DefaultRingBytes, "each CPU's dirty ring, a power of two from the page size (4 KiB) to 64 MiB (applies to rings not yet created)")
			fs.StringVar(&f.testIf, "sync-test-iface", "", "also load the test-only synctest program on this interface (labs, tests)")
			fs.StringVar(&f.metrics, "metrics-addr", "", "serve Prometheus metrics on ADDR:PORT at /metrics")
			fs.StringSliceVar(&f.proxy, "proxy-iface", nil, "run the SYN proxy on this interface, client or backend side (repeat)")
			fs.StringVar(&f.secret, "proxy-secret", "", "file with the pair's shared cookie secret (at least 16 bytes; mode 0600 or stricter, owned by root or you)")
			fs.StringArrayVar(&f.services, "service", nil, "proxy service VIP:PORT=BACKEND:PORT[,BACKEND:PORT...] (repeat)")
			fs.IntVar(&f.ptune.MSS4, "proxy-mss4", d.Proxy.MSS4, "MSS the SYN proxy announces to IPv4 clients (536 to 65495; lower it for a tunnel to the backends)")
			fs.IntVar(&f.ptune.MSS6, "proxy-mss6", d.Proxy.MSS6, "MSS the SYN proxy announces to IPv6 clients (1220 to 65475)")
			fs.DurationVar(&f.ptune.SynRetry, "proxy-syn-retry", d.Proxy.SynRetry, "a backend that has not answered gets another SYN after this (100ms to 10s)")
			fs.IntVar(&f.ptune.SynTries, "proxy-syn-tries", d.Proxy.SynTries, "backend SYNs before the client gets a RST (1 to 100)")
			fs.DurationVar(&f.ptune.ChallengeInterval, "proxy-challenge-interval", d.Proxy.ChallengeInterval, "at most one challenge ACK (RFC 5961) per connection this often (10ms to 60s)")
			fs.StringArrayVar(&f.vaddrs, "vip-addr", nil, "run the VIP election; the owner holds ADDR/LEN@IFACE (repeat; all move together)")
			fs.StringSliceVar(&f.vpeers, "vip-peer", nil, "the peer's advert HOST:PORT, one per path: sync link and service network (repeat); adverts from other addresses are refused")
			fs.StringVar(&f.elect.PeerName, "vip-peer-name", "", "the peer's name (its --sync-name); adverts under another name are refused (default: the one other host certificate in --sync-certs)")
			fs.StringVar(&f.elect.Listen, "vip-listen", d.Elect.Listen, "UDP ADDR:PORT the peer's adverts arrive on")
			fs.Uint8Var(&f.elect.Priority, "vip-priority", d.Elect.Priority, "election priority, 0-255; higher wins (and settles a split brain)")
			fs.BoolVar(&f.elect.Preempt, "vip-preempt", false, "take the VIPs back from a lower-priority owner once caught up (by handover)")
			fs.DurationVar(&f.elect.Interval, "vip-interval", d.Elect.Interval, "time between adverts (10ms to 10s)")
			fs.IntVar(&f.elect.Dead, "vip-dead", d.Elect.Dead, "adverts missed before the peer counts as gone (2 to 100)")
			fs.StringVar(&f.elect.Secret, "vip-secret", "", "file with the pair's shared secret the adverts are signed with (default: --proxy-secret; mode 0600 or stricter)")
			fs.String("control-group", "", "group whose members may use tandem vip (the control socket) besides root; default: root only")
			return f
		},
		run: runUp,
	})
	register(&command{
		name:    "down",
		summary: "detach and unpin everything tandem made under --bpffs",
		long: `
A daemon serving --bpffs is stopped first (SIGTERM; down waits up to
--stop-timeout and removes nothing if it does not stop): it would put back
what down removes. Then down detaches every program tandem attached (XDP
and TCX links, its own cls_bpf filters, and a clsact qdisc only if tandem
created it and no other filter is on it), then unpins tandem's programs and maps and removes the empty
directories. Anything else under --bpffs is left alone and listed. Running
down when nothing is up is not an error. Counters are lost.

cls_bpf filters are per network namespace: run down in the namespace
where up ran.`,
		examples: "  tandem down\n  tandem down --bpffs /sys/fs/bpf/tandem-lab\n  tandem down --stop-timeout 30s\n",
		flags: func(fs *pflag.FlagSet) any {
			f := &upFlags{rootFlags: addRootFlags(fs)}
			fs.BoolVarP(&f.verbose, "verbose", "v", false, "log each step")
			fs.DurationVar(&f.stopTimeout, "stop-timeout", 10*time.Second, "how long to wait for a running daemon to stop")
			return f
		},
		run: runDown,
	})
	register(&command{
		name:    "status",
		summary: "show what is attached where, program ids, map fill and counters",
		long: `
Reads the pins under --bpffs and checks each attachment against the kernel
(is the link still on its interface, is tandem's cls_bpf filter still
there). Exit status 1 when an attachment is broken, so scripts can use it as
a health check; 0 when all is well or nothing is up. A daemon status file
that cannot be read (torn by a crash) is a warning line, not a failure.`,
		examples: "  tandem status\n  tandem status --json | jq .vips\n",
		flags:    addJSONRootFlags,
		run:      runStatus,
	})
	register(&command{
		name:    "dump",
		summary: "print one pinned map",
		args:    "MAP",
		long: `
Prints a pinned map with named columns; per-CPU values are summed. MAP is
one of: ` + strings.Join(maps.Dumpable(), ", ") + `.
sync_test is the test program's replicated map (up --sync-test-iface), in
key order without the host-local queued epoch: a primary's dump and its
standby's are byte for byte equal once the standby has caught up.
The same maps carry BTF, so bpftool shows their field names too:
  bpftool map dump pinned /sys/fs/bpf/tandem/maps/vip_gate`,
		examples: "  tandem dump vip_gate\n  tandem dump vip_stats --json\n  diff <(tandem dump sync_test --bpffs /sys/fs/bpf/a) <(tandem dump sync_test --bpffs /sys/fs/bpf/b)\n",
		flags:    addJSONRootFlags,
		run:      runDump,
	})
	register(&command{
		name:    "probe",
		summary: "report which kernel features tandem can use here and its fallbacks",
		long: `
Tries each feature tandem uses (program and map types, helpers, XDP and TCX
links, batch map operations, kernel BTF, bpffs) by loading or attaching a
trivial program, and says what tandem does where one is missing. With
--iface, also tests native XDP on those interfaces (a program that passes
every frame is attached for a moment). Exit status 1 when a required
feature is missing.`,
		examples: "  tandem probe\n  tandem probe -i eth0 --json\n",
		flags: func(fs *pflag.FlagSet) any {
			f := &probeFlags{}
			fs.StringSliceVarP(&f.ifaces, "iface", "i", nil, "also test native XDP on these interfaces")
			fs.BoolVar(&f.json, "json", false, "print JSON")
			return f
		},
		run: runProbe,
	})
	register(&command{
		name:     "version",
		summary:  "print tandem's version and build",
		examples: "  tandem version\n",
		flags:    func(fs *pflag.FlagSet) any { return nil },
		run: func(env Env, _ any, args []string) error {
			if len(args) > 0 {
				return usagef("version takes no arguments")
			}
			fmt.Fprintln(env.Stdout, versionString())
			return nil
		},
	})
}

type jsonFlags struct {
	*rootFlags
	json bool
}

func addJSONRootFlags(fs *pflag.FlagSet) any {
	f := &jsonFlags{rootFlags: addRootFlags(fs)}
	fs.BoolVar(&f.json, "json", false, "print JSON")
	return f
}

type probeFlags struct {
	ifaces []string
	json   bool
}

// Version is set at build time (-ldflags "-X .../cli.Version=v1.2.3").
var Version = "dev"

func versionString() string {
	rev := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = s.Value[:12]
			}
		}
	}
	return fmt.Sprintf("tandem %s (commit %s, %s, %s/%s)", Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func (f *upFlags) options() (loader.Options, error) {
	o, err := f.rootFlags.options()
	if err != nil {
		return o, err
	}
	if f.interval < loader.MinCheckInterval || f.interval > loader.MaxCheckInterval {
		return o, usagef("--check-interval %s: between %s and %s", f.interval, loader.MinCheckInterval, loader.MaxCheckInterval)
	}
	fs := f.fs
	if fs.Changed("iface") {
		o.Interfaces = nil
		for _, i := range f.ifaces {
			if i = strings.TrimSpace(i); i != "" {
				o.Interfaces = append(o.Interfaces, i)
			}
		}
	}
	for name, dst := range map[string]*string{"xdp-mode": &o.XDPMode, "ingress": &o.Ingress, "tc": &o.TC, "gate": &o.Gate,
		"sync-role": &o.Sync.Role, "sync-peer": &o.Sync.Peer, "sync-listen": &o.Sync.Listen, "sync-certs": &o.Sync.Certs,
		"sync-name": &o.Sync.Name, "sync-peer-name": &o.Sync.PeerName, "sync-test-iface": &o.SyncTestIface, "metrics-addr": &o.MetricsAddr,
		"control-group": &o.ControlGroup} {
		if fs.Changed(name) {
			*dst = fs.Lookup(name).Value.String()
		}
	}
	if fs.Changed("proxy-iface") {
		o.Proxy.Ifaces = nil
		for _, i := range f.proxy {
			if i = strings.TrimSpace(i); i != "" {
				o.Proxy.Ifaces = append(o.Proxy.Ifaces, i)
			}
		}
	}
	if fs.Changed("proxy-secret") {
		o.Proxy.SecretFile = f.secret
	}
	for name, set := range map[string]func(){"proxy-mss4": func() { o.Proxy.MSS4 = f.ptune.MSS4 }, "proxy-mss6": func() { o.Proxy.MSS6 = f.ptune.MSS6 },
		"proxy-syn-retry": func() { o.Proxy.SynRetry = f.ptune.SynRetry }, "proxy-syn-tries": func() { o.Proxy.SynTries = f.ptune.SynTries },
		"proxy-challenge-interval": func() { o.Proxy.ChallengeInterval = f.ptune.ChallengeInterval }} {
		if fs.Changed(name) {
			set()
		}
	}
	for _, s := range f.services {
		svc, err := loader.ParseService(s)
		if err != nil {
			return o, usageError{"--service: " + err.Error()}
		}
		o.Proxy.Services = append(o.Proxy.Services, svc)
	}
	if fs.Changed("vip-addr") {
		o.Elect.Addrs = nil
		for _, a := range f.vaddrs {
			x, err := vip.ParseAddr(a)
			if err != nil {
				return o, usageError{err.Error()}
			}
			o.Elect.Addrs = append(o.Elect.Addrs, x)
		}
	}
	if fs.Changed("vip-peer") {
		o.Elect.Peers = nil
		for _, p := range f.vpeers {
			if p = strings.TrimSpace(p); p != "" {
				o.Elect.Peers = append(o.Elect.Peers, p)
			}
		}
	}
	for name, set := range map[string]func(){
		"vip-listen": func() { o.Elect.Listen = f.elect.Listen }, "vip-priority": func() { o.Elect.Priority = f.elect.Priority },
		"vip-preempt": func() { o.Elect.Preempt = f.elect.Preempt }, "vip-interval": func() { o.Elect.Interval = f.elect.Interval },
		"vip-dead": func() { o.Elect.Dead = f.elect.Dead }, "vip-secret": func() { o.Elect.Secret = f.elect.Secret },
		"vip-peer-name": func() { o.Elect.PeerName = f.elect.PeerName },
	} {
		if fs.Changed(name) {
			set()
		}
	}
	if fs.Changed("sync-interval") {
		o.Sync.Interval = f.sync.Interval
	}
	if fs.Changed("sync-journal") {
		o.Sync.Journal = f.sync.Journal
	}
	if fs.Changed("sync-journal-mib") {
		o.Sync.JournalMiB = f.sync.JournalMiB
	}
	if fs.Changed("sync-ring-bytes") {
		o.RingBytes = f.ring
	}
	if fs.Changed("vip") {
		o.VIPs = map[netip.Addr]bool{}
		for _, v := range f.vips {
			a, owned, err := loader.ParseVIP(v)
			if err != nil {
				return o, usageError{err.Error()}
			}
			if _, dup := o.VIPs[a]; dup {
				return o, usagef("--vip %s given twice", a)
			}
			o.VIPs[a] = owned
		}
	}
	if err := o.Validate(); err != nil {
		return o, usageError{strings.ReplaceAll(err.Error(), "\n", "; ")}
	}
	return o, nil
}

func runUp(env Env, opts any, args []string) error {
	f := opts.(*upFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q (interfaces go with --iface)", args[0])
	}
	if f.interval <= 0 {
		return usagef("--check-interval must be positive")
	}
	o, err := f.options()
	if err != nil {
		return err
	}
	if _, err := controlGID(o.ControlGroup); err != nil {
		return err
	}
	log := logger(env.Stderr, f.verbose)
	o.Log = log
	if !f.once {
		return upDaemon(env, f, o)
	}
	if _, err := applyUp(env, o); err != nil {
		return err
	}
	if o.Sync.Role != "" || o.MetricsAddr != "" {
		fmt.Fprintln(env.Stdout, "note: --once runs no daemon, so no state sync and no metrics endpoint")
	}
	return nil
}

// daemon keeps the datapath as configured until told to stop. Stopping it
// leaves the datapath running. A failure to start is a startError.
func daemon(env Env, f *upFlags, o loader.Options) error {
	log := o.Log
	// The ids of the pinned maps before any handle is opened: a map
	// replaced under the daemon shows as another id (see staleMaps).
	held, err := loader.PinnedMapIDs(o.Pins)
	if err != nil {
		return startError{err}
	}
	sd := newSyncd(log)
	defer sd.close()
	if err := sd.apply(o); err != nil {
		return startError{err}
	}
	pk, err := newProxyKeeper(o, log)
	if err != nil {
		return startError{err}
	}
	defer func() { pk.close() }()
	pk.tick(time.Now())
	vd, err := newVipd(o, sd, log)
	if err != nil {
		return startError{err}
	}
	defer func() { vd.close() }()
	log.Info("daemon running; SIGTERM stops it and leaves the datapath in place (tandem down removes it)", "bpffs", o.Pins.Root, "sync", o.Sync.Role)
	t := time.NewTicker(f.interval)
	defer t.Stop()
	upkeep := time.NewTicker(time.Second)
	defer upkeep.Stop()
	for {
		select {
		case now := <-upkeep.C:
			pk.tick(now)
		case <-env.Ctx.Done():
			log.Info("daemon stopping; the datapath keeps running")
			return nil
		case err := <-sd.Done():
			return fmt.Errorf("state sync stopped: %w", err)
		case primary := <-vd.roles():
			if err := sd.setPrimary(primary, o); err != nil {
				log.Error("sync role", "primary", primary, "err", err)
			}
		case <-env.Reload:
			no, err := f.options()
			if err != nil {
				log.Error("reload: config rejected, keeping the running one", "err", err)
				continue
			}
			no.Log = log
			if _, err := loader.Up(no); err != nil {
				log.Error("reload", "err", err)
				continue
			}
			if err := sd.apply(no); err != nil {
				log.Error("reload: state sync", "err", err)
			}
			if npk, err := newProxyKeeper(no, log); err != nil {
				log.Error("reload: SYN proxy", "err", err)
			} else {
				pk.close()
				pk = npk
			}
			if !reflect.DeepEqual(no.Elect, o.Elect) || !slices.Equal(no.GateVIPs(), o.GateVIPs()) {
				vd.close()
				if vd, err = newVipd(no, sd, log); err != nil {
					log.Error("reload: election", "err", err)
				}
			}
			o = no
			if ids, err := loader.PinnedMapIDs(o.Pins); err == nil {
				held = ids
			}
			log.Info("reloaded")
		case <-t.C:
			// Maps replaced under the daemon (unpinned, or pinned anew by
			// another up): every handle moves to the pinned maps, so the
			// daemon never works on a map no program uses.
			if stale, missing, err := staleMaps(o.Pins, held); err != nil {
				log.Warn("check maps", "err", err)
			} else if len(stale) > 0 {
				log.Warn("maps replaced under the daemon; re-opening every map handle", "maps", strings.Join(stale, ","))
				if missing {
					if _, err := loader.Up(o); err != nil {
						log.Error("re-apply", "err", err)
						vd.setBroken("maps unpinned: " + err.Error())
						continue
					}
				}
				if held, err = loader.PinnedMapIDs(o.Pins); err != nil {
					log.Error("check maps", "err", err)
					continue
				}
				if err := sd.restart(o); err != nil {
					return fmt.Errorf("state sync on the new maps: %w", err)
				}
				npk, err := newProxyKeeper(o, log)
				if err != nil {
					return fmt.Errorf("SYN proxy on the new maps: %w", err)
				}
				pk.close()
				pk = npk
				pk.tick(time.Now())
				if err := vd.reopen(o); err != nil {
					return fmt.Errorf("election on the new maps: %w", err)
				}
			}
			if err := vd.repairGate(); err != nil {
				log.Warn("election: repair the VIP gate", "err", err)
			}
			problems, err := loader.Check(o)
			if err != nil {
				log.Warn("check", "err", err)
				continue
			}
			if len(problems) == 0 {
				vd.setBroken("")
				continue
			}
			for _, p := range problems {
				log.Warn("datapath broken; re-applying", "problem", p)
			}
			if _, err := loader.Up(o); err != nil {
				log.Error("re-apply", "err", err)
				// The election demotes a host that cannot repair its
				// datapath.
				vd.setBroken(strings.Join(problems, "; "))
			}
		}
	}
}

// applyUp runs loader.Up and prints what it attached and removed.
func applyUp(env Env, o loader.Options) (*loader.Result, error) {
	res, err := loader.Up(o)
	if err != nil {
		return nil, err
	}
	printAttachments(env.Stdout, res.Attachments)
	for _, r := range res.Removed {
		fmt.Fprintf(env.Stdout, "removed %s (no longer configured)\n", r)
	}
	return res, nil
}

func printAttachments(w io.Writer, as []*loader.Attachment) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IFACE\tHOOK\tVIA\tPROG\tPROG ID\tLINK ID\tNOTE")
	for _, a := range as {
		link := "-"
		if a.LinkID != 0 {
			link = fmt.Sprint(a.LinkID)
		}
		note := a.Note
		if a.Problem != "" {
			note = "PROBLEM: " + a.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", a.Iface, a.Hook, a.Via, a.Prog, a.ProgID, link, note)
	}
	tw.Flush()
}

func runDown(env Env, opts any, args []string) error {
	f := opts.(*upFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	o, err := f.rootFlags.options()
	if err != nil {
		return err
	}
	if f.stopTimeout <= 0 {
		return usagef("--stop-timeout must be positive")
	}
	// A daemon would re-apply what down removes, and keep working on maps
	// no program uses: down stops it first.
	unlock, err := stopDaemon(env, o.Pins.Root, f.stopTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	res, err := loader.Down(o.Pins, logger(env.Stderr, f.verbose))
	if res != nil {
		if len(res.Detached)+len(res.Unpinned) == 0 && err == nil {
			fmt.Fprintf(env.Stdout, "nothing of tandem's is pinned under %s\n", o.Pins.Root)
		} else {
			fmt.Fprintf(env.Stdout, "detached %d attachment(s), unpinned %d object(s) under %s\n", len(res.Detached), len(res.Unpinned), o.Pins.Root)
		}
		for _, l := range res.Left {
			fmt.Fprintf(env.Stdout, "left in place (not tandem's): %s\n", l)
		}
	}
	return err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runStatus(env Env, opts any, args []string) error {
	f := opts.(*jsonFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	o, err := f.rootFlags.options()
	if err != nil {
		return err
	}
	st, err := loader.ReadStatus(o.Pins)
	if err != nil {
		return err
	}
	ss, err := readSyncStatus(o.StateDir)
	if err != nil {
		return err
	}
	ps, err := proxyStatus(o.Pins)
	if err != nil {
		return err
	}
	if f.json {
		if err := writeJSON(env.Stdout, statusJSON{st, ss, ps}); err != nil {
			return err
		}
	} else {
		printStatus(env.Stdout, st)
		printProxyStatus(env.Stdout, ps)
		printSyncStatus(env.Stdout, ss)
	}
	if len(st.Attachments) > 0 && !st.Healthy() {
		return errors.New("an attachment is broken (see PROBLEM above); run tandem up again")
	}
	return nil
}

func printStatus(w io.Writer, st *loader.Status) {
	if len(st.Attachments) == 0 && len(st.Programs) == 0 {
		fmt.Fprintf(w, "tandem is not up under %s (start it with tandem up)\n", st.Root)
		return
	}
	fmt.Fprintf(w, "bpffs root: %s\n\nAttachments:\n", st.Root)
	printAttachments(w, st.Attachments)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPrograms:\nNAME\tID\tTAG")
	for _, p := range st.Programs {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", p.Name, p.ID, p.Tag)
	}
	fmt.Fprintln(tw, "\nMaps:\nNAME\tID\tTYPE\tFILL")
	for _, m := range st.Maps {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d/%d\n", m.Name, m.ID, m.Type, m.Entries, m.MaxEntries)
	}
	fmt.Fprintln(tw, "\nVIPs:\nVIP\tOWNED\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tDROPPED (NOT OWNER)")
	for _, v := range st.VIPs {
		c := v.Counters
		fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%d\t%d\t%d\n", v.Addr, v.Owned, c.RxPackets, c.RxBytes, c.TxPackets, c.TxBytes, c.DropNotOwner)
	}
	fmt.Fprintln(tw, "\nCounters:\nREASON\tPACKETS")
	for _, n := range sortedKeys(st.Stats) {
		fmt.Fprintf(tw, "%s\t%d\n", n, st.Stats[n])
	}
	tw.Flush()
}

func sortedKeys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortStrings(out)
	return out
}

func runDump(env Env, opts any, args []string) error {
	f := opts.(*jsonFlags)
	if len(args) != 1 {
		return usagef("name one map: %s", strings.Join(maps.Dumpable(), ", "))
	}
	if !slices.Contains(maps.Dumpable(), args[0]) {
		return usagef("unknown map %q: choose one of %s", args[0], strings.Join(maps.Dumpable(), ", "))
	}
	o, err := f.rootFlags.options()
	if err != nil {
		return err
	}
	var t *maps.Table
	if args[0] == bpf.SynctestMapSyncTest {
		if t, err = maps.DumpSyncTest(o.Pins); err != nil {
			return err
		}
	} else {
		vm, err := maps.OpenVIPMaps(o.Pins)
		if err != nil {
			return fmt.Errorf("%w (is tandem up under %s?)", err, o.Pins.Root)
		}
		defer vm.Close()
		if t, err = vm.Dump(args[0]); err != nil {
			return err
		}
	}
	if f.json {
		if t.Records == nil {
			t.Records = []map[string]any{}
		}
		return writeJSON(env.Stdout, t.Records)
	}
	fmt.Fprint(env.Stdout, maps.FormatTable(t))
	return nil
}

func runProbe(env Env, opts any, args []string) error {
	f := opts.(*probeFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	feats := loader.Probe(f.ifaces)
	missing := 0
	for _, x := range feats {
		if x.Required && !x.Available {
			missing++
		}
	}
	if f.json {
		if err := writeJSON(env.Stdout, feats); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FEATURE\tAVAILABLE\tWITHOUT IT")
		for _, x := range feats {
			yes := "yes"
			if !x.Available {
				yes = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", x.Name, yes, x.Without)
		}
		tw.Flush()
		for _, x := range feats {
			if x.Detail != "" {
				fmt.Fprintf(env.Stdout, "note: %s: %s\n", x.Name, x.Detail)
			}
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d required feature(s) missing; tandem cannot run on this kernel (run as root? see the list above)", missing)
	}
	return nil
}
