package loader_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/bench"
)

// busy runs n busy loops at nice 0 (one per CPU: both saturated) until
// the benchmark ends.
func busy(tb testing.TB, n int) {
	tb.Helper()
	for range n {
		c := exec.Command("nice", "-n", "0", "sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { syscall.Kill(-c.Process.Pid, syscall.SIGKILL); c.Wait() })
	}
}

// BenchmarkFalseTakeovers: both gateways live, adverts every 10 ms
// (TANDEM_SOAK_INTERVAL), both CPUs saturated by busy loops at nice 0,
// for TANDEM_SOAK_TIME (default 30 s; the figure in bench/results.json
// is a 10-minute run). Counted: the standby's takeovers while the owner
// lives (tandem: gwb's takeovers, from its own counters), and, in the
// same run on the same hosts at the same interval, keepalived's backup
// entering the MASTER state. Goal: none for tandem.
func BenchmarkFalseTakeovers(b *testing.B) {
	if _, err := exec.LookPath("keepalived"); err != nil {
		b.Fatal("keepalived is not installed (make deps installs it)")
	}
	iv := 10 * time.Millisecond
	if s := os.Getenv("TANDEM_SOAK_INTERVAL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 10*time.Millisecond {
			b.Fatalf("TANDEM_SOAK_INTERVAL=%q: want a duration of at least 10ms", s)
		}
		iv = d
	}
	soak := 30 * time.Second
	if s := os.Getenv("TANDEM_SOAK_TIME"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("TANDEM_SOAK_TIME=%q: want a duration", s)
		}
		soak = d
	}
	p := newPairLab(b)
	p.Pair.Interval = iv
	for b.Loop() {
		p.start(b, "a")
		p.start(b, "b")
		p.settled(b, "a", 30*time.Second)
		ka := map[string]*keepalived{"a": startKeepalived(b, p, "a", iv)}
		waitFor(b, 30*time.Second, "keepalived on gwa holds "+kvip, func() (bool, string) { return p.holds("a", kvip), "" })
		ka["b"] = startKeepalived(b, p, "b", iv)
		time.Sleep(time.Second)
		status := func() (takeovers, splits, dropped uint64, line string) {
			a, errA := p.vipStatus(b, "a")
			bs, errB := p.vipStatus(b, "b")
			if errA != nil || errB != nil {
				b.Fatalf("tandem vip: %v %v", errA, errB)
			}
			return bs.Takeovers + a.Releases, bs.SplitBrains + a.SplitBrains, bs.Dropped + a.Dropped,
				fmt.Sprintf("gwa owner %v (%s), gwb owner %v (%s)", a.Owner, a.Why, bs.Owner, bs.Why)
		}
		t0, s0, d0, _ := status()
		k0 := ka["b"].masters()
		probed0 := strings.Count(p.daemons["b"].Log(), "takeover probe answered")
		if !p.holds("a", kvip) || p.holds("b", kvip) {
			b.Fatalf("keepalived is not settled before the soak:\n%s", ka["b"].out.String())
		}
		busy(b, runtime.NumCPU())
		start := time.Now()
		for time.Since(start) < soak {
			time.Sleep(min(10*time.Second, soak))
			t, s, _, line := status()
			b.Logf("%s: tandem standby takeovers %d, split brains %d; keepalived backup entered MASTER %d times; %s",
				time.Since(start).Round(time.Second), t-t0, s-s0, ka["b"].masters()-k0, line)
		}
		t1, s1, d1, line := status()
		tf, kf := t1-t0, ka["b"].masters()-k0
		// The standby judged the owner silent and the takeover probe
		// found its kernel holding the VIPs (logged with -v): a false
		// takeover the probe stopped, counted apart.
		stopped := strings.Count(p.daemons["b"].Log(), "takeover probe answered") - probed0
		b.Logf("soak of %s at %s adverts, %d CPUs busy: tandem: %d false takeovers (%d split brains settled, %d adverts dropped by the socket, %d silences the probe found alive); keepalived: %d; %s",
			soak, iv, runtime.NumCPU(), tf, s1-s0, d1-d0, stopped, kf, line)
		if _, err := bench.Record(bench.Result{
			Name: fmt.Sprintf("false takeovers in a %s soak, %d ms adverts, both CPUs busy (nice 0 loops)", soak, iv.Milliseconds()),
			Unit: "takeovers", Value: float64(tf),
			Anchor: fmt.Sprintf("keepalived (VRRPv3) backup entering MASTER, advert_int %g, same hosts, same run", iv.Seconds()), AnchorValue: float64(kf),
			Goal: "0",
		}); err != nil {
			b.Fatal(err)
		}
		if _, err := bench.Record(bench.Result{
			Name: fmt.Sprintf("standby judged the live owner silent (the takeover probe found it) in a %s soak, %d ms adverts, both CPUs busy", soak, iv.Milliseconds()),
			Unit: "times", Value: float64(stopped),
			Anchor: "keepalived's false takeovers, same run (it does not probe)", AnchorValue: float64(kf),
			Goal: "record only",
		}); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(tf), "false-takeovers")
		b.ReportMetric(float64(kf), "keepalived-false-takeovers")
	}
}
