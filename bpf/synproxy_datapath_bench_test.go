package bpf_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
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
	var tid int
	done := make(chan struct{})
	ns.req <- func() { tid = unix.Gettid(); close(done) }
	<-done
	nsPath := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), tid)
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
		if out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath}, strings.Fields(c)...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", c, err, out)
		}
	}
	for _, n := range []string{"10.9.0.1", "10.9.0.2", "10.9.0.250", "fd09::1", "fd09::2", "fd09::fa"} {
		c := "ip neigh replace " + n + " lladdr 02:00:00:00:09:01 nud permanent dev dp0"
		if out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath}, strings.Fields(c)...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", c, err, out)
		}
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
					if got := p.stats(b)[f.stat] - before; got != n {
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
