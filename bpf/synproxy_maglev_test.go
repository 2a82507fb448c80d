package bpf_test

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/lb"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
)

// cookieAcks runs n cookie ACKs of new flows (clients 10.50.x.y, ports
// from base) to svc4:80 and returns the connection entries' backends.
func cookieAcks(t *testing.T, p *proxy, ns *isolatedNetns, n int, base uint16) map[netip.AddrPort]netip.AddrPort {
	t.Helper()
	out := map[netip.AddrPort]netip.AddrPort{}
	for i := range n {
		client := netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)})
		o := synOpts{mss: 1460, ws: -1, isn: uint32(i) * 7919, client: client, port: base + uint16(i%1000)}
		cookie := maps.Cookie(spKeys[0], 0, o.flow(), maps.CookieOpts{MSS: 1460, WScale: maps.CookieWSNone})
		if v, _, err := ns.run(p.objs.XdpSynproxy, o.ack(t, cookie)); err != nil || v != "XDP_PASS" {
			t.Fatalf("cookie ACK %d: %s %v, want XDP_PASS (the backend SYN, left to the kernel)", i, v, err)
		}
		key := maps.ConnKey{Caddr: client.As16(), Vaddr: svc4.As16(), Cport: maps.HostPort(o.port), Vport: maps.HostPort(80), Proto: 6}
		var cv maps.ConnVal
		if err := p.m.Conns.Lookup(key, &cv); err != nil {
			t.Fatalf("cookie ACK %d: no entry: %v", i, err)
		}
		out[netip.AddrPortFrom(client, o.port)] = netip.AddrPortFrom(netip.AddrFrom16(cv.Baddr).Unmap(), maps.HostPort(cv.Bport))
	}
	return out
}

func backendConns(t *testing.T, p *proxy, s maps.Service) []uint64 {
	t.Helper()
	st, err := p.m.BackendStates(s)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]uint64, len(st))
	for i, b := range st {
		out[i] = b.Conns
	}
	return out
}

// TestSynproxyMaglevWeights: three backends weighted 1:2:3 take 1/6, 2/6
// and 3/6 (within 5%) of 60,000 new flows, counted by the datapath's
// per-backend counters; each flow's backend is the one Go's table and
// flow hash name (what the peer gateway computes too); drained (weight
// 0), a backend takes no new flow and its connection entries stay; with
// every backend drained a cookie ACK finds none (no_backend).
func TestSynproxyMaglevWeights(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	bs := []netip.AddrPort{netip.MustParseAddrPort("10.9.0.1:8080"), netip.MustParseAddrPort("10.9.0.2:8080"), netip.MustParseAddrPort("10.9.0.3:8080")}
	svc, err := p.m.PutService(maps.Service{VIP: netip.AddrPortFrom(svc4, 80), Backends: bs, Weights: []uint32{1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	table, err := p.m.Table(svc.ID)
	if err != nil || table == nil {
		t.Fatalf("no table installed for the service: %v", err)
	}
	n := espScaled(60000)
	got := cookieAcks(t, p, ns, n, 20000)
	vip := netip.AddrPortFrom(svc4, 80)
	for client, b := range got {
		if want := bs[table[maps.FlowHash(client, vip)%lb.TableSize]]; b != want {
			t.Fatalf("flow %s went to %s; Go's table and flow hash say %s", client, b, want)
		}
	}
	conns := backendConns(t, p, svc)
	var total uint64
	for _, c := range conns {
		total += c
	}
	if total != uint64(n) {
		t.Fatalf("per-backend counters sum to %d, want %d (%v)", total, n, conns)
	}
	for i, want := range []float64{1. / 6, 2. / 6, 3. / 6} {
		share := float64(conns[i]) / float64(total)
		if math.Abs(share/want-1) > 0.05 {
			t.Errorf("backend %s (weight %d): %.4f of the flows, want %.4f within 5%%", bs[i], i+1, share, want)
		}
		t.Logf("backend %s weight %d: %d flows, share %.4f (want %.4f)", bs[i], i+1, conns[i], share, want)
	}

	// Drain the third: no new flows; its entries are untouched.
	var on3 []maps.ConnKey
	for client, b := range got {
		if b == bs[2] && len(on3) < 10 {
			on3 = append(on3, maps.ConnKey{Caddr: client.Addr().As16(), Vaddr: svc4.As16(), Cport: maps.HostPort(client.Port()), Vport: maps.HostPort(80), Proto: 6})
		}
	}
	if err := p.m.SetBackendWeight(vip, bs[2], 0); err != nil {
		t.Fatal(err)
	}
	before := backendConns(t, p, svc)
	m := espScaled(6000)
	after := cookieAcks(t, p, ns, m, 30000)
	for client, b := range after {
		if b == bs[2] {
			t.Fatalf("drained backend %s took new flow %s", b, client)
		}
	}
	if c := backendConns(t, p, svc); c[2] != before[2] || c[0]+c[1] != before[0]+before[1]+uint64(m) {
		t.Errorf("after the drain, counters %v (before %v): backend 3 must stay, the others take %d", c, before, m)
	}
	for _, k := range on3 {
		var cv maps.ConnVal
		if err := p.m.Conns.Lookup(k, &cv); err != nil || netip.AddrFrom16(cv.Baddr).Unmap() != bs[2].Addr() {
			t.Errorf("an entry on the drained backend changed or went: %v %+v", err, cv)
		}
	}
	st, _ := p.m.BackendStates(svc)
	if !st[2].Drained || st[2].Slots != 0 || st[0].Slots+st[1].Slots != lb.TableSize {
		t.Errorf("states after the drain: %+v", st)
	}

	// Every backend drained: a valid cookie finds no backend.
	for _, b := range bs[:2] {
		if err := p.m.SetBackendWeight(vip, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	o := synOpts{mss: 1460, ws: -1, isn: 5, client: netip.MustParseAddr("10.51.0.1"), port: 999}
	cookie := maps.Cookie(spKeys[0], 0, o.flow(), maps.CookieOpts{MSS: 1460, WScale: maps.CookieWSNone})
	if v, _, err := ns.run(p.objs.XdpSynproxy, o.ack(t, cookie)); err != nil || v != "XDP_DROP" || p.stats(t)["no_backend"] != 1 {
		t.Errorf("all drained: %s %v, no_backend %d; want XDP_DROP, 1", v, err, p.stats(t)["no_backend"])
	}
	// A health verdict is an input like a weight: back to weight 1, the
	// first backend down, the second takes every slot.
	for _, b := range bs {
		if err := p.m.SetBackendWeight(vip, b, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []netip.AddrPort{bs[0], bs[2]} {
		if err := p.m.SetBackendHealth(vip, b, false); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := p.m.BackendStates(svc); st[1].Slots != lb.TableSize || st[0].Health != maps.HealthDown || st[1].Health != maps.HealthUnchecked {
		t.Errorf("two backends down: %+v", st)
	}
	// A verdict repeated (the checks report every interval) swaps no
	// table; a new one does.
	tableID := func() ebpf.MapID {
		var inner *ebpf.Map
		if err := p.m.Maglev.Lookup(svc.ID, &inner); err != nil {
			t.Fatal(err)
		}
		defer inner.Close()
		info, err := inner.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	id := tableID()
	if err := p.m.SetBackendHealth(vip, bs[0], false); err != nil {
		t.Fatal(err)
	}
	if tableID() != id {
		t.Error("a repeated verdict swapped the table")
	}
	if err := p.m.SetBackendHealth(vip, bs[1], true); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.m.BackendStates(svc); tableID() == id || st[1].Health != maps.HealthUp || st[1].Slots != lb.TableSize {
		t.Errorf("a first verdict (up): table swapped %v, states %+v", tableID() != id, st)
	}
	// Writing the service again keeps the verdicts of the backends it keeps.
	if _, err := p.m.PutService(maps.Service{VIP: vip, Backends: bs}); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.m.BackendStates(svc); st[0].Health != maps.HealthDown || st[1].Health != maps.HealthUp || st[2].Health != maps.HealthDown || st[1].Slots != lb.TableSize {
		t.Errorf("verdicts after the service was written again: %+v", st)
	}
}

// TestSynproxyNoTable: a service without a table (a pinned service from
// before tables, until the next up writes one) keeps the fixed hash over
// its backends, so a gateway that has a table and one that has not yet
// both serve it.
func TestSynproxyNoTable(t *testing.T) {
	p := loadSynproxy(t)
	ns := newIsolatedNetns(t)
	svcs, err := p.m.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.AddrPortFrom(svc4, 80)
	for _, s := range svcs {
		if s.VIP == vip {
			if err := p.m.Maglev.Delete(s.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	for client, b := range cookieAcks(t, p, ns, 200, 20000) {
		if want := backends4[maps.FlowHash(client, vip)%2]; b != want {
			t.Fatalf("flow %s with no table went to %s, want %s (the fixed hash)", client, b, want)
		}
	}
}

// BenchmarkSynproxyCookieAckTable: the cost of a cookie ACK (cookie
// check, checksum, entry, backend SYN) whose backend comes from the
// service's Maglev table, against the same ACKs with the table removed,
// where the program falls back to the fixed hash over the backends (the
// path every cookie ACK took before tables, plus one empty outer
// lookup). Same build, same frames, rounds interleaved, the median round
// of each; the program's own run time (bench.RunTime). Twice: flows
// whose hashes fall anywhere in the table (each ACK reads another part
// of its 256 KiB, which a test run, a syscall apart, finds out of the
// caches and the TLB), and flows that all fall in its first 1,000 slots
// (4 KiB: the lookup itself, the table in the caches).
func BenchmarkSynproxyCookieAckTable(b *testing.B) {
	for _, tc := range []struct {
		name  string
		slots uint32
	}{{"flows anywhere in the table", lb.TableSize}, {"flows in 1,000 slots", 1000}} {
		b.Run(tc.name, func(b *testing.B) { benchCookieAckTable(b, tc.name, tc.slots) })
	}
}

func benchCookieAckTable(b *testing.B, name string, slots uint32) {
	p := loadSynproxy(b)
	ns := newIsolatedNetns(b)
	const n, rounds = 1 << 12, 16
	vip := netip.AddrPortFrom(svc4, 80)
	svcs, err := p.m.ListServices()
	if err != nil {
		b.Fatal(err)
	}
	var svc maps.Service
	for _, s := range svcs {
		if s.VIP == vip {
			svc = s
		}
	}
	frames := make([][]byte, n)
	keys := make([]maps.ConnKey, n)
	cand := 0
	for i := range n {
		var client netip.Addr
		for {
			cand++
			client = netip.AddrFrom4([4]byte{10, byte(cand >> 16), byte(cand >> 8), byte(cand)})
			if maps.FlowHash(netip.AddrPortFrom(client, 20000), vip)%lb.TableSize < slots {
				break
			}
		}
		o := synOpts{mss: 1460, ws: 7, sack: true, tsval: 5, isn: uint32(i) * 7919, client: client, port: 20000}
		cookie := maps.Cookie(spKeys[0], 0, o.flow(), maps.CookieOpts{MSS: 1460, WScale: 7, SACK: true})
		frames[i] = o.ack(b, cookie)
		keys[i] = maps.ConnKey{Caddr: client.As16(), Vaddr: svc4.As16(), Cport: maps.HostPort(20000), Vport: maps.HostPort(80), Proto: 6}
	}
	prog := p.objs.XdpSynproxy
	// One table, put back in its slot for each table round: its memory
	// stays the same, as a service's does between changes.
	var inner *ebpf.Map
	if err := p.m.Maglev.Lookup(svc.ID, &inner); err != nil {
		b.Fatal(err)
	}
	defer inner.Close()
	batch := func(table bool) (d float64) {
		if table {
			if err := p.m.Maglev.Put(svc.ID, inner); err != nil {
				b.Fatal(err)
			}
		} else if err := p.m.Maglev.Delete(svc.ID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			b.Fatal(err)
		}
		before := p.stats(b)["cookie_ok"]
		done := make(chan struct{})
		ns.req <- func() {
			defer close(done)
			d, err = bench.RunTime(prog, func() error {
				for _, f := range frames {
					if _, err := prog.Run(&ebpf.RunOptions{Data: f}); err != nil {
						return err
					}
				}
				return nil
			})
		}
		<-done
		if err != nil {
			b.Fatal(err)
		}
		if got := p.stats(b)["cookie_ok"] - before; got != n {
			b.Fatalf("%d of %d cookie ACKs made an entry: the benchmark did not run the path it names", got, n)
		}
		// The next round's ACKs must find no entry; the dirty ring is
		// drained as the daemon would.
		if _, err := p.m.Conns.BatchDelete(keys, nil); err != nil {
			for _, k := range keys {
				_ = p.m.Conns.Delete(k)
			}
		}
		if _, err := p.sync.Drain(func(*maps.SyncRec) {}); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var withTable, fixed float64
	for b.Loop() {
		var dt, df []float64
		for r := range rounds {
			if r%2 == 0 {
				dt = append(dt, batch(true))
				df = append(df, batch(false))
			} else {
				df = append(df, batch(false))
				dt = append(dt, batch(true))
			}
		}
		withTable, fixed = median(dt), median(df)
	}
	b.ReportMetric(withTable, "ns/ack")
	b.ReportMetric(fixed, "fixed-ns/ack")
	if _, err := bench.Record(bench.Result{Name: "xdp_synproxy cookie ACK, backend from the Maglev table vs the fixed flow hash, " + name + ", program run time", Unit: "ns/ACK", Value: withTable,
		Anchor: "the same build and ACKs with the table removed (the fixed hash over the backends), interleaved rounds", AnchorValue: fixed, Goal: "record only (the table costs two lookups and a read of its 256 KiB)"}); err != nil {
		b.Fatal(err)
	}
}

// TestSynproxyMaglevReadDuringSwap: readers of a service's table
// (service list: Table, BackendStates; up: HasTable) while a writer swaps
// it again and again (the health checks, service set) never fail. The
// lookup gives the inner map's id, which is freed when a swap replaces it
// before the reader opens it (`service list` failed with "service 1:
// table: no such file or directory" in the 6.1 VM).
func TestSynproxyMaglevReadDuringSwap(t *testing.T) {
	p := loadSynproxy(t)
	bs := []netip.AddrPort{netip.MustParseAddrPort("10.9.0.1:8080"), netip.MustParseAddrPort("10.9.0.2:8080")}
	svc, err := p.m.PutService(maps.Service{VIP: netip.AddrPortFrom(svc4, 80), Backends: bs})
	if err != nil {
		t.Fatal(err)
	}
	tables := [2][]uint32{lb.Build([]lb.Backend{{Addr: bs[0], Weight: 1, Healthy: true}}, lb.TableSize),
		lb.Build([]lb.Backend{{Addr: bs[1], Weight: 1, Healthy: true}}, lb.TableSize)}
	// A bounded number of swaps (each builds and fills a 65,537-slot
	// map: the costly side); the reader loops on the cheap lookup-then-
	// open (HasTable) meanwhile, the whole read now and then.
	swaps := espScaled(600)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; n < swaps; n++ {
			if err := p.m.SetTable(svc.ID, tables[n%2]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var failed []error
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		if ok, err := p.m.HasTable(svc.ID); err != nil || !ok {
			failed = append(failed, fmt.Errorf("has table %v: %v", ok, err))
		}
		if reads%50 == 0 {
			if _, err := p.m.Table(svc.ID); err != nil {
				failed = append(failed, err)
			}
			if _, err := p.m.BackendStates(svc); err != nil {
				failed = append(failed, err)
			}
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d reads failed during %d swaps, the first: %v", len(failed), reads, swaps, failed[0])
	}
	t.Logf("%d reads during %d swaps", reads, swaps)
}
