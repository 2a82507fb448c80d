package bpf_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
)

// pre15Object is synproxy.c before issue 15's datapath work (commit
// 8e2de27), built by bpf2go with gen.go's flags: the anchor of
// BenchmarkSynproxyDatapath.
const pre15Object = "testdata/synproxy_pre15.o"

// routeNetns gives the isolated namespace what a gateway has: forwarding
// on, a device towards the backends and the clients, routes and
// neighbours, so the proxy's FIB lookups succeed (the isolated namespace
// alone makes every lookup fail at once: forwarding is off there).
func routeNetns(t testing.TB, ns *isolatedNetns) {
	t.Helper()
	for _, c := range []string{
		"sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
		"ip link add dp0 type veth peer name dp1",
		"ip link set dp0 up mtu 9000",
		"ip link set dp1 up",
		"ip link set lo up",
		"ip addr add 10.9.0.254/24 dev dp0",
		"ip addr add fd09::fe/64 dev dp0 nodad",
		"ip route add 198.51.100.0/24 via 10.9.0.250 dev dp0",
		"ip route add 2001:db8:1::/64 via fd09::fa dev dp0",
	} {
		nsSh(t, ns, c)
	}
	for _, n := range []string{"10.9.0.1", "10.9.0.2", "10.9.0.250", "fd09::1", "fd09::2", "fd09::fa"} {
		nsSh(t, ns, "ip neigh replace "+n+" lladdr 02:00:00:00:09:01 nud permanent dev dp0")
	}
}

// withMaps adds to an older build's spec the maps the current one has and
// it lacks (unused by its programs), so that it loads into the current
// objects.
func withMaps(t testing.TB, old *ebpf.CollectionSpec) *ebpf.CollectionSpec {
	t.Helper()
	cur, err := bpf.LoadSynproxy()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range cur.Maps {
		if _, ok := old.Maps[name]; !ok {
			old.Maps[name] = m
		}
	}
	return old
}

// BenchmarkSynproxyDatapath: an established segment (1448 bytes,
// timestamps) each way, IPv4 and IPv6, the current build against the
// build before issue 15's datapath work (pre15Object), in the same run:
// the same frames, one proxy each, rounds interleaved with the order
// rotated, the median round of each; the program's own run time
// (bench.RunTime). "routed": the namespace forwards and has routes and
// neighbours, so the FIB lookup succeeds and the segment is redirected,
// as on a gateway; "no route": every FIB lookup fails at once and the
// segment is left to the kernel (the fixture tests' namespace).
//
// TANDEM_SP_VARIANTS (paths of other builds of synproxy.c, comma-separated)
// adds builds to the rounds: how the profile in docs/synproxy.md was
// taken, with parts stubbed out.
func BenchmarkSynproxyDatapath(b *testing.B) {
	type build struct {
		name string
		p    *proxy
	}
	old, err := ebpf.LoadCollectionSpec(pre15Object)
	if err != nil {
		b.Fatalf("%s: %v", pre15Object, err)
	}
	for _, routed := range []bool{true, false} {
		rname := "no route"
		if routed {
			rname = "routed"
		}
		builds := []build{{"now", loadSynproxy(b)}, {"pre15", loadSynproxySpec(b, withMaps(b, old.Copy()), nil)}}
		if v := os.Getenv("TANDEM_SP_VARIANTS"); v != "" {
			for _, path := range strings.Split(v, ",") {
				spec, err := ebpf.LoadCollectionSpec(path)
				if err != nil {
					b.Fatalf("%s: %v", path, err)
				}
				builds = append(builds, build{filepath.Base(path), loadSynproxySpec(b, withMaps(b, spec), nil)})
			}
		}
		ns := newIsolatedNetns(b)
		type frame struct {
			name, stat string
			in         [][]byte // per build: each names its own connection
		}
		var frames []frame
		payload := make([]byte, 1448)
		for _, fam := range []struct {
			name        string
			client, vip netip.AddrPort
		}{{"ipv4", netip.AddrPortFrom(client4, 46000), netip.AddrPortFrom(svc4, 80)}, {"ipv6", netip.AddrPortFrom(client6, 46000), netip.AddrPortFrom(svc6, 443)}} {
			fwd, rev := frame{name: fam.name + " client to backend", stat: "to_backend"}, frame{name: fam.name + " backend to client", stat: "to_client"}
			for _, bd := range builds {
				client, vip, backend, cookie, bisn := establishOn(b, bd.p, ns, fam.client, fam.vip)
				fwd.in = append(fwd.in, seg{src: client, dst: vip, seq: 2, ack: cookie + 1, ackf: true, window: 500, ws: -1, ts: true, tsval: 12, tsecr: cookie, payload: payload}.frame(b))
				rev.in = append(rev.in, seg{src: backend, dst: client, seq: bisn + 1, ack: 2, ackf: true, window: 500, ws: -1, ts: true, tsval: 100, tsecr: 12, payload: payload}.frame(b))
			}
			frames = append(frames, fwd, rev)
		}
		// Routes after the handshakes, which the fixtures expect left
		// to the kernel.
		if routed {
			routeNetns(b, ns)
		}
		for _, f := range frames {
			b.Run(rname+"/"+f.name, func(b *testing.B) {
				const n, rounds = 1 << 12, 16
				per := func(i int) (d float64, verdict uint32) {
					p := builds[i].p
					prog := p.objs.XdpSynproxy
					done := make(chan struct{})
					before := p.stats(b)[f.stat]
					ns.req <- func() {
						defer close(done)
						var err error
						d, err = bench.RunTime(prog, func() error {
							for range n {
								if verdict, err = prog.Run(&ebpf.RunOptions{Data: f.in[i]}); err != nil {
									return err
								}
							}
							return nil
						})
						if err != nil {
							b.Error(err)
						}
					}
					<-done
					if got := p.stats(b)[f.stat] - before; i < 2 && got != n {
						b.Fatalf("build %s: %s moved by %d of %d runs: the benchmark did not run the path it names", builds[i].name, f.stat, got, n)
					}
					return d, verdict
				}
				med := make([]float64, len(builds))
				for b.Loop() {
					d := make([][]float64, len(builds))
					for r := range rounds {
						for k := range builds {
							i := (r + k) % len(builds)
							x, v := per(i)
							// Redirected when routed, left to the kernel
							// otherwise: the path the name says.
							if want := map[bool]uint32{true: 4, false: 2}[routed]; i < 2 && v != want {
								b.Fatalf("build %s: verdict %d, want %d", builds[i].name, v, want)
							}
							d[i] = append(d[i], x)
						}
					}
					for i := range builds {
						med[i] = median(d[i])
					}
				}
				b.ReportMetric(med[0], "ns/pkt")
				for i, bd := range builds[1:] {
					b.ReportMetric(med[i+1], bd.name+"-ns/pkt")
				}
				if _, err := bench.Record(bench.Result{Name: fmt.Sprintf("xdp_synproxy established %s, 1448 B, timestamps, %s, program run time (issue 15)", f.name, rname), Unit: "ns/pkt", Value: med[0],
					Anchor: "the build before issue 15 (" + pre15Object + "), same frames, interleaved rounds", AnchorValue: med[1], Goal: "<= 150 ns"}); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// nsSh runs a command (ip, sysctl) in the isolated namespace.
func nsSh(t testing.TB, ns *isolatedNetns, cmd string) {
	t.Helper()
	var tid int
	done := make(chan struct{})
	ns.req <- func() { tid = unix.Gettid(); close(done) }
	<-done
	nsPath := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), tid)
	if out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath}, strings.Fields(cmd)...)...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
}

// TestSynproxyNextHopCache: an established segment's next hop is cached
// in its connection entry and looked up again when the next-hop
// generation moves: without a move a changed neighbour is not seen (the
// cache is in use); the watcher moves it at a neighbour change and at a
// route change, and the next segment follows each (counted by the
// watcher's bumps, not timed).
func TestSynproxyNextHopCache(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	client, vip, _, cookie, _ := establish(t, p, ns, 47000)
	routeNetns(t, ns)
	frame := seg{src: client, dst: vip, seq: 2, ack: cookie + 1, ackf: true, window: 500, ws: -1, ts: true, tsval: 12, tsecr: cookie}.frame(t)
	key := maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: vip.Addr().As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(vip.Port()), Proto: 6}
	ifindex := func(name string) uint32 {
		var idx int
		done := make(chan struct{})
		ns.req <- func() {
			defer close(done)
			if i, err := net.InterfaceByName(name); err == nil {
				idx = i.Index
			}
		}
		<-done
		if idx == 0 {
			t.Fatalf("no %s in the namespace", name)
		}
		return uint32(idx)
	}
	send := func(what, mac string, dev string) {
		t.Helper()
		v, out, err := ns.run(p.objs.XdpSynproxy, frame)
		if err != nil || v != "XDP_REDIRECT" {
			t.Fatalf("%s: %s %v, want XDP_REDIRECT", what, v, err)
		}
		if got := net.HardwareAddr(out[:6]).String(); got != mac {
			t.Errorf("%s: to %s, want %s", what, got, mac)
		}
		var cv maps.ConnVal
		if err := p.m.Conns.Lookup(key, &cv); err != nil {
			t.Fatal(err)
		}
		if cv.NhIfindex[0] != ifindex(dev) || net.HardwareAddr(cv.NhMac[0][:6]).String() != mac {
			t.Errorf("%s: cached hop ifindex %d mac %s, want %s (%d) %s", what, cv.NhIfindex[0], net.HardwareAddr(cv.NhMac[0][:6]), dev, ifindex(dev), mac)
		}
	}
	send("first segment", "02:00:00:00:09:01", "dp0")
	// No generation move: the cached hop is used, whatever the kernel
	// says now.
	nsSh(t, ns, "ip neigh replace 10.9.0.1 lladdr 02:00:00:00:09:02 nud permanent dev dp0")
	send("neighbour changed, generation unmoved", "02:00:00:00:09:01", "dp0")
	if err := loader.BumpNextHopGen(p.objs.SpNhGen); err != nil {
		t.Fatal(err)
	}
	send("generation moved", "02:00:00:00:09:02", "dp0")

	var w *loader.NextHopWatcher
	var err error
	done := make(chan struct{})
	ns.req <- func() { w, err = loader.WatchNextHops(p.objs.SpNhGen); close(done) }
	<-done
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error)
	go func() { ran <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Error(err)
		}
	}()
	// waitBump waits for the watcher to act on a change (the guard only
	// ends a broken run; nothing is timed).
	waitBump := func(from uint64) {
		t.Helper()
		for i := 0; w.Bumps() == from; i++ {
			if i > 1000 {
				t.Fatal("the watcher never moved the generation")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	b := w.Bumps()
	nsSh(t, ns, "ip neigh replace 10.9.0.1 lladdr 02:00:00:00:09:03 nud permanent dev dp0")
	waitBump(b)
	send("neighbour changed, watched", "02:00:00:00:09:03", "dp0")
	nsSh(t, ns, "ip link add dp2 type veth peer name dp3")
	nsSh(t, ns, "ip link set dp2 up mtu 9000")
	nsSh(t, ns, "ip link set dp3 up")
	nsSh(t, ns, "ip addr add 10.8.0.254/24 dev dp2")
	nsSh(t, ns, "ip neigh replace 10.8.0.1 lladdr 02:00:00:00:08:01 nud permanent dev dp2")
	b = w.Bumps()
	nsSh(t, ns, "ip route add 10.9.0.1/32 via 10.8.0.1 dev dp2")
	waitBump(b)
	send("route changed, watched", "02:00:00:00:08:01", "dp2")
}
