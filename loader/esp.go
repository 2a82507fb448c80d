package loader

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
)

// ESPOptions configure the ESP anti-replay pre-filter (bpf/esp.c).
type ESPOptions struct {
	// Ifaces get the ESP stage (slot 2 of their chain): the interfaces
	// inbound ESP arrives on (the VIP's). They may carry the gate too.
	Ifaces []string
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
			return func(o *Options) error {
				if fs.Changed("esp-iface") {
					o.ESP.Ifaces = trimmed(*ifaces)
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
