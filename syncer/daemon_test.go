package syncer_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/synctest"
	"github.com/tandem-net/tandem/tools/testenv"
)

// The daemon tests run two real `tandem up` daemons on two lab hosts: a
// (primary) and b (standby), with the synctest program on an interface of
// each that a client host sends commands to.
//
//	client eth0 10.7.1.1 ---- 10.7.1.2 cmd0  a  eth0 10.7.0.1
//	client eth1 10.7.2.1 ---- 10.7.2.2 cmd0  b  eth0 10.7.0.2   (a-b: the sync link)
const (
	syncPort    = "7400"
	metricsAddr = "127.0.0.1:9474"
)

type daemonPair struct {
	t      testing.TB
	lab    *lab.Lab
	certs  string
	state  map[string]string
	procs  map[string]*daemonProc
	client *net.UDPConn
	env    map[string][]string // more environment for a host's daemon
}

type daemonProc struct {
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newDaemonPair(t testing.TB) *daemonPair {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nsenter")
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "client"}, {Name: "a"}, {Name: "b"}},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "client", Iface: "eth0", Addrs: []string{"10.7.1.1/24"}}, B: lab.End{Host: "a", Iface: "cmd0", Addrs: []string{"10.7.1.2/24"}}},
			{A: lab.End{Host: "client", Iface: "eth1", Addrs: []string{"10.7.2.1/24"}}, B: lab.End{Host: "b", Iface: "cmd0", Addrs: []string{"10.7.2.2/24"}}},
			{A: lab.End{Host: "a", Iface: "eth0", Addrs: []string{"10.7.0.1/24"}}, B: lab.End{Host: "b", Iface: "eth0", Addrs: []string{"10.7.0.2/24"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &daemonPair{t: t, lab: l, certs: t.TempDir(), procs: map[string]*daemonProc{},
		state: map[string]string{"a": t.TempDir(), "b": t.TempDir()}}
	t.Cleanup(func() {
		for name := range p.procs {
			p.kill(name)
		}
		for _, h := range []string{"a", "b"} {
			exec.Command(testenv.Tandem(t), "down", "--bpffs", l.Host(h).BPFFS()).Run()
		}
		if p.client != nil {
			p.client.Close()
		}
		l.Close()
	})
	if err := syncer.MakeCerts(p.certs, map[string][]net.IP{"a": {net.IPv4(10, 7, 0, 1)}, "b": {net.IPv4(10, 7, 0, 2)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	err = l.Host("client").Do(func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 7, 1, 2), Port: 7777})
		p.client = c
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs `tandem up` as a daemon on host with the role's sync flags and
// waits until it runs.
func (p *daemonPair) start(host string, extra ...string) *daemonProc {
	p.t.Helper()
	h := p.lab.Host(host)
	args := []string{"up", "-i", "eth0", "--sync-test-iface", "cmd0", "--bpffs", h.BPFFS(), "--state-dir", p.state[host],
		"--sync-certs", p.certs, "--sync-name", host, "--metrics-addr", metricsAddr, "-v"}
	if host == "a" {
		args = append(args, "--sync-role", "primary", "--sync-peer", "10.7.0.2:"+syncPort, "--sync-peer-name", "b")
	} else {
		args = append(args, "--sync-role", "standby", "--sync-listen", "10.7.0.2:"+syncPort, "--sync-peer-name", "a")
	}
	args = append(args, extra...)
	d := &daemonProc{cmd: h.Cmd(testenv.Tandem(p.t), args...), log: &lockedBuffer{}, done: make(chan error, 1)}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if env := p.env[host]; env != nil {
		d.cmd.Env = append(os.Environ(), env...)
	}
	if err := d.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	p.procs[host] = d
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(d.log.String(), "daemon running") {
		select {
		case err := <-d.done:
			p.t.Fatalf("daemon on %s exited (%v):\n%s", host, err, d.log.String())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("daemon on %s not running after 30s:\n%s", host, d.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return d
}

// kill SIGKILLs host's daemon (the datapath stays).
func (p *daemonPair) kill(host string) { p.signal(host, syscall.SIGKILL) }

func (p *daemonPair) signal(host string, sig syscall.Signal) {
	d := p.procs[host]
	if d == nil {
		return
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		p.t.Errorf("the daemon on %s did not stop within 10s of %s:\n%s", host, sig, d.log.String())
	}
	delete(p.procs, host)
}

// waitLog waits until host's daemon logged want, after skipping the first
// `from` bytes of its log.
func (p *daemonPair) waitLog(host, want string, from int, timeout time.Duration) string {
	p.t.Helper()
	d := p.procs[host]
	deadline := time.Now().Add(timeout)
	for {
		log := d.log.String()
		if i := strings.Index(log[min(from, len(log)):], want); i >= 0 {
			rest := log[from+i:]
			if j := strings.IndexByte(rest, '\n'); j >= 0 {
				rest = rest[:j]
			}
			return rest
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s's daemon did not log %q within %s:\n%s", host, want, timeout, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSaved waits until host's metadata names the generation it applies
// (its periodic save ran after the first contact).
func (p *daemonPair) waitSaved(host string, timeout time.Duration) {
	p.t.Helper()
	for end := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if m, err := syncer.LoadMeta(syncer.MetaFile(p.state[host])); err == nil && m.PeerGeneration != 0 && m.LastApplied != 0 {
			return
		}
		if time.Now().After(end) {
			p.t.Fatalf("%s: no metadata with the peer's generation saved after %s", host, timeout)
		}
	}
}

func (p *daemonPair) logLen(host string) int { return len(p.procs[host].log.String()) }

// resyncMode waits for the primary's next "resync sent" line after from.
func (p *daemonPair) resyncMode(from int) syncer.Mode {
	p.t.Helper()
	line := p.waitLog("a", "resync sent", from, 60*time.Second)
	p.t.Logf("a: %s", line)
	_, after, _ := strings.Cut(line, "mode=")
	mode, _, _ := strings.Cut(after, " ")
	return syncer.Mode(mode)
}

// cmd sends one synctest command from the client to a.
func (p *daemonPair) cmd(op bpf.SynctestSynctestOp, key, count uint32, delta uint64) {
	p.t.Helper()
	var b [24]byte
	binary.Encode(b[:], binary.NativeEndian, bpf.SynctestSynctestCmd{Op: uint32(op), Count: count, Key: key, Delta: delta})
	if _, err := p.client.Write(b[:]); err != nil {
		p.t.Fatal(err)
	}
}

// upsert changes keys [from, from+n) in commands of 64 keys, paced so the
// veth's XDP queue keeps up.
func (p *daemonPair) upsert(from, n uint32, delta uint64) {
	p.ranges(bpf.SynctestSynctestOpST_UPSERT, from, n, delta)
}

func (p *daemonPair) ranges(op bpf.SynctestSynctestOp, from, n uint32, delta uint64) {
	for k, i := from, 0; k < from+n; k, i = k+64, i+1 {
		p.cmd(op, k, min(64, from+n-k), delta)
		if i%64 == 63 {
			time.Sleep(200 * time.Microsecond)
		}
	}
}

// syncMap opens host's pinned sync_test map.
func (p *daemonPair) syncMap(host string) *ebpf.Map {
	p.t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(p.lab.Host(host).BPFFS(), "maps", bpf.SynctestMapSyncTest), nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return m
}

// batchDump reads a whole sync_test map (synctest.Read) as key ->
// version, value, updates.
func batchDump(m *ebpf.Map) (map[uint32][3]uint64, error) {
	all, err := synctest.Read(m)
	if err != nil {
		return nil, err
	}
	out := make(map[uint32][3]uint64, len(all))
	for _, e := range all {
		out[e.Key] = [3]uint64{e.Version, e.Value, e.Updates}
	}
	return out, nil
}

// converge waits until b's map equals a's, entry for entry.
func (p *daemonPair) converge(timeout time.Duration) map[uint32][3]uint64 {
	p.t.Helper()
	ma, mb := p.syncMap("a"), p.syncMap("b")
	defer ma.Close()
	defer mb.Close()
	deadline := time.Now().Add(timeout)
	for {
		da, err := batchDump(ma)
		if err != nil {
			p.t.Fatal(err)
		}
		db, err := batchDump(mb)
		if err != nil {
			p.t.Fatal(err)
		}
		if reflect.DeepEqual(da, db) {
			return da
		}
		if time.Now().After(deadline) {
			diff := 0
			for k, v := range da {
				if db[k] != v {
					diff++
				}
			}
			p.t.Fatalf("standby differs after %s: primary %d entries, standby %d, %d primary entries differ\na:\n%s\nb:\n%s",
				timeout, len(da), len(db), diff, p.procs["a"].log.String(), p.procs["b"].log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metrics scrapes host's Prometheus endpoint from inside its namespace.
func (p *daemonPair) metrics(host string) map[string]float64 {
	p.t.Helper()
	out := map[string]float64{}
	err := p.lab.Host(host).Do(func() error {
		c, err := net.Dial("tcp", metricsAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		// A daemon that stopped answering fails the test with this
		// scrape's error rather than hanging it.
		c.SetDeadline(time.Now().Add(time.Minute))
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			name, val, ok := strings.Cut(line, " ")
			if f, err := strconv.ParseFloat(val, 64); ok && err == nil {
				out[name] = f
			}
		}
		return sc.Err()
	})
	if err != nil {
		p.t.Fatalf("scrape %s's metrics: %v", host, err)
	}
	return out
}

// testScale divides the sizes of the long daemon tests: the kernel-matrix
// VM (TCG, no KVM here) sets TANDEM_TEST_SCALE so its run stays within CI's
// budget; the host runs them at full size.
func testScale(t testing.TB) uint32 {
	s, err := strconv.ParseUint(os.Getenv("TANDEM_TEST_SCALE"), 10, 32)
	if err != nil || s == 0 {
		return 1
	}
	t.Logf("TANDEM_TEST_SCALE=%d: sizes divided by %d", s, s)
	return uint32(s)
}

// complete re-sends the commands whose keys did not make it into the
// primary's map (a veth queue can drop a datagram; the sync never may):
// a lost command loses its 64-key range whole, so re-sending the ranges
// with a missing (or, for deletes, a remaining) key is exact.
func (p *daemonPair) complete(op bpf.SynctestSynctestOp, from, n uint32) {
	p.t.Helper()
	ma := p.syncMap("a")
	defer ma.Close()
	for round := 0; ; round++ {
		time.Sleep(300 * time.Millisecond) // what is queued lands first
		have, err := batchDump(ma)
		if err != nil {
			p.t.Fatal(err)
		}
		var redo []uint32
		for k := from; k < from+n; k += 64 {
			for i := k; i < min(k+64, from+n); i++ {
				if _, ok := have[i]; ok != (op == bpf.SynctestSynctestOpST_UPSERT) {
					redo = append(redo, k)
					break
				}
			}
		}
		if len(redo) == 0 {
			return
		}
		if round == 20 {
			p.t.Fatalf("%d commands still lost after 20 rounds", len(redo))
		}
		p.t.Logf("round %d: re-sending %d lost commands", round+1, len(redo))
		for i, k := range redo {
			p.cmd(op, k, min(64, from+n-k), 1)
			if i%64 == 63 {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// TestDaemonsMillionEntries: 1,000,000 distinct entries changed by packets
// on the primary, 100,000 of them then deleted, reach the standby exactly;
// then one entry changed 1,000,000 times costs at most one delta a tick.
func TestDaemonsMillionEntries(t *testing.T) {
	p := newDaemonPair(t)
	p.start("b")
	p.start("a")
	if mode := p.resyncMode(0); mode != syncer.ModeFull {
		t.Fatalf("first contact: %s, want full", mode)
	}
	n := 1_000_000 / testScale(t)
	start := time.Now()
	p.upsert(0, n, 1)
	p.complete(bpf.SynctestSynctestOpST_UPSERT, 0, n)
	p.ranges(bpf.SynctestSynctestOpST_DELETE, 0, n/10, 0)
	p.complete(bpf.SynctestSynctestOpST_DELETE, 0, n/10)
	got := p.converge(120 * time.Second)
	t.Logf("%d entries on both hosts %s after the first packet", len(got), time.Since(start).Round(time.Millisecond))
	if len(got) != int(n-n/10) {
		t.Fatalf("%d entries, want %d", len(got), n-n/10)
	}
	for k := range got {
		if k < n/10 {
			t.Fatalf("key %d was deleted on the primary and is on both hosts", k)
		}
	}
	// What a user would compare: tandem dump on each host.
	var dumps [2][]byte
	for i, h := range []string{"a", "b"} {
		out, err := exec.Command(testenv.Tandem(t), "dump", "sync_test", "--bpffs", p.lab.Host(h).BPFFS()).Output()
		if err != nil {
			t.Fatalf("dump on %s: %v", h, err)
		}
		dumps[i] = out
	}
	if !bytes.Equal(dumps[0], dumps[1]) || bytes.Count(dumps[0], []byte("\n")) != len(got)+1 {
		t.Fatalf("tandem dump sync_test differs: %d and %d bytes", len(dumps[0]), len(dumps[1]))
	}

	// The hot entry.
	const hot = 5_000_000
	before := p.metrics("a")
	for i := range n / 1000 {
		p.cmd(bpf.SynctestSynctestOpST_REPEAT, hot, 1000, 1)
		if i%64 == 63 {
			time.Sleep(time.Millisecond)
		}
	}
	got = p.converge(60 * time.Second)
	after := p.metrics("a")
	ticks := after["tandem_sync_ticks_total"] - before["tandem_sync_ticks_total"]
	deltas := after["tandem_sync_deltas_sent_total"] - before["tandem_sync_deltas_sent_total"]
	t.Logf("hot entry: %d changes applied, %.0f deltas in %.0f ticks", got[hot][2], deltas, ticks)
	if got[hot][2] < uint64(n/2) {
		t.Fatalf("the hot entry changed only %d times", got[hot][2])
	}
	if deltas > ticks+1 {
		t.Fatalf("%.0f deltas in %.0f ticks: more than one a tick", deltas, ticks)
	}
	// The standby exports what it applied.
	if m := p.metrics("b"); m["tandem_sync_deltas_applied_total"] < float64(len(got)) || m["tandem_sync_session_up"] != 1 {
		t.Fatalf("standby metrics: applied %v, session_up %v", m["tandem_sync_deltas_applied_total"], m["tandem_sync_session_up"])
	}
}

// TestDaemonsResyncModes walks one pair through every resync mode; each
// converges to equal maps.
func TestDaemonsResyncModes(t *testing.T) {
	p := newDaemonPair(t)
	p.start("b")
	p.start("a", "--sync-journal", "4000")
	if mode := p.resyncMode(0); mode != syncer.ModeFull {
		t.Fatalf("first contact: %s, want full", mode)
	}
	p.upsert(0, 2000, 1)
	p.converge(30 * time.Second)

	step := func(name string, want syncer.Mode, between func()) {
		t.Helper()
		from, proc := p.logLen("a"), p.procs["a"]
		between()
		if p.procs["a"] != proc {
			from = 0 // a new primary: its own log
		}
		if got := p.resyncMode(from); got != want {
			t.Fatalf("%s: resync mode %s, want %s", name, got, want)
		}
		p.upsert(0, 500, 1) // streaming goes on after the resync
		p.converge(30 * time.Second)
		t.Logf("%s: %s, converged", name, want)
	}
	step("standby killed mid-stream", syncer.ModeJournal, func() {
		// A standby killed before its first save since the first
		// contact knows no generation: a full resync is then the right
		// answer, not what this step tests.
		p.waitSaved("b", 10*time.Second)
		p.upsert(2000, 1000, 1)
		p.kill("b")
		p.upsert(3000, 1000, 1)
		p.start("b")
	})
	step("standby down past the journal", syncer.ModeIncremental, func() {
		p.signal("b", syscall.SIGTERM)
		p.upsert(10_000, 20_000, 1)
		time.Sleep(500 * time.Millisecond) // the primary drains it all into its journal
		p.start("b")
	})
	step("standby's maps wiped", syncer.ModeFull, func() {
		p.kill("b")
		if out, err := exec.Command(testenv.Tandem(t), "down", "--bpffs", p.lab.Host("b").BPFFS()).CombinedOutput(); err != nil {
			t.Fatalf("down b: %v\n%s", err, out)
		}
		p.start("b")
	})
	step("corrupt standby metadata", syncer.ModeFull, func() {
		p.kill("b")
		os.WriteFile(syncer.MetaFile(p.state["b"]), []byte(`{"node": [1,2`), 0o644)
		p.start("b")
		p.waitLog("b", "sync metadata unusable", 0, 10*time.Second)
	})
	step("primary restarted: a new generation", syncer.ModeFull, func() {
		p.kill("a")
		p.upsert(40_000, 1000, 1) // the datapath runs on without its daemon
		p.start("a", "--sync-journal", "4000")
	})
	// An aligned reconnect sends nothing. (SIGTERM: the standby saves where
	// it stands on the way out; after a SIGKILL its last save may be up to
	// 250 ms old, and the journal replays that gap, as above.)
	from := p.logLen("a")
	p.signal("b", syscall.SIGTERM)
	p.start("b")
	if got := p.resyncMode(from); got != syncer.ModeAligned {
		t.Fatalf("reconnect when aligned: %s", got)
	}

	// tandem status shows the session and the lag.
	p.upsert(0, 500, 1)
	p.converge(30 * time.Second)
	time.Sleep(1200 * time.Millisecond) // the status file is rewritten every second
	out, err := p.lab.Host("a").Cmd(testenv.Tandem(t), "status", "--bpffs", p.lab.Host("a").BPFFS(), "--state-dir", p.state["a"]).CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"role          primary", "session       up", "lag           p50", "last resync   aligned"} {
		if !strings.Contains(string(out), want) || strings.Contains(string(out), "not running") {
			t.Fatalf("tandem status lacks %q:\n%s", want, out)
		}
	}
	t.Logf("tandem status:\n%s", out[bytes.Index(out, []byte("Sync:")):])
}

// TestDaemonsRingOverflow: tiny rings and a slow timer overflow on a
// burst; the overflow is counted and the map rescanned, and the standby
// converges.
func TestDaemonsRingOverflow(t *testing.T) {
	p := newDaemonPair(t)
	p.start("b")
	p.start("a", "--sync-ring-bytes", "4096", "--sync-interval", "300ms")
	p.resyncMode(0)
	p.upsert(0, 20_000, 1)
	p.converge(30 * time.Second)
	m := p.metrics("a")
	over := m[`tandem_sync_ring_overflows_total{map="sync_test"}`]
	if m["tandem_sync_resyncs_total{mode=\"full\"}"] != 1 {
		t.Fatalf("resyncs: %v", m)
	}
	t.Logf("overflows %v, rescans %v", over, m["tandem_sync_rescans_total"])
	if over == 0 || m["tandem_sync_rescans_total"] == 0 {
		t.Fatalf("a burst of 20000 changes into 4 KiB rings: overflows %v, rescans %v", over, m["tandem_sync_rescans_total"])
	}
}

// TestDaemonsRefuseStrangers: a primary whose certificate another CA
// signed is refused and nothing is applied; so is a peer with a good
// certificate that sends garbage, a third host of the same CA, and the
// standby's own certificate. Connections held idle (plain TCP, or TLS
// with the primary's certificate and a hello) do not keep the real
// primary out: it connects and syncs while they are open.
func TestDaemonsRefuseStrangers(t *testing.T) {
	p := newDaemonPair(t)
	if err := syncer.MakeCerts(p.certs, map[string][]net.IP{"c": {net.IPv4(10, 7, 0, 1)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	p.start("b")
	good := p.certs
	p.certs = t.TempDir()
	if err := syncer.MakeCerts(p.certs, map[string][]net.IP{"a": {net.IPv4(10, 7, 0, 1)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	os.Link(filepath.Join(good, "b.pem"), filepath.Join(p.certs, "b.pem"))
	p.start("a")
	p.upsert(0, 1000, 1)
	p.waitLog("b", "sync peer refused", 0, 20*time.Second)
	p.waitLog("a", "sync peer unreachable", 0, 20*time.Second)
	p.kill("a")

	// Peers with a certificate from the right CA: garbage instead of a
	// hello; a third host's certificate; the standby's own.
	as := func(name string) *tls.Config {
		cfg, err := syncer.TLSConfig(good, name, "any-other-name")
		if err != nil {
			t.Fatal(err)
		}
		cfg.VerifyConnection = nil // an impostor checks nothing
		return cfg
	}
	hello := syncer.AppendHello(nil, syncer.Hello{Version: syncer.ProtocolVersion})
	for _, c := range []struct {
		cert string
		send []byte
	}{{"a", []byte("GET / HTTP/1.0\r\n\r\n")}, {"a", []byte{0, 0, 0, 9, 1, 2}}, {"c", hello}, {"b", hello}} {
		err := p.lab.Host("a").Do(func() error {
			conn, err := tlsDial("10.7.0.2:"+syncPort, as(c.cert))
			if err != nil {
				return nil // refused at the handshake already
			}
			defer conn.Close()
			conn.Write(c.send)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			if err == nil {
				return fmt.Errorf("the standby answered %s's %q", c.cert, c.send)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	p.waitLog("b", "no valid hello", 0, 10*time.Second)
	p.waitLog("b", "certificate of another host", 0, 10*time.Second)
	mb := p.syncMap("b")
	defer mb.Close()
	if got, _ := batchDump(mb); len(got) != 0 {
		t.Fatalf("the standby applied %d entries from strangers", len(got))
	}
	time.Sleep(300 * time.Millisecond)
	m := p.metrics("b")
	refused := 0.0
	for name, v := range m {
		if strings.HasPrefix(name, "tandem_sync_peers_refused_total") {
			refused += v
		}
	}
	if refused < 5 || m[`tandem_sync_peers_refused_total{reason="name"}`] != 2 || m["tandem_sync_deltas_applied_total"] != 0 {
		t.Fatalf("standby metrics: refused %v (by name %v), applied %v", refused, m[`tandem_sync_peers_refused_total{reason="name"}`], m["tandem_sync_deltas_applied_total"])
	}
	// The lab certificates live an hour: the daemon warned at start, and
	// the metrics say how long each certificate has left.
	p.waitLog("b", "sync certificate: this host's sync certificate expires", 0, time.Second)
	if host, ca := m[`tandem_sync_cert_expiry_seconds{cert="host"}`], m[`tandem_sync_cert_expiry_seconds{cert="ca"}`]; host <= 0 || host > 3600 || ca < 3600*24*365*9 {
		t.Fatalf("certificate expiry metrics: host %vs, CA %vs", host, ca)
	}

	// The real primary arrives while a bare TCP connection and a session
	// that said hello and went silent hold the listener.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	err := p.lab.Host("a").Do(func() error {
		c, err := net.Dial("tcp", "10.7.0.2:"+syncPort)
		if err != nil {
			return err
		}
		held = append(held, c)
		cfg, err := syncer.TLSConfig(good, "a", "b")
		if err != nil {
			return err
		}
		tc, err := tlsDial("10.7.0.2:"+syncPort, cfg)
		if err != nil {
			return err
		}
		held = append(held, tc)
		tc.Write(hello)
		_, err = syncer.NewReader(tc).Next()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p.waitLog("b", "sync session open", 0, 10*time.Second)
	p.certs = good
	from := p.logLen("b")
	p.start("a")
	p.waitLog("b", "replaced_old_session=true", from, 60*time.Second)
	p.converge(60 * time.Second)
}

func tlsDial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
}
