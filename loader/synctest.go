package loader

import (
	"fmt"
	"net"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/synctest"
)

// The test program's map is registered here, with the lab-only code that
// loads it, not in the production lists of the maps package.
func init() { synctest.Register() }

// upSyncTest loads the test-only synctest program (bpf/synctest.c) with
// the shared sync maps pinned by name, gives every CPU its dirty ring, and
// attaches the program to iface's XDP hook. Labs and tests use it to drive
// the state sync with real packets.
func upSyncTest(o Options, iface *net.Interface) (*Attachment, error) {
	spec, err := bpf.LoadSynctest()
	if err != nil {
		return nil, fmt.Errorf("read embedded programs: %w", err)
	}
	inner, err := maps.RingSpec(o.ringBytes())
	if err != nil {
		return nil, err
	}
	spec.Maps[bpf.SynctestMapSyncRings].InnerMap = inner
	var objs bpf.SynctestObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: o.Pins.MapsDir()}}); err != nil {
		return nil, loadError(err, o.Pins)
	}
	defer objs.Close()
	// The rings exist from the start, daemon or not: until a daemon drains
	// them, a full ring is counted as an overflow and the daemon rescans.
	s := &maps.SyncMaps{Rings: objs.SyncRings, Epoch: objs.SyncEpoch, Overflow: objs.SyncOverflow}
	if err := s.SetupRings(inner); err != nil {
		return nil, err
	}
	s.Close()
	a, err := attachXDP(o.Pins, iface, objs.XdpSynctest, o.XDPMode)
	if err != nil {
		return nil, err
	}
	for name, p := range map[string]*ebpf.Program{
		bpf.SynctestProgXdpSynctest:       objs.XdpSynctest,
		bpf.SynctestProgSyncReadSyncTest:  objs.SyncReadSyncTest,
		bpf.SynctestProgSyncWriteSyncTest: objs.SyncWriteSyncTest,
	} {
		if err := pinReplace(p, o.Pins.Prog(name)); err != nil {
			return a, err
		}
	}
	return a, nil
}

func (o *Options) ringBytes() uint32 {
	if o.RingBytes == 0 {
		return maps.DefaultRingBytes
	}
	return o.RingBytes
}
