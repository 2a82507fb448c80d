package loader

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/xfrm"
)

// ESPOptions configure the ESP anti-replay pre-filter (bpf/esp.c).
type ESPOptions struct {
	// Ifaces get the ESP stage (slot 2 of their chain): the interfaces
	// inbound ESP arrives on (the VIP's). They may carry the gate too.
	Ifaces []string
	// SAFilter selects the kernel SAs the daemon syncs (xfrm.ParseFilter:
	// "all", or spi=LO-HI,dst=PREFIX,src=PREFIX,reqid=N); "": all.
	SAFilter string
	// Source is where the daemon takes the replay state from: "" or
	// "auto" (the tracer with fexit, else kprobes, else XFRM aevents), or
	// ESPSourceFexit, ESPSourceKprobe, ESPSourceAEvents to insist on one.
	Source string
	// MarginSafety is the takeover margin's factor for bursts above the
	// measured outbound rate (xfrm.Margin); 0: DefaultMarginSafety.
	MarginSafety float64
}

// DefaultMarginSafety is the takeover margin's default safety factor.
const DefaultMarginSafety = 2

// apply lays the [esp] table's daemon keys over o.
func (c ESPConfig) apply(o *ESPOptions) {
	if c.SAFilter != "" {
		o.SAFilter = c.SAFilter
	}
	if c.Source != "" {
		o.Source = c.Source
	}
	if c.MarginSafety != 0 {
		o.MarginSafety = c.MarginSafety
	}
}

// Safety is MarginSafety with its default.
func (o ESPOptions) Safety() float64 {
	if o.MarginSafety == 0 {
		return DefaultMarginSafety
	}
	return o.MarginSafety
}

// The ESP pre-filter (bpf/esp.c, docs/sa.md): its XDP stage drops
// replayed and stale ESP against the SAs' replay state in esp_sa, which
// user space fills from the kernel's verified XFRM state (maps.SAMaps.PutSA)
// and the state sync replicates (SYNC_MAP_SA).
func init() {
	Register(&Feature{
		Name:   "esp",
		File:   "esp.c",
		Slot:   chain.SlotESP,
		Spec:   bpf.LoadEsp,
		XDP:    bpf.EspProgXdpEsp,
		Ifaces: func(o *Options) []string { return o.ESP.Ifaces },
		Flags: func(fs *pflag.FlagSet) func(o *Options) error {
			ifaces := fs.StringSlice("esp-iface", nil, "run the ESP anti-replay filter on this interface, where inbound ESP arrives (repeat); it may carry the gate and the SYN proxy too")
			filter := fs.String("esp-sa-filter", "", "the kernel SAs the daemon syncs: all (default), or comma-separated spi=LO-HI, dst=PREFIX, src=PREFIX, reqid=N (all must match)")
			source := fs.String("esp-source", "", "where the daemon takes SA replay state from: auto (fexit, else kprobe, else aevents; default), fexit, kprobe or aevents")
			safety := fs.Float64("esp-margin-safety", 0, "takeover: the outbound margin's factor for bursts above the measured rate, at least 1 (default 2; docs/sa.md)")
			return func(o *Options) error {
				if fs.Changed("esp-iface") {
					o.ESP.Ifaces = trimmed(*ifaces)
				}
				if fs.Changed("esp-sa-filter") {
					o.ESP.SAFilter = *filter
				}
				if fs.Changed("esp-source") {
					o.ESP.Source = *source
				}
				if fs.Changed("esp-margin-safety") {
					o.ESP.MarginSafety = *safety
				}
				return nil
			}
		},
		Validate: func(o *Options) []error {
			var errs []error
			seen := map[string]bool{}
			for _, i := range o.ESP.Ifaces {
				if i == o.SyncTestIface {
					errs = append(errs, fmt.Errorf("interface %s: both --sync-test-iface and --esp-iface", i))
				}
				if seen[i] {
					errs = append(errs, fmt.Errorf("--esp-iface %s named twice", i))
				}
				seen[i] = true
			}
			if _, err := xfrm.ParseFilter(o.ESP.SAFilter); err != nil {
				errs = append(errs, fmt.Errorf("--esp-sa-filter: %w", err))
			}
			switch o.ESP.Source {
			case "", "auto", ESPSourceFexit, ESPSourceKprobe, ESPSourceAEvents:
			default:
				errs = append(errs, fmt.Errorf("--esp-source %q: want auto, %s, %s or %s", o.ESP.Source, ESPSourceFexit, ESPSourceKprobe, ESPSourceAEvents))
			}
			if o.ESP.MarginSafety != 0 && !(o.ESP.MarginSafety >= 1 && o.ESP.MarginSafety <= 100) {
				errs = append(errs, fmt.Errorf("--esp-margin-safety %g: between 1 and 100", o.ESP.MarginSafety))
			}
			return errs
		},
		Synced: []maps.SyncedMap{{ID: uint32(bpf.EspSyncMapIdSYNC_MAP_SA), Name: bpf.EspMapEspSa}},
		Counters: func(pins maps.Pins) (map[string]uint64, error) {
			m, err := maps.OpenSAMaps(pins)
			if err != nil {
				return nil, err
			}
			defer m.Close()
			return m.ESPStats()
		},
		Prepare: prepareRings(bpf.EspMapSyncRings),
		Setup:   setupRings,
	})
}
