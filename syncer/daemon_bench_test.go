package syncer_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/testenv"
)

// BenchmarkDaemonsVsConntrackd replicates the same number of new entries
// from host a to host b of one lab, first with two tandem daemons (synctest
// entries made by packets), then with Debian's conntrackd in FTFW mode over
// UDP on the same link (conntrack entries made by packets through a's
// netfilter). Measured the same way for both: entries/s from the first
// change on a until b holds them all, and the drain lag from the last
// change on a until b holds it. tandem's per-tick lag p50/p99 come from
// its status.
func BenchmarkDaemonsVsConntrackd(b *testing.B) {
	testenv.RequireCommand(b, "conntrackd")
	const n = 200_000
	for b.Loop() {
		p := newDaemonPair(b)
		p.start("b")
		p.start("a")
		p.resyncMode(0)

		// tandem: n entries in commands of 64 keys, as fast as the veth takes them.
		base := p.metrics("b")["tandem_sync_deltas_applied_total"]
		start := time.Now()
		p.upsert(0, n, 1)
		lastChange := time.Now()
		p.complete(bpf.SynctestSynctestOpST_UPSERT, 0, n)
		if time.Since(lastChange) > 400*time.Millisecond {
			lastChange = time.Now() // re-sent commands: the last change is later
		}
		var done time.Time
		for deadline := time.Now().Add(2 * time.Minute); ; {
			if p.metrics("b")["tandem_sync_deltas_applied_total"]-base >= n {
				done = time.Now()
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("tandem: the standby did not apply every entry within 2 minutes")
			}
			time.Sleep(10 * time.Millisecond)
		}
		tRate := n / done.Sub(start).Seconds()
		tDrain := done.Sub(lastChange)
		time.Sleep(1100 * time.Millisecond) // the status file catches up
		st, err := syncer.ReadNodeStatus(p.state["a"])
		if err != nil {
			b.Fatal(err)
		}
		p.kill("a")
		p.kill("b")

		// conntrackd on the same two hosts and link.
		cRate, cDrain := conntrackdRun(b, p, n)

		bench.Record(bench.Result{Name: "sync entries/s, 200k new entries between two lab hosts", Unit: "entries/s", Value: tRate,
			Anchor: "conntrackd FTFW", AnchorValue: cRate, Goal: "more than conntrackd; 1,000,000 deltas/s"})
		bench.Record(bench.Result{Name: "sync drain lag, 200k new entries between two lab hosts", Unit: "ms", Value: float64(tDrain.Milliseconds()),
			Anchor: "conntrackd FTFW", AnchorValue: float64(cDrain.Milliseconds()), Goal: "less than conntrackd"})
		bench.Record(bench.Result{Name: "sync lag p50 (daemons, 10 ms ticks)", Unit: "ms", Value: st.LagP50ms,
			Anchor: "goal: 3 ticks", AnchorValue: 30, Goal: "p99 within 3 ticks"})
		bench.Record(bench.Result{Name: "sync lag p99 (daemons, 10 ms ticks)", Unit: "ms", Value: st.LagP99ms,
			Anchor: "goal: 3 ticks", AnchorValue: 30, Goal: "p99 within 3 ticks"})
	}
}

var externalRE = regexp.MustCompile(`cache:external\s+active objects:\s+(\d+)`)

// conntrackdRun starts conntrackd on a and b, makes n conntrack entries on
// a with n UDP flows (sent towards the client, which drops them), and waits until b's external
// cache holds them. It returns entries/s and the drain lag.
func conntrackdRun(b *testing.B, p *daemonPair, n int) (float64, time.Duration) {
	dir := b.TempDir()
	addr := map[string]string{"a": "10.7.0.1", "b": "10.7.0.2"}
	for h, peer := range map[string]string{"a": "b", "b": "a"} {
		conf := fmt.Sprintf(`Sync {
	Mode FTFW {
		ResendQueueSize 262144
	}
	UDP {
		IPv4_address %s
		IPv4_Destination_Address %s
		Port 3780
		Interface eth0
		SndSocketBuffer 24985600
		RcvSocketBuffer 24985600
		Checksum on
	}
}
General {
	HashSize 262144
	HashLimit 1048576
	LogFile %s/%s.log
	Syslog off
	LockFile %s/%s.lock
	UNIX {
		Path %s/%s.ctl
	}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 134217728
	NetlinkOverrunResync On
}
`, addr[h], addr[peer], dir, h, dir, h, dir, h)
		if err := os.WriteFile(filepath.Join(dir, h+".conf"), []byte(conf), 0o644); err != nil {
			b.Fatal(err)
		}
		cmd := p.lab.Host(h).Cmd("conntrackd", "-C", filepath.Join(dir, h+".conf"))
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	a := p.lab.Host("a")
	// Flows to 10.9.0.0/16 leave towards the client, which drops them; an
	// output chain that looks at ct state makes a's netns track them.
	for _, args := range [][]string{
		{"ip", "route", "add", "10.9.0.0/16", "via", "10.7.1.1"},
		{"nft", "add table ip ctbench; add chain ip ctbench out { type filter hook output priority 0; }; add rule ip ctbench out ct state new counter"},
	} {
		if out, err := a.Cmd(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if err := a.Sysctl("net.netfilter.nf_conntrack_udp_timeout", "300"); err != nil {
		b.Fatal(err)
	}
	external := func() int {
		out, err := p.lab.Host("b").Cmd("conntrackd", "-C", filepath.Join(dir, "b.conf"), "-s", "cache").Output()
		if err != nil {
			return -1
		}
		m := externalRE.FindSubmatch(out)
		if m == nil {
			return -1
		}
		v, _ := strconv.Atoi(string(m[1]))
		return v
	}
	for deadline := time.Now().Add(20 * time.Second); external() < 0; {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "b.log"))
			b.Fatalf("conntrackd on b does not answer:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var start, lastChange time.Time
	err := a.Do(func() error {
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		start = time.Now()
		for i := range n {
			dst := &net.UDPAddr{IP: net.IPv4(10, 9, byte(i>>16), byte(i>>8)), Port: 1024 + i&0xff}
			if _, err := c.WriteToUDP([]byte("x"), dst); err != nil {
				return err
			}
		}
		lastChange = time.Now()
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	var got int
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if got = external(); got >= n {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "a.log"))
			ct, _ := a.Cmd("conntrack", "-C").Output()
			b.Logf("conntrackd: b holds %d of %d entries after 2 minutes (a's table: %s); a's log:\n%s", got, n, ct, log)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	done := time.Now()
	return float64(got) / done.Sub(start).Seconds(), done.Sub(lastChange)
}

