package loader

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// MigrateOptions configure migration redirects (bpf/migrate.c,
// docs/migration.md).
type MigrateOptions struct {
	Ifaces      []string // interfaces where endpoints' packets arrive
	HoldBytes   uint32   // the hold ring's size; 0: DefaultHoldBytes
	HoldPackets uint64   // packets held per endpoint at most; 0: DefaultHoldPackets
	// EncapSrc: this host's source address for routed (IP-in-IP)
	// locations, at most one IPv4 and one IPv6. A routed location of a
	// family without one is not reached (counted no_route).
	EncapSrc []string
}

// MigrateConfig is the [migrate] table.
type MigrateConfig struct {
	// The migration control listener (daemon.Config.Migrate).
	Listen       string   `toml:"listen"`
	Clients      []string `toml:"clients"`
	Interfaces   []string `toml:"interfaces"`
	HoldBytes    uint32   `toml:"hold_bytes"`
	HoldPackets  uint64   `toml:"hold_packets"`
	EncapSources []string `toml:"encap_sources"`
}

// The hold's defaults: 32 MiB holds a 300 ms blackout of a 100k packets/s
// stream of 1 KiB frames; 65,536 packets per endpoint is 300 ms at ~200k
// packets/s.
const (
	DefaultHoldBytes   = 32 << 20
	DefaultHoldPackets = 65536
	minHoldBytes       = 64 << 10
	maxHoldBytes       = 1 << 30
)

// Migration redirects: a stage after the gate (a moving endpoint's packets
// go where the endpoint is before any local service could answer), its
// replicated endpoint and migration tables, and the hold ring the daemon
// flushes.
func init() {
	Register(&Feature{
		Name:   "migrate",
		File:   "migrate.c",
		Slot:   chain.SlotMigrate,
		Spec:   bpf.LoadMigrate,
		XDP:    bpf.MigrateProgXdpMigrate,
		Ifaces: func(o *Options) []string { return o.Migrate.Ifaces },
		Flags:  migrateFlags,
		Validate: func(o *Options) []error {
			var errs []error
			seen := map[string]bool{}
			for _, i := range o.Migrate.Ifaces {
				if i == o.SyncTestIface {
					errs = append(errs, fmt.Errorf("interface %s: both --sync-test-iface and --migrate-iface", i))
				}
				if seen[i] {
					errs = append(errs, fmt.Errorf("--migrate-iface %s named twice", i))
				}
				seen[i] = true
			}
			b := o.Migrate.holdBytes()
			if b < minHoldBytes || b > maxHoldBytes || b&(b-1) != 0 {
				errs = append(errs, fmt.Errorf("--migrate-hold-bytes %d: want a power of two from %d to %d", b, minHoldBytes, maxHoldBytes))
			}
			if o.Migrate.HoldPackets > 1<<24 {
				errs = append(errs, fmt.Errorf("--migrate-hold-packets %d: at most %d", o.Migrate.HoldPackets, 1<<24))
			}
			if _, _, err := o.Migrate.encapSrc(); err != nil {
				errs = append(errs, err)
			}
			return errs
		},
		Synced: []maps.SyncedMap{
			{ID: uint32(bpf.MigrateSyncMapIdSYNC_MAP_ENDPOINT), Name: bpf.MigrateMapMigEndpoints},
			{ID: uint32(bpf.MigrateSyncMapIdSYNC_MAP_MIGRATION), Name: bpf.MigrateMapMigState},
		},
		Counters: func(pins maps.Pins) (map[string]uint64, error) {
			m, err := maps.OpenMigrate(pins)
			if err != nil {
				return nil, err
			}
			defer m.Close()
			return m.MigStats()
		},
		Prepare: func(o *Options, spec *ebpf.CollectionSpec) error {
			if err := prepareRings(bpf.MigrateMapSyncRings)(o, spec); err != nil {
				return err
			}
			spec.Maps[bpf.MigrateMapMigHold].MaxEntries = o.Migrate.holdBytes()
			// A pinned hold ring keeps its size (and the packets it holds)
			// across ups: a ring cannot be resized in place.
			if old, err := ebpf.LoadPinnedMap(o.Pins.Map(bpf.MigrateMapMigHold), nil); err == nil {
				spec.Maps[bpf.MigrateMapMigHold].MaxEntries = old.MaxEntries()
				old.Close()
			}
			n := o.Migrate.HoldPackets
			if n == 0 {
				n = DefaultHoldPackets
			}
			if err := spec.Variables[bpf.MigrateVarCfgHoldPackets].Set(n); err != nil {
				return fmt.Errorf("set hold packets: %w", err)
			}
			src4, src6, err := o.Migrate.encapSrc()
			if err != nil {
				return err
			}
			// Both are the address's bytes in memory, as the outer
			// header takes them.
			if err := spec.Variables[bpf.MigrateVarCfgEncapSrc4].Set(src4); err != nil {
				return fmt.Errorf("set encap source: %w", err)
			}
			if err := spec.Variables[bpf.MigrateVarCfgEncapSrc6].Set(src6); err != nil {
				return fmt.Errorf("set encap source: %w", err)
			}
			return nil
		},
		Setup: setupRings,
	})
}

func (m MigrateOptions) holdBytes() uint32 {
	if m.HoldBytes == 0 {
		return DefaultHoldBytes
	}
	return m.HoldBytes
}

// encapSrc parses EncapSrc: the IPv4 and the IPv6 source (zero: none).
func (m MigrateOptions) encapSrc() (src4 [4]byte, src6 [16]byte, err error) {
	var have4, have6 bool
	for _, s := range m.EncapSrc {
		a, perr := netip.ParseAddr(s)
		if perr != nil || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			return src4, src6, fmt.Errorf("--migrate-encap-src %q: want a unicast address of this host", s)
		}
		a = a.Unmap()
		if a.Is4() {
			if have4 {
				return src4, src6, fmt.Errorf("--migrate-encap-src: two IPv4 sources (%s and %s): give one per family", netip.AddrFrom4(src4), a)
			}
			src4, have4 = a.As4(), true
		} else {
			if have6 {
				return src4, src6, fmt.Errorf("--migrate-encap-src: two IPv6 sources (%s and %s): give one per family", netip.AddrFrom16(src6), a)
			}
			src6, have6 = a.As16(), true
		}
	}
	return src4, src6, nil
}

func migrateFlags(fs *pflag.FlagSet) func(o *Options) error {
	ifaces := fs.StringSlice("migrate-iface", nil, "run migration redirects on this interface (repeat, or comma-separate): endpoints' packets arriving there go where the endpoint is (tandem endpoint, tandem migrate)")
	bytes := fs.Uint32("migrate-hold-bytes", DefaultHoldBytes, "the hold ring for packets of endpoints in a blackout: a power of two (bytes); a pinned hold ring keeps its size (and what it holds) until tandem down")
	pkts := fs.Uint64("migrate-hold-packets", DefaultHoldPackets, "packets held per endpoint at most; the newest beyond it are dropped and counted")
	encSrc := fs.StringSlice("migrate-encap-src", nil, "this host's source address for routed endpoint locations (tandem endpoint set EP ipip:HOST): the outer IP-in-IP header's; one per family (repeat, or comma-separate)")
	return func(o *Options) error {
		if fs.Changed("migrate-iface") {
			o.Migrate.Ifaces = trimmed(*ifaces)
		}
		// 0 in a config file is the default (TOML cannot tell it from
		// absent); on the command line it is a mistake (no bound, or "no
		// hold"?), not a silent default.
		if fs.Changed("migrate-hold-bytes") {
			if *bytes == 0 {
				return fmt.Errorf("--migrate-hold-bytes 0: want a power of two from %d to %d (default %d)", minHoldBytes, maxHoldBytes, DefaultHoldBytes)
			}
			o.Migrate.HoldBytes = *bytes
		}
		if fs.Changed("migrate-hold-packets") {
			if *pkts == 0 {
				return fmt.Errorf("--migrate-hold-packets 0: at least 1 (default %d; a move without a hold leaves out its blackout step)", DefaultHoldPackets)
			}
			o.Migrate.HoldPackets = *pkts
		}
		if fs.Changed("migrate-encap-src") {
			o.Migrate.EncapSrc = trimmed(*encSrc)
		}
		return nil
	}
}
