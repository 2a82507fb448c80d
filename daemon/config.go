package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/migrate/remote"
	"github.com/tandem-net/tandem/syncer"
)

// Config is everything the daemon runs with: the datapath it keeps
// (loader.Options, which Up reads) and what only the daemon does: the
// state sync, the VIP election, its state directory, metrics and control
// socket. The seam: datapath fields live in loader.Options, daemon
// fields here.
type Config struct {
	Datapath      loader.Options
	StateDir      string // the daemon's sync metadata, status and control socket
	MetricsAddr   string // the daemon's Prometheus endpoint; "": none
	ControlGroup  string // group whose members may use the control socket; "": root only
	CheckInterval time.Duration
	Sync          SyncOptions
	Elect         ElectOptions
	Migrate       MigrateOptions
	// Health are the backend checks, by service VIP:port ([proxy.service]
	// check, --health-check); healthd runs them.
	Health map[netip.AddrPort]health.Check
	// HealthObserver is told each backend's verdict in use (health.go's
	// healthd): the backend choice is built from it. Not from the config
	// file: the code that builds the choice sets it.
	HealthObserver health.Observer
}

// MigrateOptions configure the migration control listener: drivers of
// migrations (tandem migrate, the QMP follower) reach the daemon there
// over mutual TLS with the sync's certificates (Sync.Certs, Sync.Name).
type MigrateOptions struct {
	Listen  string   // ADDR:PORT; "": no remote control
	Clients []string // certificate names of the pair's CA allowed to drive migrations
	// Controller carries the steps out (the migration datapath's); nil:
	// the listener refuses every step (CodeNoDatapath). Not from the
	// config file: the code that builds the datapath sets it.
	Controller remote.Controller
}

// Sync roles accepted by --sync-role ("" runs no sync).
const (
	SyncPrimary = "primary"
	SyncStandby = "standby"
	// SyncAuto follows VIP ownership: primary while this host owns the
	// VIPs, standby otherwise.
	SyncAuto = "auto"
)

// SyncOptions configure the state sync the daemon runs.
type SyncOptions struct {
	Role       string // "", primary, standby, auto
	Peer       string // primary: the standby's HOST:PORT
	Listen     string // standby: ADDR:PORT to accept the primary on
	Certs      string // directory laid out as tandem certs makes it
	Name       string // this host's certificate name; "": the hostname
	PeerName   string // the peer's certificate name, the only one admitted; "": the other host certificate in Certs
	Interval   time.Duration
	Journal    int
	JournalMiB int
}

// DefaultStateDir holds the daemon's sync metadata and status.
const DefaultStateDir = "/var/lib/tandem"

// Bounds of the daemon's timers and sizes. Below a minimum a timer keeps
// a CPU busy for nothing; above a maximum a value pins daemon memory no
// pair needs, or makes failover meaningless.
const (
	MinCheckInterval  = 100 * time.Millisecond // up --check-interval
	MaxCheckInterval  = time.Hour
	MinSyncInterval   = time.Millisecond // --sync-interval
	MaxSyncInterval   = 10 * time.Second
	MinElectInterval  = 10 * time.Millisecond // --vip-interval
	MaxElectInterval  = 10 * time.Second
	MinElectDead      = 2 // --vip-dead
	MaxElectDead      = 100
	MaxJournalEntries = 1 << 24 // --sync-journal
	MaxJournalMiB     = 4096    // --sync-journal-mib
)

// Defaults returns the config tandem uses when nothing says otherwise.
func Defaults() Config {
	return Config{
		Datapath:      loader.Defaults(),
		StateDir:      DefaultStateDir,
		CheckInterval: time.Second,
		Elect:         ElectOptions{Listen: DefaultElectListen, Priority: 100, Interval: 100 * time.Millisecond, Dead: 3},
		Sync: SyncOptions{
			Listen:   "0.0.0.0:7400",
			Certs:    "/etc/tandem/certs",
			Interval: 10 * time.Millisecond,
		},
	}
}

// ApplyFile lays a config file's values over c: the datapath's through
// loader, then the daemon's ([sync], [election], state_dir, metrics_addr,
// control_group). Its errors are *loader.ConfigError.
func (c *Config) ApplyFile(fc *loader.FileConfig) error {
	// Both halves run whatever the other found, so every bad value is
	// reported (tandem config check lists them all).
	var errs []error
	if err := fc.Apply(&c.Datapath); err != nil {
		errs = append(errs, err)
	}
	if err := c.applyFile(fc); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return &loader.ConfigError{Err: errors.Join(errs...)}
	}
	return nil
}

func (c *Config) applyFile(fc *loader.FileConfig) error {
	var errs []error
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&c.StateDir, fc.StateDir)
	set(&c.MetricsAddr, fc.MetricsAddr)
	set(&c.ControlGroup, fc.ControlGroup)
	set(&c.Sync.Role, fc.Sync.Role)
	set(&c.Sync.Peer, fc.Sync.Peer)
	set(&c.Sync.Listen, fc.Sync.Listen)
	set(&c.Sync.Certs, fc.Sync.Certs)
	set(&c.Sync.Name, fc.Sync.Name)
	set(&c.Sync.PeerName, fc.Sync.PeerName)
	if fc.Sync.Interval != "" {
		d, err := time.ParseDuration(fc.Sync.Interval)
		if err != nil {
			errs = append(errs, fmt.Errorf("config: sync.interval %q: %v", fc.Sync.Interval, err))
		} else {
			c.Sync.Interval = d
		}
	}
	if fc.Sync.Journal != 0 {
		c.Sync.Journal = fc.Sync.Journal
	}
	if fc.Sync.JournalMiB != 0 {
		c.Sync.JournalMiB = fc.Sync.JournalMiB
	}
	set(&c.Migrate.Listen, fc.Migrate.Listen)
	if len(fc.Migrate.Clients) > 0 {
		c.Migrate.Clients = slices.Clone(fc.Migrate.Clients)
	}
	if err := c.applyHealthFile(fc); err != nil {
		errs = append(errs, err)
	}
	if err := applyElect(fc.Election, &c.Elect); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Validate checks the choices, not the machine: the datapath's, then the
// daemon's.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Datapath.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.CheckInterval < MinCheckInterval || c.CheckInterval > MaxCheckInterval {
		errs = append(errs, fmt.Errorf("--check-interval %s: between %s and %s", c.CheckInterval, MinCheckInterval, MaxCheckInterval))
	}
	s := c.Sync
	switch s.Role {
	case "", SyncPrimary, SyncStandby, SyncAuto:
	default:
		errs = append(errs, fmt.Errorf("--sync-role %q: choose one of %v", s.Role, []string{SyncPrimary, SyncStandby, SyncAuto}))
	}
	errs = append(errs, c.validateElect()...)
	if s.Role == SyncPrimary && s.Peer == "" {
		errs = append(errs, errors.New("--sync-role primary: name the standby with --sync-peer HOST:PORT"))
	}
	if s.Role == SyncStandby && s.Listen == "" {
		errs = append(errs, errors.New("--sync-role standby: give --sync-listen ADDR:PORT"))
	}
	if s.Interval < MinSyncInterval || s.Interval > MaxSyncInterval {
		errs = append(errs, fmt.Errorf("--sync-interval %s: between %s and %s", s.Interval, MinSyncInterval, MaxSyncInterval))
	}
	if s.Journal < 0 || s.JournalMiB < 0 {
		errs = append(errs, errors.New("--sync-journal and --sync-journal-mib cannot be negative"))
	}
	if s.Journal > MaxJournalEntries {
		errs = append(errs, fmt.Errorf("--sync-journal %d: at most %d deltas", s.Journal, MaxJournalEntries))
	}
	if s.JournalMiB > MaxJournalMiB {
		errs = append(errs, fmt.Errorf("--sync-journal-mib %d: at most %d", s.JournalMiB, MaxJournalMiB))
	}
	if c.Migrate.Listen != "" && len(c.Migrate.Clients) == 0 {
		errs = append(errs, errors.New("--migrate-listen: name the certificates allowed to drive migrations with --migrate-clients NAME,... (issue them with tandem certs)"))
	}
	for _, n := range c.Migrate.Clients {
		if n == "" || strings.ContainsAny(n, "/ ") {
			errs = append(errs, fmt.Errorf("--migrate-clients: %q is not a certificate name", n))
		}
	}
	for _, fa := range [][2]string{{"sync-peer", s.Peer}, {"sync-listen", s.Listen}, {"metrics-addr", c.MetricsAddr}, {"migrate-listen", c.Migrate.Listen}} {
		if fa[1] == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(fa[1]); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: want HOST:PORT", fa[0], fa[1]))
		}
	}
	return errors.Join(errs...)
}

// GateVIPs are the addresses the VIP gate opens for the owner: the
// addresses it holds and the SYN proxy's service VIPs. Empty without an
// election.
func (c *Config) GateVIPs() []netip.Addr {
	if len(c.Elect.Addrs) == 0 {
		return nil
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		if a = a.Unmap(); !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, a := range c.Elect.Addrs {
		add(a.Prefix.Addr())
	}
	for _, s := range c.Datapath.Proxy.Services {
		add(s.VIP.Addr())
	}
	return out
}

// Options are the datapath options Up applies for c: its own, with the
// gate entries a running election owns left to it.
func (c *Config) Options() loader.Options {
	o := c.Datapath
	o.ElectedVIPs = c.GateVIPs()
	return o
}

// Preflight checks what the daemon will need and can be checked before
// anything is attached: certificates, secrets, the control group.
func (c *Config) Preflight() error {
	if _, err := ControlGID(c.ControlGroup); err != nil {
		return err
	}
	if c.Sync.Role != "" {
		if _, _, _, _, err := SyncTLS(*c); err != nil {
			return err
		}
	}
	if c.Migrate.Listen != "" {
		if _, err := MigrateTLS(*c); err != nil {
			return err
		}
	}
	if len(c.Datapath.Proxy.Ifaces) > 0 {
		if _, err := loader.ReadSecret(c.Datapath.Proxy.SecretFile); err != nil {
			return err
		}
	}
	if len(c.Elect.Addrs) > 0 {
		if _, err := loader.ReadSecret(c.Elect.SecretFile(c)); err != nil {
			return fmt.Errorf("election: %w", err)
		}
	}
	return nil
}

// UsageError is a config value that cannot be right wherever tandem runs
// (the CLI exits 2 for it).
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// ControlGID resolves --control-group; -1 when none is set.
func ControlGID(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			g, err = user.LookupGroupId(name)
		}
	}
	if err != nil {
		return -1, UsageError{fmt.Sprintf("--control-group %q: no such group (create it with groupadd %s, or name another)", name, name)}
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("--control-group %q: gid %q: %w", name, g.Gid, err)
	}
	return gid, nil
}

// SyncTLS is the sync's TLS setup from c: this host's certificate name
// (--sync-name, else the hostname), the peer's (--sync-peer-name, else
// the one other host certificate in --sync-certs: inferred), and the
// config that admits exactly that peer. Errors say how to fix them.
func SyncTLS(c Config) (name, peer string, inferred bool, cfg *tls.Config, err error) {
	s := c.Sync
	name = s.Name
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return "", "", false, nil, fmt.Errorf("sync: no --sync-name and no hostname: %w", err)
		}
	}
	peer = s.PeerName
	if peer == "" {
		// The lab layout of tandem certs: this host's and the peer's.
		if peer, err = syncer.PeerName(s.Certs, name); err != nil {
			return "", "", false, nil, fmt.Errorf("sync: %w (create lab certificates with tandem certs --dir %s %s PEER, or name the peer with --sync-peer-name)", err, s.Certs, name)
		}
		inferred = true
	}
	if cfg, err = syncer.TLSConfig(s.Certs, name, peer); err != nil {
		return "", "", false, nil, fmt.Errorf("sync: %w (create lab certificates with tandem certs --dir %s %s)", err, s.Certs, name)
	}
	return name, peer, inferred, cfg, nil
}

// MigrateTLS is the migration control listener's TLS config from c: it
// presents this host's sync certificate and admits only certificates of
// the pair's CA named in Migrate.Clients.
func MigrateTLS(c Config) (*tls.Config, error) {
	name := c.Sync.Name
	if name == "" {
		var err error
		if name, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("migrate: no --sync-name and no hostname: %w", err)
		}
	}
	cfg, err := syncer.TLSConfigAllowing(c.Sync.Certs, name, c.Migrate.Clients)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w (the listener uses --sync-certs and --sync-name; issue certificates with tandem certs --dir %s %s FOLLOWER)", err, c.Sync.Certs, name)
	}
	return cfg, nil
}

func (c *Config) log() *slog.Logger {
	if c.Datapath.Log != nil {
		return c.Datapath.Log
	}
	return slog.New(slog.DiscardHandler)
}
