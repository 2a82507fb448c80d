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
	"slices"
	"strconv"
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
	phases           []phaseLoss
}

// phaseLoss is the loss of the datagrams sent in one phase of the move:
// from one event (QEMU's, on either side, or a follower's step) to the
// next.
type phaseLoss struct {
	from       string // the event that began it
	sent, lost uint64
	ms         float64 // how long it lasted
}

// mark is an event of the move and when it happened.
type mark struct {
	what string
	at   time.Time
}

// sampler records how many datagrams the flood had sent, every
// millisecond, so an event's time maps to a sequence number.
type sampler struct {
	mu   sync.Mutex
	at   []time.Time
	sent []uint64
	stop chan struct{}
	done chan struct{}
}

func startSampler(fl *traffic.Flood) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-s.stop:
				return
			case now := <-tk.C:
				s.mu.Lock()
				s.at, s.sent = append(s.at, now), append(s.sent, fl.Sent())
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *sampler) Stop() { close(s.stop); <-s.done }

// seqAt is the first sequence number sent at or after t.
func (s *sampler) seqAt(t time.Time) uint64 {
	i, _ := slices.BinarySearchFunc(s.at, t, func(a, b time.Time) int { return a.Compare(b) })
	if i >= len(s.sent) {
		return s.sent[len(s.sent)-1]
	}
	return s.sent[i]
}

// phases splits the flood's loss by the marks (sorted by time).
func phases(fl *traffic.Flood, s *sampler, marks []mark, end uint64) []phaseLoss {
	slices.SortStableFunc(marks, func(a, b mark) int { return a.at.Compare(b.at) })
	marks = append([]mark{{what: "stream", at: s.at[0]}}, marks...)
	var out []phaseLoss
	for i, m := range marks {
		from, to, until := s.seqAt(m.at), end, s.at[len(s.at)-1]
		if i+1 < len(marks) {
			to, until = s.seqAt(marks[i+1].at), marks[i+1].at
		}
		out = append(out, phaseLoss{from: m.what, sent: to - from, lost: fl.MissingIn(from, to), ms: float64(until.Sub(m.at).Microseconds()) / 1000})
	}
	return out
}

// qemuMarks are the events QEMU emitted on one side, as marks.
func qemuMarks(side string, q *QEMU) []mark {
	// A command collects the events emitted before its answer.
	q.Ctl.Execute("query-status", nil)
	var out []mark
	for _, ev := range q.Ctl.Buffered() {
		what := side + " " + ev.Event
		if ev.Data.Status != "" {
			what += " " + ev.Data.Status
		}
		if !ev.Time().IsZero() {
			out = append(out, mark{what: what, at: ev.Time()})
		}
	}
	return out
}

// stepMarks are the follower's steps, from its log (slog's time= and op=).
func stepMarks(side, log string) []mark {
	var out []mark
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "msg=\"migration step\"") && !strings.Contains(line, "msg=\"qmp: ") {
			continue
		}
		var at time.Time
		what := side
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "time":
				at, _ = time.Parse(time.RFC3339Nano, v)
			case "op":
				what += " step " + v
			}
		}
		if what == side {
			if i := strings.Index(line, "msg=\"qmp: "); i >= 0 {
				msg := line[i+len("msg=\"qmp: "):]
				msg, _, _ = strings.Cut(msg, "\"")
				what += " " + msg
			}
		}
		if !at.IsZero() && !strings.Contains(what, "following") {
			out = append(out, mark{what: what, at: at})
		}
	}
	return out
}

// lostStretches lists the runs of lost sequence numbers and when each
// was sent, relative to the last mark before it.
func lostStretches(fl *traffic.Flood, s *sampler, marks []mark, end uint64) string {
	slices.SortStableFunc(marks, func(a, b mark) int { return a.at.Compare(b.at) })
	sentAt := func(seq uint64) time.Time {
		i, _ := slices.BinarySearch(s.sent, seq+1)
		return s.at[min(i, len(s.at)-1)]
	}
	var b strings.Builder
	for seq := uint64(0); seq < end; seq++ {
		if fl.MissingIn(seq, seq+1) == 0 {
			continue
		}
		first := seq
		for seq+1 < end && fl.MissingIn(seq+1, seq+2) == 1 {
			seq++
		}
		at := sentAt(first)
		after := "the stream's start"
		var since time.Duration
		for _, m := range marks {
			if !m.at.After(at) {
				after, since = m.what, at.Sub(m.at)
			}
		}
		fmt.Fprintf(&b, "  %d-%d (%d): %.1f ms after %s\n", first, seq, seq-first+1, float64(since.Microseconds())/1000, after)
	}
	return b.String()
}

func logPhases(t *testing.T, name string, ph []phaseLoss) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s, loss by phase (the datagrams sent from each event to the next):\n", name)
	for _, p := range ph {
		fmt.Fprintf(&b, "  %-42s %8.1f ms  sent %5d  lost %4d\n", p.from, p.ms, p.sent, p.lost)
	}
	t.Log(b.String())
}

// streamAcrossMove runs the echo stream for a while, migrates, runs it on
// and accounts for every datagram.
func streamAcrossMove(t *testing.T, l *Lab, ctx context.Context, onCompleted func(), marks func() []mark) moveResult {
	t.Helper()
	fl, err := traffic.StartFlood(l.L.Host("client").Do, netip.AddrPortFrom(netip.MustParseAddr(GuestAddr), EchoPort),
		traffic.FloodConfig{Size: 64, Burst: burst, Gap: gap, Window: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	smp := startSampler(fl)
	l.Src.Ctl.Buffered()
	l.Dst.Ctl.Buffered()
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
	smp.Stop()
	res := fl.Stop(2 * time.Second)
	r.sent, r.lost, r.dups = res.Sent, res.Lost(), fl.Dups()
	ms := append(qemuMarks("src", l.Src), qemuMarks("dst", l.Dst)...)
	if onCompleted != nil {
		ms = append(ms, mark{what: "route flipped to the destination", at: r.mig.Completed})
	}
	if marks != nil {
		ms = append(ms, marks()...)
	}
	r.phases = phases(fl, smp, ms, r.sent)
	if r.lost > 0 {
		t.Logf("lost, by stretch (the time it was sent, after the last event before it):\n%s", lostStretches(fl, smp, ms, r.sent))
	}
	if r.lost > 0 {
		for _, h := range []string{"hs", "hd"} {
			out, _ := l.L.Host(h).Cmd("ip", "-s", "link", "show", "tap0").CombinedOutput()
			t.Logf("%s tap0 (TX: to the guest, RX: from it):\n%s", h, out)
		}
	}
	for _, q := range []*QEMU{l.Src, l.Dst} {
		b, _ := os.ReadFile(q.Console)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "qemumig guest: udp") {
				t.Logf("%s console: %s", q.Host.Name, line)
			}
		}
	}
	t.Logf("the source's query-migrate:\n  %s", strings.Join(r.mig.Trace, "\n  "))
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
	r := baselineMove(t)
	t.Logf("baseline (no tandem): %d sent, %d lost, %d duplicated; QEMU downtime %d ms, migration %d ms; stream %d/s",
		r.sent, r.lost, r.dups, r.mig.DowntimeMS, r.mig.TotalMS, int(burst*time.Second/gap))
}

func baselineMove(t *testing.T) moveResult {
	l, ctx := setup(t)
	gw := l.L.Host("gw")
	r := streamAcrossMove(t, l, ctx, func() {
		if err := gw.IP("route", "replace", GuestAddr+"/32", "via", DstHop); err != nil {
			t.Error(err)
		}
	}, nil)
	logPhases(t, "baseline", r.phases)
	return r
}

// The followers' flags: the source's holds before it stops the guest,
// the destination's starts the guest and switches (docs/migration.md).
var (
	srcFollowArgs = []string{"--hold-before-stop", "--pause-before-switchover", "--destination-switches"}
	dstFollowArgs = []string{"--role", "destination", "--start-guest"}
)

func init() {
	// TANDEM_QEMUMIG_HOLD=at-stop: the earlier mode, the hold begins when
	// QEMU has stopped the guest (pre-switchover), for comparison.
	if os.Getenv("TANDEM_QEMUMIG_HOLD") == "at-stop" {
		srcFollowArgs = []string{"--pause-before-switchover", "--destination-switches"}
		dstFollowArgs = []string{"--role", "destination"}
	}
}

// TestQEMUMigrationWithTandem is the same move driven only by tandem
// migrate follow (one next to each QEMU), with the gateway running
// tandem's migration stage and its migration control: the stream loses
// nothing and duplicates nothing, against the baseline's loss (the same
// move without tandem) in the same run. TANDEM_QEMUMIG_RUNS (default 1)
// repeats the pair; every run is reported, and every tandem move must be
// loss-free.
func TestQEMUMigrationWithTandem(t *testing.T) {
	runs := 1
	if v := os.Getenv("TANDEM_QEMUMIG_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TANDEM_QEMUMIG_RUNS=%q: want a count of runs, at least 1", v)
		}
		runs = n
	}
	type pair struct{ base, tandem moveResult }
	var res []pair
	for i := 1; i <= runs; i++ {
		var p pair
		t.Run(fmt.Sprintf("run%d/baseline", i), func(t *testing.T) { p.base = baselineMove(t) })
		t.Run(fmt.Sprintf("run%d/tandem", i), func(t *testing.T) { p.tandem = tandemMove(t) })
		res = append(res, p)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "QEMU live migration, echo stream %d/s (lost / sent, duplicated, QEMU's downtime):\n", int(burst*time.Second/gap))
	bad := 0
	for i, p := range res {
		fmt.Fprintf(&b, "  run %d: baseline %d / %d, %d dup, %d ms; tandem %d / %d, %d dup, %d ms\n", i+1,
			p.base.lost, p.base.sent, p.base.dups, p.base.mig.DowntimeMS, p.tandem.lost, p.tandem.sent, p.tandem.dups, p.tandem.mig.DowntimeMS)
		if p.tandem.lost != 0 || p.tandem.dups != 0 || p.tandem.sent == 0 {
			bad++
		}
	}
	t.Log(b.String())
	if bad > 0 {
		t.Fatalf("%d of %d moves with tandem's hold lost or duplicated datagrams (above; each run's loss by phase is in its log)", bad, runs)
	}
}

// tandemMove moves the guest with the gateway running tandem, driven
// only by the followers.
func tandemMove(t *testing.T) moveResult {
	tandem := testenv.Tandem(t)
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
		{hs, l.Src, srcFollowArgs},
		{l.L.Host("hd"), l.Dst, dstFollowArgs},
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
	r := streamAcrossMove(t, l, ctx, nil, func() []mark {
		return append(stepMarks("src follower", logs[0].String()), stepMarks("dst follower", logs[1].String())...)
	})
	// The follower's done comes right after the source reports completed.
	for !strings.Contains(logs[1].String(), "op=done") {
		select {
		case <-ctx.Done():
			t.Fatalf("the followers never finished the move:\n%s", followLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	logPhases(t, "tandem", r.phases)
	if r.lost != 0 || r.dups != 0 {
		t.Errorf("with tandem's hold the stream lost %d and duplicated %d datagrams across the move\nfollowers:\n%s", r.lost, r.dups, followLog())
	}
	for _, op := range []string{"op=start", "op=blackout", "op=switch", "op=done"} {
		if !strings.Contains(followLog(), op) {
			t.Errorf("the followers never sent %s:\n%s", op, followLog())
		}
	}
	return r
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
