package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
)

type upFlags struct {
	*rootFlags
	xdpMode  string
	tc       string
	once     bool
	interval time.Duration
	verbose  bool
	logFmt   string
	sync     daemon.SyncOptions
	ring     uint32
	metrics  string
	vaddrs   []string
	vpeers   []string
	elect    daemon.ElectOptions
	features []func(*loader.Options) error // the registered features' flags
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
SIGHUP (it reads the config file again; under systemd it says RELOADING=1,
then READY=1 once done). A part whose new config cannot
start keeps running as it was: a new election that cannot start leaves
the running one in place, and tandem vip shows the failed reload until a
reload succeeds. SIGINT/SIGTERM (or SIGKILL) stop the daemon, never the datapath:
a later up adopts what is pinned; tandem down removes it. If a daemon
already serves --bpffs, up applies the change and leaves that daemon to it;
if it asks for other daemon options (--state-dir, --metrics-addr, --sync-*,
the --vip-* election, --proxy-secret, --control-group) it refuses before
changing anything and names them: those need a restart of the daemon.
--once applies and exits without running the daemon. Where up would have
to mount bpffs in a mount namespace that is not the host's (ip netns exec
gives a command a /sys of its own), the pins would vanish with the
command: --once refuses (enter only the network namespace, nsenter
--net=/run/netns/NAME, or mount bpffs in the host's namespace first), the
daemon warns that the datapath goes with it.

Under systemd (Type=notify, deploy/tandem.service) the daemon sends
READY=1 once the datapath is attached and, on a standby, once it has
applied a complete copy of the primary's state; STATUS= says what it
waits for. --log-format json writes one JSON object a line; the state
changes an operator acts on carry an "event" key (attach, replace,
detach, takeover, release, role, resync, resync_done, rescan, ready).

Before it attaches anything, up checks what the daemon needs (certificates,
secrets, the control group) and locks --state-dir (one daemon per state
directory). If the daemon still cannot start, up takes back what it made:
everything when nothing was pinned under --bpffs before, else the
attachments it added and the chains it swapped (a datapath that ran before
keeps running, each interface with the features it had). The daemon
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
--metrics-addr serves Prometheus metrics at /metrics: the sync's, the
election's and the datapath's counters, read at each scrape (docs/metrics.md);
tandem status shows the session and the replication lag.

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
translated: turn tx offload off on such endpoints (ethtool -K DEV tx off).
--health-check VIP:PORT=KIND checks the service's backends (tcp connect,
http or https GET, or a command; interval, timeout, rise, fall): a backend
goes down after fall failures in a row and comes back after rise passes,
each change logged once ("backend down", "backend up"). The owner's
verdicts are replicated by --sync-role; a standby uses them until it owns.
tandem service list shows each backend's health.

ESP filter: --esp-iface adds the ESP anti-replay stage to the interface's
XDP chain: ESP (protocol 50, or UDP 4500) whose sequence number is a replay
or below its SA's window, as the kernel verified it, is dropped before the
kernel decrypts it; everything else goes on. The SAs' replay state (esp_sa)
is replicated by --sync-role; tandem sa list shows it (docs/sa.md). The
daemon follows the kernel's SAs (--esp-sa-filter: all, or spi=LO-HI,
dst=PREFIX, src=PREFIX, reqid=N) into it and, on the owner, runs the replay
tracer that marks each changed SA for the sync (--esp-source: fexit, else
kprobe, else XFRM aevents); the standby's tracer is paused. Before a standby
the election makes the owner serves the VIPs, it installs the replicated
state into its kernel SAs (XFRM_MSG_NEWAE): inbound windows where the old
owner left them, outbound sequence numbers above its last by a margin of
rate x (sync interval + detection time) x --esp-margin-safety (default 2).
Synced SAs this host's kernel lacks are logged one per line and counted in
tandem sa list.


Migration control: --migrate-listen accepts migration steps (start,
blackout, switch, done, abort, status) from the drivers of live migrations:
tandem migrate on an operator's host, tandem migrate follow next to QEMU.
TLS 1.3 with mutual certificates of the --sync-certs CA; this host presents
its --sync-name certificate and admits only the names in --migrate-clients
(issue one per host with tandem certs). Anyone else is refused before a
request is read, logged and counted (tandem_migrate_clients_refused_total);
connections idle past their deadlines are closed. docs/migration.md.`,
		examples: `  tandem up -i eth0 --vip 192.0.2.10
  tandem up --config /etc/tandem/tandem.toml
  tandem up -i eth0 -i eth1 --vip 2001:db8::10 --vip 192.0.2.11=standby --once
  tandem up -i veth0 --ingress tc --tc clsact --gate monitor --once
  tandem up -i eth0 --sync-role primary --sync-peer 192.0.2.2:7400 --sync-name gw-a --sync-peer-name gw-b --metrics-addr 127.0.0.1:9474
  tandem up -i eth0 --sync-role standby --sync-listen 192.0.2.2:7400 --sync-name gw-b --sync-peer-name gw-a
  tandem up --proxy-iface eth1 --proxy-iface eth2 --proxy-secret /etc/tandem/cookie.key --service 192.0.2.10:443=10.2.0.11:443,10.2.0.12:443
  tandem up -i eth0 --sync-role auto --sync-name gw-a --migrate-listen 10.9.0.1:7402 --migrate-clients hv-1,hv-2
  tandem up -i eth1 --vip 192.0.2.10 --proxy-iface eth1,eth2 --proxy-secret /etc/tandem/cookie.key --service 192.0.2.10:443=10.2.0.11:443
  tandem up -i eth0 --vip 192.0.2.10 --esp-iface eth0
  tandem up --proxy-iface eth1,eth2 --proxy-secret /etc/tandem/cookie.key --service 192.0.2.10:80=10.2.0.11:80,10.2.0.12:80 --health-check '192.0.2.10:80=http,path=/healthz,interval=1s,fall=3,rise=2'
  tandem up --esp-iface eth0 --esp-sa-filter spi=0xc0000000-0xcfffffff --vip-addr 192.0.2.10/24@eth0 --vip-peer 10.9.0.2:7401 --vip-secret /etc/tandem/pair.key --sync-role auto --sync-peer 10.9.0.2:7400 --sync-listen 10.9.0.1:7400
`,
		flags: func(fs *pflag.FlagSet) any {
			f := &upFlags{rootFlags: addRootFlags(fs)}
			fs.StringVar(&f.xdpMode, "xdp-mode", loader.XDPAuto, "XDP mode: auto (native, else generic), native, generic")
			fs.StringVar(&f.tc, "tc", loader.TCAuto, "TC attach path: auto (tcx where available), tcx, clsact")
			fs.BoolVar(&f.once, "once", false, "apply and exit; do not run the daemon")
			fs.DurationVar(&f.interval, "check-interval", time.Second, "how often the daemon checks its attachments (100ms to 1h)")
			fs.BoolVarP(&f.verbose, "verbose", "v", false, "log debug detail")
			addLogFormat(fs, &f.logFmt)
			d := daemon.Defaults()
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
			fs.StringVar(&f.metrics, "metrics-addr", "", "serve Prometheus metrics (sync, election, datapath) on ADDR:PORT at /metrics")
			fs.StringArrayVar(&f.vaddrs, "vip-addr", nil, "run the VIP election; the owner holds ADDR/LEN@IFACE (repeat; all move together)")
			fs.StringSliceVar(&f.vpeers, "vip-peer", nil, "the peer's advert HOST:PORT, one per path: sync link and service network (repeat); adverts from other addresses are refused")
			fs.StringVar(&f.elect.PeerName, "vip-peer-name", "", "the peer's name (its --sync-name); adverts under another name are refused (default: the one other host certificate in --sync-certs)")
			fs.StringVar(&f.elect.Listen, "vip-listen", d.Elect.Listen, "UDP ADDR:PORT the peer's adverts arrive on")
			fs.Uint8Var(&f.elect.Priority, "vip-priority", d.Elect.Priority, "election priority, 0-255; higher wins (and settles a split brain)")
			fs.BoolVar(&f.elect.Preempt, "vip-preempt", false, "take the VIPs back from a lower-priority owner once caught up (by handover)")
			fs.DurationVar(&f.elect.Interval, "vip-interval", d.Elect.Interval, "time between adverts (10ms to 10s)")
			fs.IntVar(&f.elect.Dead, "vip-dead", d.Elect.Dead, "adverts missed before the peer counts as gone (2 to 100)")
			fs.StringVar(&f.elect.Secret, "vip-secret", "", "file with the pair's shared secret the adverts are signed with (default: --proxy-secret; mode 0600 or stricter)")
			fs.String("migrate-listen", "", "accept migration steps from drivers (tandem migrate follow) on ADDR:PORT, TLS 1.3 with --sync-certs' CA; empty: none")
			fs.StringSlice("migrate-clients", nil, "certificate names (of --sync-certs' CA) allowed to drive migrations over --migrate-listen, NAME,...; everyone else is refused")
			fs.StringArray("health-check", nil, "check the backends of service VIP:PORT: VIP:PORT=KIND[,interval=2s,timeout=1s,rise=2,fall=3,path=/,status=200,host=H,insecure,cmd=PATH ARGS] with KIND tcp, http, https or command (repeat; docs/synproxy.md)")
			fs.String("control-group", "", "group whose members may use tandem vip (the control socket) besides root; default: root only")
			// Each datapath feature defines its own flags (loader.Register).
			for _, ft := range loader.Features() {
				if ft.Flags != nil {
					f.features = append(f.features, ft.Flags(fs))
				}
			}
			return f
		},
		run: runUp,
	})
}

// config builds the daemon's config (the datapath's options within it):
// defaults, then the config file, then the flags the user set.
func (f *upFlags) config() (daemon.Config, error) {
	c, err := f.rootFlags.config()
	if err != nil {
		return c, err
	}
	c.CheckInterval = f.interval
	o := &c.Datapath
	fs := f.fs
	for _, apply := range f.features {
		if err := apply(o); err != nil {
			return c, usageError{err.Error()}
		}
	}
	for name, dst := range map[string]*string{"xdp-mode": &o.XDPMode, "tc": &o.TC,
		"sync-role": &c.Sync.Role, "sync-peer": &c.Sync.Peer, "sync-listen": &c.Sync.Listen, "sync-certs": &c.Sync.Certs,
		"sync-name": &c.Sync.Name, "sync-peer-name": &c.Sync.PeerName, "metrics-addr": &c.MetricsAddr,
		"control-group": &c.ControlGroup, "migrate-listen": &c.Migrate.Listen} {
		if fs.Changed(name) {
			*dst = fs.Lookup(name).Value.String()
		}
	}
	if fs.Changed("vip-addr") {
		c.Elect.Addrs = nil
		for _, a := range f.vaddrs {
			x, err := vip.ParseAddr(a)
			if err != nil {
				return c, usageError{err.Error()}
			}
			c.Elect.Addrs = append(c.Elect.Addrs, x)
		}
	}
	if fs.Changed("vip-peer") {
		c.Elect.Peers = nil
		for _, p := range f.vpeers {
			if p = strings.TrimSpace(p); p != "" {
				c.Elect.Peers = append(c.Elect.Peers, p)
			}
		}
	}
	for name, set := range map[string]func(){
		"vip-listen": func() { c.Elect.Listen = f.elect.Listen }, "vip-priority": func() { c.Elect.Priority = f.elect.Priority },
		"vip-preempt": func() { c.Elect.Preempt = f.elect.Preempt }, "vip-interval": func() { c.Elect.Interval = f.elect.Interval },
		"vip-dead": func() { c.Elect.Dead = f.elect.Dead }, "vip-secret": func() { c.Elect.Secret = f.elect.Secret },
		"vip-peer-name": func() { c.Elect.PeerName = f.elect.PeerName },
	} {
		if fs.Changed(name) {
			set()
		}
	}
	if fs.Changed("migrate-clients") {
		c.Migrate.Clients = nil
		cl, _ := fs.GetStringSlice("migrate-clients")
		for _, n := range cl {
			if n = strings.TrimSpace(n); n != "" {
				c.Migrate.Clients = append(c.Migrate.Clients, n)
			}
		}
	}
	if fs.Changed("health-check") {
		checks, _ := fs.GetStringArray("health-check")
		for _, hc := range checks {
			if err := c.ParseHealthFlag(hc); err != nil {
				return c, usageError{err.Error()}
			}
		}
	}
	if fs.Changed("sync-interval") {
		c.Sync.Interval = f.sync.Interval
	}
	if fs.Changed("sync-journal") {
		c.Sync.Journal = f.sync.Journal
	}
	if fs.Changed("sync-journal-mib") {
		c.Sync.JournalMiB = f.sync.JournalMiB
	}
	if fs.Changed("sync-ring-bytes") {
		o.RingBytes = f.ring
	}
	if err := c.Validate(); err != nil {
		return c, usageError{strings.ReplaceAll(err.Error(), "\n", "; ")}
	}
	return c, nil
}

func runUp(env Env, opts any, args []string) error {
	f := opts.(*upFlags)
	if len(args) > 0 {
		return usagef("unexpected argument %q (interfaces go with --iface)", args[0])
	}
	if f.interval <= 0 {
		return usagef("--check-interval must be positive")
	}
	c, err := f.config()
	if err != nil {
		return err
	}
	if _, err := daemon.ControlGID(c.ControlGroup); err != nil {
		return err
	}
	if c.Datapath.Log, err = loggerAs(env.Stderr, f.verbose, f.logFmt); err != nil {
		return err
	}
	if err := loader.MountTrap(c.Datapath.Pins.Root); err != nil {
		if f.once {
			return err // nothing touched yet
		}
		c.Datapath.Log.Warn("the datapath goes with this daemon: "+err.Error(), "event", "private_mount")
	}
	if !f.once {
		return upDaemon(env, f, c)
	}
	if _, err := applyUp(env, c.Options()); err != nil {
		return err
	}
	if c.Sync.Role != "" || c.MetricsAddr != "" {
		fmt.Fprintln(env.Stdout, "note: --once runs no daemon, so no state sync and no metrics endpoint")
	}
	return nil
}

// upDaemon is up without --once: apply, then run the daemon, unless a
// daemon already serves the root.
func upDaemon(env Env, f *upFlags, c daemon.Config) error {
	log := c.Datapath.Log
	d, release, err := daemon.Launch(c, func(o loader.Options) (*loader.Result, error) { return applyUp(env, o) })
	var served *daemon.ServedError
	switch {
	case errors.As(err, &served):
		return upUnderDaemon(env, c, served)
	case errors.Is(err, daemon.ErrStartedMeanwhile):
		fmt.Fprintf(env.Stdout, "a tandem daemon started on %s meanwhile; it carries on with the new programs\n", c.Datapath.Pins.Root)
		return nil
	case err != nil:
		return err
	}
	defer release()
	// SIGHUP: read the config file and the flags again and reload.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-env.Reload:
			}
			d.NotifyReload(func() error {
				nc, err := f.config()
				if err != nil {
					log.Error("reload: config rejected, keeping the running one", "err", err)
					return fmt.Errorf("config rejected: %w", err)
				}
				nc.Datapath.Log = log
				return d.Reload(nc) // it logs what failed; tandem vip shows it
			})
		}
	}()
	// Type=notify: READY=1 once attached and, on a standby, caught up.
	go d.NotifyReady(env.Ctx, 100*time.Millisecond)
	err = d.Run(env.Ctx)
	daemon.Notify("STOPPING=1\nSTATUS=stopped; the datapath keeps running from its pins\n")
	return err
}

// upUnderDaemon applies the datapath for a root a daemon already serves,
// unless the daemon-level options differ from that daemon's: those need a
// restart of the daemon, and up refuses before changing anything.
func upUnderDaemon(env Env, c daemon.Config, served *daemon.ServedError) error {
	root, pid := served.Root, served.PID
	if diff := served.Differs(c); len(diff) > 0 {
		return fmt.Errorf("the tandem daemon (pid %d) serving %s runs with another %s; that needs a restart of the daemon: stop it (kill -TERM %d; the datapath keeps running) and run this up again", pid, root, strings.Join(diff, ", "), pid)
	}
	if _, err := applyUp(env, c.Options()); err != nil {
		return err
	}
	who := "a tandem daemon"
	if pid > 0 {
		who = fmt.Sprintf("a tandem daemon (pid %d)", pid)
	}
	fmt.Fprintf(env.Stdout, "%s already serves %s; it carries on with the new programs\n", who, root)
	if served.Info == nil {
		fmt.Fprintln(env.Stdout, "note: its options could not be read; sync, metrics, election and state-dir options of this up were not applied")
	}
	if len(c.Health) > 0 {
		// The checks are the daemon's: it reads them at its start and on
		// SIGHUP (its own flags and the config file), not from this up.
		fmt.Fprintf(env.Stdout, "note: the daemon keeps its health checks; kill -HUP %d applies the config file's [proxy.service.check], a restart new --health-check flags\n", pid)
	}
	return nil
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
