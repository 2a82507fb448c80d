// Package synctest is the Go side of the test-only synctest program
// (bpf/synctest.c): its map's registration with the state sync and with
// `tandem dump`, and a reader for it. Production code (maps, syncer) does
// not name the test program; the loader's lab-only --sync-test-iface code
// calls Register.
package synctest

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
)

// MapName is the pin name of the test program's replicated map.
const MapName = bpf.SynctestMapSyncTest

// Register lists sync_test among the synced maps (so a daemon replicates
// it when it is pinned) and makes `tandem dump sync_test` render it.
func Register() {
	maps.RegisterSynced(maps.SyncedMap{ID: uint32(bpf.SyncSyncMapIdSYNC_MAP_TEST), Name: MapName})
	maps.RegisterDump(MapName, Dump)
}

// Entry is one entry of the test program's sync_test map, without the
// queued epoch: that is each host's own business, so a primary's entries
// and its standby's are equal when their states are.
type Entry struct {
	Key                     uint32
	Version, Value, Updates uint64
}

// Read reads a sync_test map with batch lookups, in key order.
func Read(m *ebpf.Map) ([]Entry, error) {
	var all []Entry
	keys := make([]uint32, 4096)
	vals := make([]bpf.SynctestSynctestVal, 4096)
	var c ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&c, keys, vals, nil)
		for i := range n {
			all = append(all, Entry{keys[i], vals[i].Sync.Version, vals[i].Value, vals[i].Updates})
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", MapName, err)
		}
	}
	slices.SortFunc(all, func(a, b Entry) int { return cmp.Compare(a.Key, b.Key) })
	return all, nil
}

// Dump renders the pinned sync_test map under pins in key order.
func Dump(pins maps.Pins) (*maps.Table, error) {
	m, err := ebpf.LoadPinnedMap(pins.Map(MapName), nil)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (is tandem up with --sync-test-iface?)", pins.Map(MapName), err)
	}
	defer m.Close()
	all, err := Read(m)
	if err != nil {
		return nil, err
	}
	t := &maps.Table{Map: MapName, Columns: []string{"key", "version", "value", "updates"}}
	for _, e := range all {
		t.Add(map[string]any{"key": e.Key, "version": e.Version, "value": e.Value, "updates": e.Updates})
	}
	return t, nil
}
