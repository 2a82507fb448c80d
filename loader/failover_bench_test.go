package loader_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/bench"
)

const probePort = 9999

// responders run a UDP echo on every gateway that answers with its name
// (one byte after the sequence number): which host served a probe.
func (p *pairLab) responders(tb testing.TB) {
	tb.Helper()
	for g, h := range p.gw {
		var c net.PacketConn
		if err := h.Do(func() (err error) {
			c, err = net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", probePort))
			return err
		}); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if n >= 8 {
					c.WriteTo(append(buf[:8:8], g[0]), from)
				}
			}
		}()
	}
}

// prober sends a datagram to the VIP every millisecond from the client
// and records who answered when.
type prober struct {
	mu      sync.Mutex
	last    map[byte]time.Time // the last answer from each host
	first   map[byte]time.Time // the first answer from each host since reset
	stop    chan struct{}
	stopped sync.WaitGroup
}

func (p *pairLab) probe(tb testing.TB) *prober {
	tb.Helper()
	// Unconnected: the gateways' replies come from their own addresses
	// (an unconnected responder's source is the route's).
	var c *net.UDPConn
	dst := &net.UDPAddr{IP: net.ParseIP(fvip), Port: probePort}
	if err := p.client.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", nil)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	pr := &prober{last: map[byte]time.Time{}, first: map[byte]time.Time{}, stop: make(chan struct{})}
	pr.stopped.Add(2)
	go func() {
		defer pr.stopped.Done()
		buf := make([]byte, 64)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if n == 9 {
				now := time.Now()
				pr.mu.Lock()
				pr.last[buf[8]] = now
				if _, ok := pr.first[buf[8]]; !ok {
					pr.first[buf[8]] = now
				}
				pr.mu.Unlock()
			}
		}
	}()
	go func() {
		defer pr.stopped.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		var seq uint64
		for {
			select {
			case <-pr.stop:
				c.Close()
				return
			case <-t.C:
				seq++
				c.WriteTo(binary.BigEndian.AppendUint64(nil, seq), dst)
			}
		}
	}()
	tb.Cleanup(pr.close)
	return pr
}

func (pr *prober) close() {
	select {
	case <-pr.stop:
	default:
		close(pr.stop)
		pr.stopped.Wait()
	}
}

// reset forgets the first answers: the next failover is measured anew.
func (pr *prober) reset() {
	pr.mu.Lock()
	pr.first = map[byte]time.Time{}
	pr.mu.Unlock()
}

// gap waits until host to answers and returns the time from from's last
// answer to to's first.
func (pr *prober) gap(tb testing.TB, from, to byte, within time.Duration) time.Duration {
	tb.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		pr.mu.Lock()
		f, ok := pr.first[to]
		l := pr.last[from]
		pr.mu.Unlock()
		if ok && f.After(l) {
			return f.Sub(l)
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatalf("gw%c never answered within %s", to, within)
	return 0
}

// killHost: the daemon (or keepalived) is SIGKILLed and the host's
// service interfaces go down; revive undoes the interfaces.
func (p *pairLab) ifaces(tb testing.TB, g, state string) {
	tb.Helper()
	for _, i := range []string{"eth0", "eth1"} {
		if err := p.gw[g].IP("link", "set", i, state); err != nil {
			tb.Fatal(err)
		}
	}
}

func percentile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i]
}

// BenchmarkFailover: the owner's daemon is SIGKILLed and its interfaces go
// down, 20 times, alternating hosts, with 8 connections through the SYN
// proxy open each time. Measured: the failover time (from the last UDP
// probe the old owner answered to the first the new owner answered; a
// probe every millisecond) and the share of the open connections that
// finish with their contents intact. tandem (50 ms adverts, state sync)
// against keepalived (VRRP, advert_int 0.1, nopreempt) moving the same
// addresses in front of the same SYN proxy without tandem's election and
// sync, on the same lab. Goals: tandem p50 under 200 ms, p99 under 400 ms;
// 100% of connections survive.
func BenchmarkFailover(b *testing.B) {
	if _, err := exec.LookPath("keepalived"); err != nil {
		b.Fatal("keepalived is not installed (make deps installs it)")
	}
	const runs, conns = 20, 8
	p := newPairLab(b)
	p.serve(b)
	p.responders(b)
	type result struct {
		gaps            []time.Duration
		survived, total int
	}
	run := func(name string, kill, revive func(g string), owner string) result {
		var r result
		pr := p.probe(b)
		defer pr.close()
		for i := range runs {
			other := map[string]string{"a": "b", "b": "a"}[owner]
			var streams []*stream
			for range conns {
				streams = append(streams, p.open(b))
			}
			time.Sleep(100 * time.Millisecond) // the entries reach the peer (tandem); the stream is in flight
			pr.reset()
			kill(owner)
			gap := pr.gap(b, owner[0], other[0], 10*time.Second)
			r.gaps = append(r.gaps, gap)
			var wg sync.WaitGroup
			ok := make([]bool, len(streams))
			for j, s := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.c.SetDeadline(time.Now().Add(5 * time.Second))
					ok[j] = s.finish() == nil
				}()
			}
			wg.Wait()
			n := 0
			for _, o := range ok {
				if o {
					n++
				}
			}
			r.survived += n
			r.total += len(streams)
			b.Logf("%s run %d: gw%s -> gw%s in %s; %d/%d connections survived", name, i+1, owner, other, gap.Round(time.Millisecond), n, len(streams))
			revive(owner)
			owner = other
		}
		return r
	}

	var tandemR, kaR result
	for b.Loop() {
		p.start(b, "a")
		p.start(b, "b")
		p.settled(b, "a", 30*time.Second)
		tandemR = run("tandem", func(g string) {
			p.daemons[g].Kill()
			p.ifaces(b, g, "down")
		}, func(g string) {
			p.ifaces(b, g, "up")
			p.start(b, g)
			p.settled(b, map[string]string{"a": "b", "b": "a"}[g], 30*time.Second)
		}, "a")

		// keepalived: the same SYN proxy on both gateways, no election, no sync.
		for g, h := range p.gw {
			p.daemons[g].Kill()
			delete(p.daemons, g)
			tandem(b, h, "down", "--bpffs", h.BPFFS())
			for _, a := range []string{fvip + "/24 dev eth0", finner + "/24 dev eth1"} {
				h.Cmd("sh", "-c", "ip addr del "+a).Run() // whoever holds them
			}
			args := append(p.args(g)[:1], "--once")
			args = append(args, p.args(g)[1:]...)
			var keep []string
			for i := 0; i < len(args); i++ { // the proxy only
				switch args[i] {
				case "--vip-addr", "--vip-peer", "--vip-priority", "--vip-interval", "--sync-role", "--sync-peer", "--sync-listen", "--sync-name", "--sync-certs", "--sync-interval", "--state-dir":
					i++
					continue
				case "-v":
					continue
				}
				keep = append(keep, args[i])
			}
			if r := tandem(b, h, keep...); r.code != 0 {
				b.Fatalf("tandem %v: %s%s", keep, r.stdout, r.stderr)
			}
		}
		ka := map[string]*exec.Cmd{}
		startKA := func(g string) {
			conf := filepath.Join(b.TempDir(), "keepalived.conf")
			prio := map[string]string{"a": "200", "b": "100"}[g]
			os.WriteFile(conf, []byte(`global_defs { router_id gw`+g+` }
vrrp_instance VI {
  state BACKUP
  interface eth0
  virtual_router_id 79
  priority `+prio+`
  advert_int 0.1
  nopreempt
  virtual_ipaddress {
    `+fvip+`/24 dev eth0
    `+finner+`/24 dev eth1
  }
}
`), 0o644)
			dir := b.TempDir()
			cmd := p.gw[g].Cmd("keepalived", "-n", "-l", "-P", "-f", conf, "-p", filepath.Join(dir, "k.pid"), "-r", filepath.Join(dir, "v.pid"))
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			ka[g] = cmd
		}
		stopKA := func(g string) {
			if c := ka[g]; c != nil {
				c.Process.Kill()
				c.Wait()
				ka[g] = nil
			}
		}
		b.Cleanup(func() { stopKA("a"); stopKA("b") })
		holds := func(g string) bool {
			out, _ := p.gw[g].Cmd("ip", "-o", "addr", "show", "to", fvip).Output()
			return len(out) > 0
		}
		startKA("a")
		waitFor(b, 30*time.Second, "keepalived on gwa holds the VIP", func() (bool, string) { return holds("a"), "" })
		startKA("b")
		time.Sleep(time.Second)
		kaR = run("keepalived", func(g string) {
			stopKA(g)
			p.ifaces(b, g, "down")
			// keepalived, killed, leaves its addresses: the interface
			// is down, and they go with the host's next start.
		}, func(g string) {
			p.ifaces(b, g, "up")
			for _, a := range []string{fvip + "/24 dev eth0", finner + "/24 dev eth1"} {
				p.gw[g].Cmd("sh", "-c", "ip addr del "+a).Run()
			}
			startKA(g)
			time.Sleep(500 * time.Millisecond)
		}, "a")
	}
	tp50, tp99 := percentile(tandemR.gaps, 0.5), percentile(tandemR.gaps, 0.99)
	kp50, kp99 := percentile(kaR.gaps, 0.5), percentile(kaR.gaps, 0.99)
	b.ReportMetric(float64(tp50.Milliseconds()), "p50-ms")
	b.ReportMetric(float64(tp99.Milliseconds()), "p99-ms")
	b.ReportMetric(float64(kp50.Milliseconds()), "keepalived-p50-ms")
	share := func(r result) float64 { return 100 * float64(r.survived) / float64(r.total) }
	for _, r := range []bench.Result{
		{Name: "failover time p50 (owner killed, 50 ms adverts, 20 runs)", Unit: "ms", Value: float64(tp50.Microseconds()) / 1000,
			Anchor: "keepalived, advert_int 0.1, same lab", AnchorValue: float64(kp50.Microseconds()) / 1000, Goal: "< 200 ms"},
		{Name: "failover time p99 (owner killed, 50 ms adverts, 20 runs)", Unit: "ms", Value: float64(tp99.Microseconds()) / 1000,
			Anchor: "keepalived, advert_int 0.1, same lab", AnchorValue: float64(kp99.Microseconds()) / 1000, Goal: "< 400 ms"},
		{Name: "established SYN-proxy connections surviving a failover (" + strconv.Itoa(runs*conns) + ")", Unit: "%", Value: share(tandemR),
			Anchor: "keepalived alone (same proxy, no state sync)", AnchorValue: share(kaR), Goal: "100%"},
	} {
		if _, err := bench.Record(r); err != nil {
			b.Fatal(err)
		}
	}
}
