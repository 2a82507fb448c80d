package loader

import (
	"github.com/spf13/pflag"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/synctest"
)

// The test-only synctest program (bpf/synctest.c): UDP commands to its
// interface change entries of a replicated test map, so labs and tests
// drive the state sync with real packets. It parses the frame itself and
// claims what reaches it, so it is the last stage of its chain.
//
// The test program's map is registered here, with the lab-only code that
// loads it, not in the production lists of the maps package.
func init() {
	synctest.Register()
	Register(&Feature{
		Name:     "synctest",
		File:     "synctest.c",
		TestOnly: true,
		Slot:     chain.SlotSynctest,
		Spec:     bpf.LoadSynctest,
		XDP:      bpf.SynctestProgXdpSynctest,
		Ifaces: func(o *Options) []string {
			if o.SyncTestIface == "" {
				return nil
			}
			return []string{o.SyncTestIface}
		},
		Flags: func(fs *pflag.FlagSet) func(o *Options) error {
			iface := fs.String("sync-test-iface", "", "test only: also load the synctest program on this interface (labs, tests)")
			return func(o *Options) error {
				if fs.Changed("sync-test-iface") {
					o.SyncTestIface = *iface
				}
				return nil
			}
		},
		Prepare: prepareRings(bpf.SynctestMapSyncRings),
		Setup:   setupRings,
	})
}

func (o *Options) ringBytes() uint32 {
	if o.RingBytes == 0 {
		return maps.DefaultRingBytes
	}
	return o.RingBytes
}
