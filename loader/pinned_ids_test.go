package loader_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestPinnedMapIDs: the ids PinnedMapIDs reads with bare bpf(2) calls are
// the maps' own (ebpf.Map.Info), a replaced pin shows the new map's id,
// and what is not a map pin is left out.
func TestPinnedMapIDs(t *testing.T) {
	testenv.RequireRoot(t)
	root, err := os.MkdirTemp("/sys/fs/bpf", "tandem-ids-")
	if err != nil {
		t.Skipf("bpffs at /sys/fs/bpf: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	pins := maps.Pins{Root: root}
	if err := os.MkdirAll(filepath.Join(pins.MapsDir(), "a-directory"), 0o700); err != nil {
		t.Fatal(err)
	}
	newMap := func(name string) ebpf.MapID {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		os.Remove(pins.Map(name))
		if err := m.Pin(pins.Map(name)); err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	want := map[string]ebpf.MapID{"one": newMap("one"), "two": newMap("two")}
	for round := range 2 {
		got, err := loader.PinnedMapIDs(pins)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("round %d: %v, want %v", round, got, want)
		}
		for name, id := range want {
			if got[name] != id || id == 0 {
				t.Errorf("round %d: %s has id %d, want %d", round, name, got[name], id)
			}
		}
		want["two"] = newMap("two") // replaced
	}
}
