//go:build qemu

// The QEMU lab moves a real guest (TCG) between two QEMU processes: minutes
// per run, so it runs with `make qemumig` (-tags qemu), not in `make test`.

package qemumig

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/lab"
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
	if os.Getenv("TANDEM_VMTEST") != "" {
		// Nested TCG inside the TCG VM would take minutes per move.
		t.Skip("skipped: the QEMU migration lab runs on the host only (this is the tools/vmtest VM)")
	}
	testenv.RequireCommand(t, "qemu-system-x86_64")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipped: no /dev/net/tun (tap devices): %v", err)
	}
	k, err := FindKernel()
	if err != nil {
		t.Fatal(err)
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
	if r.lost > 0 {
		t.Logf("sequence numbers lost (the first 20): %v; %d sent before the move, %d echoed by its end", res.Missing, r.before, afterMove)
	}
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
// tandem's migration stage and its migration control: the stream loses
// nothing and duplicates nothing, against the baseline's loss (the same
// move without tandem) in the same run.
func TestQEMUMigrationWithTandem(t *testing.T) {
	tandem := testenv.Tandem(t)
	var base moveResult
	t.Run("baseline", func(t *testing.T) {
		l, ctx := setup(t)
		gw := l.L.Host("gw")
		base = streamAcrossMove(t, l, ctx, func() {
			if err := gw.IP("route", "replace", GuestAddr+"/32", "via", DstHop); err != nil {
				t.Error(err)
			}
		})
	})
	l, ctx := setup(t)
	gw, hs := l.L.Host("gw"), l.L.Host("hs")
	certs := t.TempDir()
	if _, err := syncer.IssueCerts(certs, map[string][]net.IP{"gw": {net.ParseIP("10.88.2.1")}, "hs": nil}, syncer.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	// The gateway's neighbour entries for both hosts, fixed: the hold
	// must not wait on a resolution.
	for _, n := range [][2]string{{SrcHop, "eth1"}, {DstHop, "eth2"}} {
		mac, err := hostMAC(l, n[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := gw.IP("neigh", "replace", n[0], "lladdr", mac, "dev", n[1], "nud", "permanent"); err != nil {
			t.Fatal(err)
		}
	}
	// Frames the gateway redirects into a veth need an XDP program on
	// the peer.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	for _, h := range []string{"hs", "hd"} {
		err := l.L.Host(h).Do(func() error {
			i, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			lk, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: i.Index})
			if err != nil {
				return fmt.Errorf("xdp on %s eth0: %w", h, err)
			}
			t.Cleanup(func() { lk.Close() })
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	state := t.TempDir()
	common := []string{"--bpffs", gw.BPFFS(), "--state-dir", state}
	up := gw.Cmd(tandem, append([]string{"up", "--migrate-iface", "eth0", "--sync-certs", certs, "--sync-name", "gw",
		"--migrate-listen", "10.88.2.1:7402", "--migrate-clients", "hs"}, common...)...)
	var upLog syncBuf
	up.Stdout, up.Stderr = &upLog, &upLog
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		up.Process.Signal(os.Interrupt)
		up.Wait()
		gw.Cmd(tandem, append([]string{"down"}, common...)...).Run()
		if t.Failed() {
			t.Logf("gateway daemon:\n%s", upLog.String())
		}
	})
	// Wait for the listener by its log line: a probe connection would
	// be refused and counted as a stranger.
	for !strings.Contains(upLog.String(), "migration control listening") {
		select {
		case <-ctx.Done():
			t.Fatalf("the gateway's migration control never listened:\n%s", upLog.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if b, err := gw.Cmd(tandem, append([]string{"endpoint", "set", GuestAddr, SrcHop}, common...)...).CombinedOutput(); err != nil {
		t.Fatalf("tandem endpoint set: %v: %s", err, b)
	}
	// One follower next to each QEMU: the source's holds (pausing QEMU
	// until the gateway holds), the destination's switches once the
	// guest runs there.
	fctx, stop := context.WithCancel(ctx)
	var logs [2]syncBuf
	var followers []*exec.Cmd
	for i, fw := range []struct {
		host *lab.Host
		q    *QEMU
		args []string
	}{
		{hs, l.Src, []string{"--pause-before-switchover", "--destination-switches"}},
		{l.L.Host("hd"), l.Dst, []string{"--role", "destination"}},
	} {
		args := append([]string{"--net=/run/netns/" + fw.host.NS, "--", tandem, "migrate", "follow",
			"--qmp", fw.q.Follow, "--endpoint", GuestAddr, "--to", DstHop,
			"--gateway", "10.88.2.1:7402", "--certs", certs, "--name", "hs"}, fw.args...)
		cmd := exec.CommandContext(fctx, "nsenter", args...)
		cmd.Stdout, cmd.Stderr = &logs[i], &logs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		followers = append(followers, cmd)
	}
	defer func() {
		stop()
		for _, c := range followers {
			c.Wait()
		}
	}()
	followLog := func() string { return "source:\n" + logs[0].String() + "destination:\n" + logs[1].String() }
	for !strings.Contains(logs[0].String(), "qmp: following") || !strings.Contains(logs[1].String(), "qmp: following") {
		select {
		case <-ctx.Done():
			t.Fatalf("the followers never followed QEMU:\n%s", followLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Through the gateway's migration stage now: resolve the path again.
	if err := l.WaitEcho(ctx); err != nil {
		t.Fatal(err)
	}
	r := streamAcrossMove(t, l, ctx, nil)
	// The follower's done comes right after the source reports completed.
	for !strings.Contains(logs[1].String(), "op=done") {
		select {
		case <-ctx.Done():
			t.Fatalf("the followers never finished the move:\n%s", followLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Logf("QEMU live migration, echo stream %d/s: baseline %d of %d lost (downtime %d ms); tandem %d of %d lost, %d duplicated (downtime %d ms)",
		int(burst*time.Second/gap), base.lost, base.sent, base.mig.DowntimeMS, r.lost, r.sent, r.dups, r.mig.DowntimeMS)
	if r.lost != 0 || r.dups != 0 {
		t.Fatalf("with tandem's hold the stream lost %d and duplicated %d datagrams across the move (baseline lost %d)\nfollowers:\n%s", r.lost, r.dups, base.lost, followLog())
	}
	for _, op := range []string{"op=start", "op=blackout", "op=switch", "op=done"} {
		if !strings.Contains(followLog(), op) {
			t.Errorf("the followers never sent %s:\n%s", op, followLog())
		}
	}
}

// hostMAC is the MAC of the lab host's eth0 that has addr.
func hostMAC(l *Lab, addr string) (string, error) {
	h := l.L.Host("hs")
	if addr == DstHop {
		h = l.L.Host("hd")
	}
	var mac string
	err := h.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		mac = i.HardwareAddr.String()
		return nil
	})
	return mac, err
}

// syncBuf is a strings.Builder safe for a process's output and a reader.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
