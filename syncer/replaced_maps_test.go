package syncer_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestStandbyFollowsReplacedMaps: the standby's replicated map is unpinned
// and pinned anew by a second up while its daemon runs. The daemon moves
// its sync node to the pinned map: the primary's state reaches the map the
// programs use, not the one nobody uses any more.
func TestStandbyFollowsReplacedMaps(t *testing.T) {
	p := newDaemonPair(t)
	p.start("b", "--check-interval", "100ms")
	p.start("a")
	if mode := p.resyncMode(0); mode != syncer.ModeFull {
		t.Fatalf("first contact: %s, want full", mode)
	}
	p.upsert(0, 500, 1)
	p.converge(30 * time.Second)

	b := p.lab.Host("b")
	if err := os.Remove(filepath.Join(b.BPFFS(), "maps", bpf.SynctestMapSyncTest)); err != nil {
		t.Fatal(err)
	}
	out, err := b.Cmd(testenv.Tandem(t), "up", "--once", "-i", "eth0", "--sync-test-iface", "cmd0", "--bpffs", b.BPFFS()).CombinedOutput()
	if err != nil {
		t.Fatalf("second up on b: %v\n%s", err, out)
	}
	p.waitLog("b", "maps replaced under the daemon", 0, 20*time.Second)
	p.upsert(500, 500, 1)
	// converge reads b's pinned map: it holds everything only if the
	// standby applies into it (a full resync of the keys it lost, then the
	// stream).
	got := p.converge(30 * time.Second)
	if len(got) != 1000 {
		t.Fatalf("b's pinned map holds %d keys, want 1000", len(got))
	}
}
