package qemumig

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/testenv"
	"github.com/tandem-net/tandem/tools/traffic"
)

// rate of the echo stream: a TCG guest echoes a few thousand datagrams a
// second; 1000/s makes each millisecond of blackout about one datagram.
const (
	burst = 5
	gap   = 5 * time.Millisecond
)

func setup(t *testing.T) (*Lab, context.Context) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("skipped: qemu-system-x86_64 is not installed (make deps installs qemu-system-x86); the QEMU migration lab runs on the host only")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipped: no /dev/net/tun (tap devices): %v", err)
	}
	k, err := FindKernel()
	if err != nil {
		t.Skipf("skipped: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := BuildInitramfs(ctx, testenv.RepoRoot(), k, initrd); err != nil {
		t.Fatal(err)
	}
	l, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	if err := l.Start(ctx, k, initrd); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, l.Src.ConsoleTail())
	}
	return l, ctx
}

// moveResult is one migration under the echo stream.
type moveResult struct {
	mig              MigrationResult
	sent, lost, dups uint64
	before, after    uint64 // echoes before the move began, after it ended
}

// streamAcrossMove runs the echo stream for a while, migrates, runs it on
// and accounts for every datagram.
func streamAcrossMove(t *testing.T, l *Lab, ctx context.Context, onCompleted func()) moveResult {
	t.Helper()
	fl, err := traffic.StartFlood(l.L.Host("client").Do, netip.AddrPortFrom(netip.MustParseAddr(GuestAddr), EchoPort),
		traffic.FloodConfig{Size: 64, Burst: burst, Gap: gap, Window: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	var r moveResult
	r.before = fl.Echoes()
	if r.before == 0 {
		fl.Stop(0)
		t.Fatalf("no echo from the guest before the move: the lab's path is broken\nconsole:\n%s", l.Src.ConsoleTail())
	}
	r.mig, err = l.Migrate(ctx, onCompleted)
	if err != nil {
		fl.Stop(0)
		t.Fatal(err)
	}
	afterMove := fl.Echoes()
	time.Sleep(2 * time.Second)
	r.after = fl.Echoes() - afterMove
	res := fl.Stop(2 * time.Second)
	r.sent, r.lost, r.dups = res.Sent, res.Lost(), fl.Dups()
	if r.after == 0 {
		t.Fatalf("no echo from the guest after the move: it does not run on the destination\nconsole:\n%s", l.Dst.ConsoleTail())
	}
	return r
}

// TestQEMUMigrationBaseline migrates the guest without tandem: the
// gateway's route moves to the destination host as soon as the source
// reports the move completed. What the stream loses is the baseline the
// hold is measured against: the datagrams that reached the paused source
// in the stop-and-copy.
func TestQEMUMigrationBaseline(t *testing.T) {
	l, ctx := setup(t)
	gw := l.L.Host("gw")
	r := streamAcrossMove(t, l, ctx, func() {
		if err := gw.IP("route", "replace", GuestAddr+"/32", "via", DstHop); err != nil {
			t.Error(err)
		}
	})
	t.Logf("baseline (no tandem): %d sent, %d lost, %d duplicated; QEMU downtime %d ms, migration %d ms; stream %d/s",
		r.sent, r.lost, r.dups, r.mig.DowntimeMS, r.mig.TotalMS, int(burst*time.Second/gap))
}

// TestQEMUMigrationWithTandem is the same move driven only by tandem
// migrate follow on the source's QMP socket, with the gateway running
// tandem's migration stage: the stream loses nothing, against the
// baseline's loss in the same run.
func TestQEMUMigrationWithTandem(t *testing.T) {
	tandem := testenv.Tandem(t)
	out, _ := exec.Command(tandem, "up", "--help").CombinedOutput()
	if !containsAll(string(out), "--migrate-iface", "--migrate-listen") {
		t.Skip("skipped: the migration datapath (tandem up --migrate-iface, tandem endpoint set: branch h-migdp) is not in this build; the drivers half (--migrate-listen, tandem migrate follow) is")
	}
	t.Fatal(errors.New("TODO(merge): wire the gateway (tandem up --migrate-iface eth1,eth2 --migrate-listen, tandem endpoint set 10.88.0.5 10.88.2.2) and run the follower; see docs/migration.md ## Drivers"))
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !contains(s, x) {
			return false
		}
	}
	return true
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub)))
}
