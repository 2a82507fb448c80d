package loader_test

// Migration redirects end to end (issue 13): an endpoint E moves from the
// path through host S to the path through host D while a client streams
// to it through the gateway's migrate stage, driven by the CLI against
// the daemon. E is one namespace with a link to each path (its sockets
// survive the move); "S stops" is E's link on the S side going down, so
// what the gateway still sends that way is lost, as it would be to a
// stopped source.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/bench"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

var (
	migEP = netip.MustParseAddr("10.96.0.50")
	migS  = "10.96.2.2" // E's address on the S path
	migD  = "10.96.3.3" // E's address on the D path
	// The lab is dual-stack: E's IPv6 address and its hosts.
	migEP6 = netip.MustParseAddr("fd96::50")
	migS6  = "fd96:2::2"
	migD6  = "fd96:3::3"
)

type migLab struct {
	l              *lab.Lab
	client, gw, ep *lab.Host
	state          string
}

func newMigLab(t *testing.T) *migLab {
	t.Helper()
	return newMigLabSpec(t, migLabSpec(false))
}

// migLabSpec is the lab: client — gw — E, dual-stack. routed adds the
// routed path (migrate_routed_e2e_test.go): gw eth3 — router rt — E's
// ethr, E's tunnel address beyond rt.
func migLabSpec(routed bool) lab.Spec {
	keep := map[string]string{"net.ipv6.conf.all.keep_addr_on_down": "1", "net.ipv6.conf.default.keep_addr_on_down": "1"}
	spec := lab.Spec{
		Hosts: []lab.HostSpec{
			{Name: "client", Routes: []string{"10.96.0.0/24 via 10.96.1.1", "fd96::/64 via fd96:1::1"}},
			{Name: "gw", Forward: true},
			{Name: "ep", Loopback: []string{migEP.String() + "/32", migEP6.String() + "/128"}, Sysctls: keep,
				Routes: []string{"10.96.1.0/24 via 10.96.2.1 metric 10", "10.96.1.0/24 via 10.96.3.1 metric 20",
					"fd96:1::/64 via fd96:2::1 metric 10", "fd96:1::/64 via fd96:3::1 metric 20"}},
		},
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "client", Iface: "eth0", Addrs: []string{"10.96.1.2/24", "fd96:1::2/64"}},
				B: lab.End{Host: "gw", Iface: "eth0", Addrs: []string{"10.96.1.1/24", "fd96:1::1/64"}}, TxOff: true},
			{A: lab.End{Host: "gw", Iface: "eth1", Addrs: []string{"10.96.2.1/24", "fd96:2::1/64"}},
				B: lab.End{Host: "ep", Iface: "eths", Addrs: []string{migS + "/24", migS6 + "/64"}, MAC: "02:00:00:96:02:02"}, TxOff: true},
			{A: lab.End{Host: "gw", Iface: "eth2", Addrs: []string{"10.96.3.1/24", "fd96:3::1/64"}},
				B: lab.End{Host: "ep", Iface: "ethd", Addrs: []string{migD + "/24", migD6 + "/64"}, MAC: "02:00:00:96:03:03"}, TxOff: true},
		},
	}
	if routed {
		addRoutedPath(&spec)
	}
	return spec
}

// newMigLabSpec builds the lab of spec and runs the daemon on gw with
// the endpoint at S (daemonArgs added to tandem up's).
func newMigLabSpec(t *testing.T, spec lab.Spec, daemonArgs ...string) *migLab {
	t.Helper()
	testenv.RequireRoot(t)
	l, err := lab.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	m := &migLab{l: l, client: l.Host("client"), gw: l.Host("gw"), ep: l.Host("ep"), state: stateDir(t)}
	t.Cleanup(func() {
		tandem(t, m.gw, "down", "--bpffs", m.gw.BPFFS(), "--state-dir", m.state)
		l.Close()
	})
	// The gateway's neighbour entries for both paths, fixed: the S path
	// goes down mid-test and must not be re-resolved meanwhile.
	for _, n := range [][3]string{{migS, "02:00:00:96:02:02", "eth1"}, {migD, "02:00:00:96:03:03", "eth2"},
		{migS6, "02:00:00:96:02:02", "eth1"}, {migD6, "02:00:00:96:03:03", "eth2"}} {
		if err := m.gw.IP("neigh", "replace", n[0], "lladdr", n[1], "dev", n[2], "nud", "permanent"); err != nil {
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
	xdpOn := [][2]string{{"ep", "eths"}, {"ep", "ethd"}}
	if l.Hosts["rt"] != nil {
		xdpOn = append(xdpOn, [2]string{"rt", "eth0"})
	}
	for _, hi := range xdpOn {
		ifc := hi[1]
		err := l.Host(hi[0]).Do(func() error {
			i, err := net.InterfaceByName(ifc)
			if err != nil {
				return err
			}
			lk, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: i.Index})
			if err != nil {
				return fmt.Errorf("xdp on %s: %w", ifc, err)
			}
			t.Cleanup(func() { lk.Close() })
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The hold must take the blackout plus the CLI's own latency (each
	// step is a process start on a loaded machine) at the full rate.
	daemon(t, m.gw, append([]string{"--migrate-iface", "eth0", "--migrate-hold-packets", "262144", "--bpffs", m.gw.BPFFS(), "--state-dir", m.state}, daemonArgs...)...)
	m.cli(t, "endpoint", "set", migEP.String(), migS)
	return m
}

func (m *migLab) cli(t *testing.T, args ...string) result {
	t.Helper()
	return mustTandem(t, m.gw, append(args, "--bpffs", m.gw.BPFFS(), "--state-dir", m.state)...)
}

// receiver collects the sequence numbers that reach the endpoint, in
// arrival order.
type receiver struct {
	fd      int
	seqs    []uint64
	done    chan struct{}
	stopped atomic.Bool
}

func listenSeq(t *testing.T, h *lab.Host, port int) *receiver {
	t.Helper()
	r := &receiver{done: make(chan struct{})}
	err := h.Do(func() error {
		// Dual-stack: IPv4 datagrams arrive too (as mapped addresses).
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		r.fd = fd
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 256<<20); err != nil {
			return err
		}
		// Wake up now and then to see whether to stop.
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet6{Port: port})
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		buf := make([]byte, 64)
		for {
			n, _, err := unix.Recvfrom(r.fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
					if r.stopped.Load() {
						return
					}
					continue
				}
				return
			}
			if n >= 8 {
				r.seqs = append(r.seqs, binary.BigEndian.Uint64(buf))
			}
		}
	}()
	return r
}

// stop returns what arrived, once the socket is empty.
func (r *receiver) stop() []uint64 {
	r.stopped.Store(true)
	<-r.done
	unix.Close(r.fd)
	return r.seqs
}

// event is a step a stream (seqSendTo) takes on the way: f runs once at
// has passed since the stream began.
type event struct {
	at time.Duration
	f  func()
}

// seqSendTo sends a numbered UDP stream to dst (IPv4 or IPv6) at rate
// for d, running events on the way, and also stores, after each datagram
// is written, how many were written into progress (when not nil): an
// event that reads n there knows that every datagram from n+1 on is
// written after its read (n+1 is stored only after n is written). It
// returns how many it sent.
func seqSendTo(t *testing.T, h *lab.Host, dst netip.Addr, port, rate int, d time.Duration, events []event, progress *atomic.Uint64) uint64 {
	t.Helper()
	return seqSendUntil(t, h, dst, port, rate, d, nil, 0, events, progress)
}

// seqSendUntil is seqSendTo whose stream, when stop is not nil, ends tail
// after stop is closed (or at d, whichever comes first): a stream that
// ends with the steps it carries, however long they take (the VM, where
// no fixed length fits every run).
func seqSendUntil(t *testing.T, h *lab.Host, dst netip.Addr, port, rate int, d time.Duration, stop <-chan struct{}, tail time.Duration, events []event, progress *atomic.Uint64) uint64 {
	t.Helper()
	var fd int
	err := h.Do(func() error {
		var err error
		if dst.Is4() {
			if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0); err != nil {
				return err
			}
			return unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: dst.As4()})
		}
		if fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0); err != nil {
			return err
		}
		return unix.Connect(fd, &unix.SockaddrInet6{Port: port, Addr: dst.As16()})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	total := uint64(rate) * uint64(d) / uint64(time.Second)
	evc := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(evc)
		for _, e := range events {
			time.Sleep(time.Until(start.Add(e.at)))
			e.f()
		}
	}()
	buf := make([]byte, 64)
	var seq uint64
	for seq < total {
		select {
		case <-stop: // a nil stop is never ready
			end := uint64(time.Since(start)+tail) * uint64(rate) / uint64(time.Second)
			total = min(total, max(end, seq))
			stop = nil
		default:
		}
		due := uint64(time.Since(start)) * uint64(rate) / uint64(time.Second)
		if due > total {
			due = total
		}
		for ; seq < due; seq++ {
			binary.BigEndian.PutUint64(buf, seq)
			if _, err := unix.Write(fd, buf); err != nil {
				t.Fatalf("send %d: %v", seq, err)
			}
			if progress != nil {
				progress.Store(seq + 1)
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	<-evc
	return seq
}

// judge counts the sequence numbers 0..sent-1 missing from got, those seen
// twice, and those that arrived after a higher one.
func judge(got []uint64, sent uint64) (lost, dup, reordered uint64) {
	seen := make([]bool, sent)
	var max uint64
	for i, s := range got {
		if s >= sent {
			continue
		}
		if seen[s] {
			dup++
		}
		seen[s] = true
		if i > 0 && s < max {
			reordered++
		}
		if s > max {
			max = s
		}
	}
	for _, ok := range seen {
		if !ok {
			lost++
		}
	}
	return
}

// migMove is one move of moveRunOf: the endpoint ep from location s to
// location d (as tandem migrate start --to takes them); "S stops" is E's
// link sIface going down (up again, and the location s again, after).
type migMove struct {
	ep     netip.Addr
	s, d   string
	sIface string
	// blackout and dur: the blackout (S down, nothing to D yet) and the
	// stream's length (0: 300 ms and 1.5 s).
	blackout, dur time.Duration
	// outage, when not nil, makes the switch step wait the blackout out
	// itself (after the blackout step, however late that ran) and is
	// set to how many datagrams were written meanwhile: S down, no
	// switch begun, so the baseline loses them.
	outage *uint64
}

// moveRunOf streams to the endpoint while it moves (mv); hold: the
// gateway holds the blackout's packets (migrate blackout), else it only
// switches when D is up (the baseline).
func moveRunOf(t *testing.T, m *migLab, hold bool, rate int, mv migMove) (sent, lost, dup, reordered uint64) {
	r := listenSeq(t, m.ep, 9000)
	// Warm the path first (the client's ARP for the gateway): under TCG
	// the stream's first datagrams overflowed the unresolved queue.
	if out, err := m.client.Cmd("ping", "-c", "1", "-W", "5", migEP.String()).CombinedOutput(); err != nil {
		t.Logf("warm-up ping to %s: %v: %s", migEP, err, out)
	}
	var progress atomic.Uint64
	blackout, dur := 300*time.Millisecond, 1500*time.Millisecond
	if mv.blackout > 0 {
		blackout = mv.blackout
	}
	if mv.dur > 0 {
		dur = mv.dur
	}
	events := []event{
		{300 * time.Millisecond, func() { m.cli(t, "migrate", "start", mv.ep.String(), "--to", mv.d) }},
		{500 * time.Millisecond, func() {
			if hold {
				m.cli(t, "migrate", "blackout", mv.ep.String())
			}
			m.ep.IP("link", "set", mv.sIface, "down") // S stops
		}},
		{500*time.Millisecond + blackout, func() {
			if mv.outage != nil {
				// Where the steps lag (the VM: each CLI call takes
				// longer than the blackout), the blackout still lasts
				// its time after S went down; what is written in it
				// goes nowhere without the hold.
				from := progress.Load()
				time.Sleep(blackout)
				*mv.outage = progress.Load() - from
			}
			m.cli(t, "migrate", "switch", mv.ep.String()) // D runs
			t.Logf("after the switch:\n%s", m.cli(t, "endpoint", "list").stdout)
			m.cli(t, "migrate", "done", mv.ep.String())
		}},
	}
	// Where the loss is: the sequence numbers sent when each step began
	// and ended, the loss split by them (logged).
	names := []string{"start", "blackout, S down", "switch, done"}
	var marks []uint64
	for i := range events {
		f := events[i].f
		events[i].f = func() { marks = append(marks, progress.Load()); f(); marks = append(marks, progress.Load()) }
	}
	sent = seqSendTo(t, m.client, mv.ep, 9000, rate, dur, events, &progress)
	time.Sleep(300 * time.Millisecond)
	got := r.stop()
	lost, dup, reordered = judge(got, sent)
	if len(marks) == 2*len(names) {
		seen := make([]bool, sent)
		for _, s := range got {
			if s < sent {
				seen[s] = true
			}
		}
		var b strings.Builder
		from, what := uint64(0), "before the move"
		for i := 0; i <= 2*len(names); i++ {
			to := sent
			if i < len(marks) {
				to = min(marks[i], sent)
			}
			var n uint64
			for s := from; s < to; s++ {
				if !seen[s] {
					n++
				}
			}
			fmt.Fprintf(&b, "  %-34s %6d..%-6d lost %d\n", what, from, to, n)
			if i < len(marks) {
				if i%2 == 0 {
					what = "while the step ran: " + names[i/2]
				} else {
					what = "after: " + names[i/2]
				}
			}
			from = to
		}
		t.Logf("hold %v, loss by window (sequence numbers):\n%s", hold, b.String())
	}
	// Back to S for the next run.
	m.ep.IP("link", "set", mv.sIface, "up")
	m.cli(t, "endpoint", "set", mv.ep.String(), mv.s)
	return
}

// vmMoveTiming is a move's pace inside the VM (TCG), for a test whose
// host rate is hostRate datagrams/s: a hundredth of it at
// TANDEM_TEST_SCALE=10 (the rate divided by the scale squared: at a tenth,
// 10,000/s, the guest's receivers starved while a CLI step started and
// lost datagrams before the move began), the blackout divided by the
// scale, and a stream of 8 s, long enough that every step (a CLI call
// takes ~0.7 s there) happens inside it.
func vmMoveTiming(t *testing.T, hostRate int) (rate int, blackout, dur time.Duration) {
	s := testScale(t)
	rate = max(hostRate/(s*s), 200)
	blackout = 300 * time.Millisecond / time.Duration(s)
	t.Logf("in the VM: %d datagrams/s, blackout %s, stream 8 s", rate, blackout)
	return rate, blackout, 8 * time.Second
}

// skipTimingInVM skips a test whose verdict rests on the timing of a
// 300 ms blackout driven by CLI calls, inside the tools/vmtest VM: under
// TCG a CLI call takes a good part of the blackout and the flush competes
// with the emulated receivers, so a loaded run loses packets there that a
// quiet one does not (0 lost in one run, 808 in another, same build).
// TestMigrateStrictLoss runs a scaled move there instead (vmMoveTiming);
// the others (IPv6, routed, failover) run on the host only (the failover
// has a scaled VM version, see its comment, not yet reliable there). The stage,
// the hold and the controller are tested in the VM by TestMigrateStage,
// TestMigCtlMarksSync, the migrate package and TestMigrateTCP.
func skipTimingInVM(t *testing.T) {
	t.Helper()
	// TANDEM_MIGRATE_VM_TIMING=1 runs them in the VM anyway (to study
	// where a loaded VM loses: the tests log the loss by window).
	if os.Getenv("TANDEM_VMTEST") != "" && os.Getenv("TANDEM_MIGRATE_VM_TIMING") == "" {
		t.Skip("skipped: a timing-bound migration verdict does not run inside the VM (TCG); the host runs it")
	}
}

// TestMigrateStrictLoss: a 100k datagrams/s stream to an endpoint that
// moves with a 300 ms blackout loses nothing, duplicates nothing and keeps
// its order with the hold; without the hold it loses about the blackout's
// share (reported side by side).
//
// Inside the VM (TCG) the same verdict at a scaled-down pace (vmMoveTiming).
func TestMigrateStrictLoss(t *testing.T) {
	m := newMigLab(t)
	rate := 100000 / testScale(t)
	mv := migMove{ep: migEP, s: migS, d: migD, sIface: "eths"}
	var outage uint64
	inVM := os.Getenv("TANDEM_VMTEST") != ""
	if inVM {
		rate, mv.blackout, mv.dur = vmMoveTiming(t, 100000)
		mv.outage = &outage
	}
	sentH, lostH, dupH, reoH := moveRunOf(t, m, true, rate, mv)
	sentB, lostB, dupB, reoB := moveRunOf(t, m, false, rate, mv)
	t.Logf("with the hold:    sent %d, lost %d, duplicated %d, reordered %d", sentH, lostH, dupH, reoH)
	t.Logf("without the hold: sent %d, lost %d (%.1f%%; the blackout is 20%% of the run on the host), duplicated %d, reordered %d",
		sentB, lostB, 100*float64(lostB)/float64(sentB), dupB, reoB)
	if inVM {
		// The VM's verdict: the move with the hold loses nothing; the
		// baseline proves its outage was real (at least half of what was
		// written while S was down before the switch began: the rest may
		// reach the gateway after the switch). Nothing goes to
		// results.json from the VM.
		if lostH != 0 || dupH != 0 || reoH != 0 {
			t.Errorf("with the hold: %d lost, %d duplicated, %d reordered; want none", lostH, dupH, reoH)
		}
		if outage == 0 || lostB < outage/2 {
			t.Errorf("without the hold %d of %d lost, %d written while S was down before the switch: the blackout did not happen", lostB, sentB, outage)
		}
		return
	}
	// bench/results.json when TANDEM_BENCH_OUT is set (make bench runs
	// this test too): the loss with the hold against without, same run.
	for _, r := range []bench.Result{
		{Name: fmt.Sprintf("migrate: datagrams lost across a move with a 300 ms blackout (%d pps UDP, 1.5 s, namespaces)", rate), Unit: "datagrams",
			Value: float64(lostH), Anchor: "the same move without the hold, same run", AnchorValue: float64(lostB), Goal: "zero lost, zero duplicated, order kept"},
		{Name: fmt.Sprintf("migrate: datagrams reordered or duplicated across the move (%d pps UDP)", rate), Unit: "datagrams",
			Value: float64(reoH + dupH), Anchor: "the same move without the hold, same run", AnchorValue: float64(reoB + dupB), Goal: "zero"},
	} {
		if _, err := bench.Record(r); err != nil {
			t.Fatal(err)
		}
	}
	if lostH != 0 || dupH != 0 || reoH != 0 {
		t.Errorf("with the hold: %d lost, %d duplicated, %d reordered; want none", lostH, dupH, reoH)
	}
	// The baseline proves the blackout was real: without the hold, the
	// packets of the 300 ms are gone (at least half of that share; the
	// sender may fall behind its rate on a loaded machine).
	if lostB < sentB/10 {
		t.Errorf("without the hold only %d of %d lost: the blackout did not happen", lostB, sentB)
	}
	out := m.cli(t, "endpoint", "list")
	t.Logf("%s", out.stdout)
}

// TestMigrateTCP: a TCP transfer across the move (with a blackout)
// arrives whole (SHA-256 intact).
func TestMigrateTCP(t *testing.T) {
	m := newMigLab(t)
	size := (32 << 20) / testScale(t)
	var ln int
	err := m.ep.Do(func() error {
		var err error
		if ln, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0); err != nil {
			return err
		}
		if err := unix.Bind(ln, &unix.SockaddrInet4{Port: 9100}); err != nil {
			return err
		}
		return unix.Listen(ln, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	lnf := os.NewFile(uintptr(ln), "listener")
	defer lnf.Close()
	got := make(chan [32]byte, 1)
	go func() {
		l, err := net.FileListener(lnf)
		if err != nil {
			got <- [32]byte{}
			return
		}
		c, err := l.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		got <- s
	}()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	var conn net.Conn
	if err := m.client.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(migEP, 9100).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	timeouts0, _ := m.client.SNMP("TcpExt", "TCPTimeouts")
	sent := make(chan error, 1)
	go func() {
		// Paced in chunks so the transfer spans the move.
		chunk := len(data) / 20
		for off := 0; off < len(data); off += chunk {
			if _, err := conn.Write(data[off:min(off+chunk, len(data))]); err != nil {
				sent <- err
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		sent <- conn.(*net.TCPConn).CloseWrite()
	}()
	time.Sleep(200 * time.Millisecond)
	m.cli(t, "migrate", "start", migEP.String(), "--to", migD)
	m.cli(t, "migrate", "blackout", migEP.String())
	m.ep.IP("link", "set", "eths", "down")
	time.Sleep(300 * time.Millisecond)
	m.cli(t, "migrate", "switch", migEP.String())
	m.cli(t, "migrate", "done", migEP.String())
	if err := <-sent; err != nil {
		t.Fatalf("send: %v", err)
	}
	select {
	case s := <-got:
		if s != want {
			t.Fatalf("received SHA-256 %x, want %x", s, want)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("transfer did not finish within 60 s")
	}
	conn.Close()
	timeouts1, _ := m.client.SNMP("TcpExt", "TCPTimeouts")
	t.Logf("%d MiB across the move, SHA-256 intact; client retransmission timeouts: %d", size>>20, timeouts1-timeouts0)

	// A location update during a move is queued (said so, exit 0) and
	// applied after it: moved back to S, the update names D.
	m.ep.IP("link", "set", "eths", "up")
	m.cli(t, "migrate", "start", migEP.String(), "--to", migS)
	if out := m.cli(t, "endpoint", "set", migEP.String(), migD).stdout; !strings.Contains(out, "queued") {
		t.Errorf("endpoint set during a move said %q, want it queued", out)
	}
	m.cli(t, "migrate", "switch", migEP.String())
	m.cli(t, "migrate", "done", migEP.String())
	out := m.cli(t, "endpoint", "list", "--json").stdout
	if !strings.Contains(out, `"Hop": "`+migD+`"`) || strings.Contains(out, `"Migration": {`) {
		t.Errorf("after the move with a queued update: %s, want located via %s (the queued update), no migration", out, migD)
	}
}

// TestMigrateNextHopWatcher: the daemon moves the forward caches' next-hop
// generation (mig_nh_gen) on a routing change, so an endpoint's cached
// FIB answer (its MACs, its egress) is looked up again at its next packet:
// the stage reads no clock to bound it.
func TestMigrateNextHopWatcher(t *testing.T) {
	m := newMigLab(t)
	gen, err := ebpf.LoadPinnedMap(maps.Pins{Root: m.gw.BPFFS()}.Map(bpf.MigrateMapMigNhGen), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gen.Close()
	read := func() uint32 {
		var g uint32
		if err := gen.Lookup(uint32(0), &g); err != nil {
			t.Fatal(err)
		}
		return g
	}
	before := read()
	if err := m.gw.IP("neigh", "replace", migD, "lladdr", "02:00:00:96:03:04", "dev", "eth2", "nud", "permanent"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Duration(testScale(t))*5*time.Second, "mig_nh_gen moves after a neighbour change", func() (bool, string) {
		g := read()
		return g != before, fmt.Sprintf("mig_nh_gen %d, %d before the change", g, before)
	})
}
