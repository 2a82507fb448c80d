package loader_test

// End-to-end tests: the tandem binary on a lab gateway, real sockets on a
// lab client, traffic through the attached programs.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
	"github.com/tandem-net/tandem/tools/traffic"
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		if err := lab.Sweep(); err != nil {
			fmt.Fprintln(os.Stderr, "sweep stale labs:", err)
		}
	}
	os.Exit(m.Run())
}

var (
	vip4 = netip.MustParseAddr("10.77.0.100")
	vip6 = netip.MustParseAddr("fd77::100")
)

// gatewayLab is a client and a gateway on one veth link; the gateway
// serves the VIPs on its loopback.
func gatewayLab(t *testing.T) *lab.Lab {
	t.Helper()
	testenv.RequireRoot(t)
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{
			{Name: "client", Routes: []string{"10.77.0.0/24 via 10.77.1.1", "fd77::/64 via fd77:1::1"}},
			{Name: "gw", Forward: true, Loopback: []string{"10.77.0.100/32", "fd77::100/128"}},
		},
		Links: []lab.LinkSpec{{
			A: lab.End{Host: "client", Iface: "eth0", Addrs: []string{"10.77.1.2/24", "fd77:1::2/64"}},
			B: lab.End{Host: "gw", Iface: "eth0", Addrs: []string{"10.77.1.1/24", "fd77:1::1/64"}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// down first, so a failing test still leaves no pin behind
		tandem(t, l.Host("gw"), "down", "--bpffs", l.Host("gw").BPFFS())
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

type result struct {
	stdout, stderr string
	code           int
}

// tandem runs the tandem binary inside host h.
func tandem(t testing.TB, h *lab.Host, args ...string) result {
	t.Helper()
	return tandemEnv(t, h, nil, args...)
}

func mustTandem(t *testing.T, h *lab.Host, args ...string) result {
	t.Helper()
	r := tandem(t, h, args...)
	if r.code != 0 {
		t.Fatalf("tandem %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func status(t *testing.T, h *lab.Host) *loader.Status {
	t.Helper()
	r := mustTandem(t, h, "status", "--json", "--bpffs", h.BPFFS())
	var st loader.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return &st
}

func vipCounters(t *testing.T, h *lab.Host, vip netip.Addr) loader.VIPStatus {
	t.Helper()
	for _, v := range status(t, h).VIPs {
		if v.Addr == vip {
			return v
		}
	}
	t.Fatalf("VIP %s not in status", vip)
	return loader.VIPStatus{}
}

// progIDs lists the attached programs by attachment pin. An XDP chain
// adds its stages ("xdp@eth0#3" for slot 3); the chain's
// entry stays when up swaps stages in their slots, so it is listed under
// its own key ("xdp@eth0#entry") and left out of "every program replaced"
// checks (stageIDs).
func progIDs(st *loader.Status) map[string]ebpf.ProgramID {
	out := map[string]ebpf.ProgramID{}
	for _, a := range st.Attachments {
		if len(a.Chain) == 0 {
			out[a.Pin] = a.ProgID
			continue
		}
		out[a.Pin+"#entry"] = a.ProgID
		for _, s := range a.Chain {
			if s.ProgID != 0 {
				out[fmt.Sprintf("%s#%d", a.Pin, s.Slot)] = s.ProgID
			}
		}
	}
	return out
}

// stageIDs is progIDs without the chains' entries: the programs every up
// replaces.
func stageIDs(st *loader.Status) map[string]ebpf.ProgramID {
	out := progIDs(st)
	for k := range out {
		if strings.HasSuffix(k, "#entry") {
			delete(out, k)
		}
	}
	return out
}

// TestUpPinsWithBTF: after up, bpftool reads the pinned maps with their
// field names, and status shows every attachment healthy.
func TestUpPinsWithBTF(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--vip", vip4.String(), "--vip", vip6.String(), "--bpffs", gw.BPFFS())

	bpftool := testenv.RequireCommand(t, "bpftool")
	out, err := exec.Command(bpftool, "map", "dump", "pinned", filepath.Join(gw.BPFFS(), "maps", "vip_gate")).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool: %v\n%s", err, out)
	}
	for _, field := range []string{`"addr"`, `"owned"`, `"index"`} {
		if !bytes.Contains(out, []byte(field)) {
			t.Errorf("bpftool map dump shows no %s field (no BTF on the pinned map?):\n%s", field, out)
		}
	}
	out, err = exec.Command(bpftool, "map", "dump", "pinned", filepath.Join(gw.BPFFS(), "maps", "vip_stats")).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(`"rx_packets"`)) {
		t.Errorf("bpftool map dump vip_stats: %v\n%.400s", err, out)
	}

	st := status(t, gw)
	if !st.Healthy() || len(st.Attachments) != 2 {
		t.Fatalf("status: healthy=%v attachments=%+v", st.Healthy(), st.Attachments)
	}
	for _, a := range st.Attachments {
		if a.ProgID == 0 {
			t.Errorf("%s: no program id", a.Pin)
		}
	}
	// Real traffic reaches the VIP and is counted both ways.
	srv, err := traffic.ListenEcho(gw.Do, netip.AddrPortFrom(vip6, 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	f, err := traffic.StartFlood(l.Host("client").Do, netip.AddrPortFrom(vip6, 9000), traffic.FloodConfig{Max: 200})
	if err != nil {
		t.Fatal(err)
	}
	f.Wait()
	if r := f.Stop(3 * time.Second); r.Lost() != 0 {
		t.Fatalf("lost %d of %d datagrams to the IPv6 VIP", r.Lost(), r.Sent)
	}
	c := vipCounters(t, gw, vip6).Counters
	if c.RxPackets < 200 || c.TxPackets < 200 {
		t.Fatalf("VIP counters after 200 echoes: %+v", c)
	}
}

// TestTCPathChoice: with --tc auto the loader takes TCX where the kernel
// has it and clsact + cls_bpf where it does not, and says which.
func TestTCPathChoice(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	r := mustTandem(t, gw, "up", "--once", "-i", "eth0", "--bpffs", gw.BPFFS())
	want := "clsact"
	if err := loader.HaveTCX(); err == nil {
		want = "tcx"
	} else {
		t.Logf("no TCX here: %v", err)
	}
	var got string
	for _, a := range status(t, gw).Attachments {
		if a.Hook == "tc-egress" {
			got = a.Via
		}
	}
	if got != want || !strings.Contains(r.stdout, want) {
		t.Fatalf("tc egress attached via %q, want %q\n%s", got, want, r.stdout)
	}
	t.Logf("kernel %s: the loader took the %s path for TC", kernelRelease(), got)
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// TestReplaceUnderFlood: `up` again, while a UDP echo flood runs through
// both the ingress and the egress programs, swaps every program and loses
// no datagram, on each attach path, and when a hook moves between paths.
func TestReplaceUnderFlood(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "cookie.key")
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	proxy := []string{"--proxy-iface", "eth0", "--proxy-secret", secret}
	cases := []struct {
		name      string
		flags     [][]string // one set of flags per replacement, cycled
		clsact    bool       // create the clsact qdisc before the flood
		rootSwaps int        // at least this many rounds swap the chain's entry
	}{
		{"xdp and the kernel's tc path", [][]string{{"--tc", "auto"}}, false, 0},
		{"xdp generic and clsact", [][]string{{"--tc", "clsact", "--xdp-mode", "generic"}}, false, 0},
		{"tc ingress and egress on clsact", [][]string{{"--ingress", "tc", "--tc", "clsact"}}, false, 0},
		// Creating or deleting a clsact qdisc deactivates the device's
		// queues for a moment (the kernel's qdisc_graft), dropping
		// egress frames; that is a cost of the first move onto clsact,
		// not of replacing programs, so the qdisc is there beforehand.
		{"moving between tcx and clsact", [][]string{{"--tc", "tcx"}, {"--tc", "clsact"}}, true, 0},
		// The chain: the SYN proxy joins the gate on eth0 (a new entry
		// through the link), both stages are swapped in their slots, the
		// proxy leaves (a new entry again), and around once more. The
		// flood is UDP: every stage declines it on its way to the stack.
		{"chain stages and root on tcx", [][]string{{"--tc", "auto"}, append([]string{"--tc", "auto"}, proxy...), append([]string{"--tc", "auto"}, proxy...)}, false, 4},
		{"chain stages and root on clsact", [][]string{{"--tc", "clsact"}, append([]string{"--tc", "clsact"}, proxy...), append([]string{"--tc", "clsact"}, proxy...)}, true, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rootSwaps := 0
			if tc.flags[0][1] == "tcx" {
				testenv.RequireFeature(t, "tcx links", loader.HaveTCX())
			}
			if tc.flags[0][1] == "auto" {
				path := "clsact (no TCX on this kernel)"
				if loader.HaveTCX() == nil {
					path = "tcx"
				}
				t.Logf("--tc auto takes %s", path)
			}
			l := gatewayLab(t)
			gw, client := l.Host("gw"), l.Host("client")
			if tc.clsact {
				if out, err := gw.Cmd("tc", "qdisc", "add", "dev", "eth0", "clsact").CombinedOutput(); err != nil {
					t.Fatalf("tc qdisc add: %v %s", err, out)
				}
			}
			base := []string{"up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS()}
			mustTandem(t, gw, append(base, tc.flags[0]...)...)

			srv, err := traffic.ListenEcho(gw.Do, netip.AddrPortFrom(vip4, 9000))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			f, err := traffic.StartFlood(client.Do, netip.AddrPortFrom(vip4, 9000), traffic.FloodConfig{Burst: 20, Gap: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			// Let the flood get going, then replace under it.
			for f.Echoes() < 500 {
				time.Sleep(5 * time.Millisecond)
			}
			const rounds = 6
			seen := map[ebpf.ProgramID]bool{}
			entries := map[ebpf.ProgramID]bool{}
			for id := range maps.Values(progIDs(status(t, gw))) {
				entries[id] = true
			}
			for i := 0; i < rounds; i++ {
				before := f.Sent()
				mustTandem(t, gw, append(base, tc.flags[(i+1)%len(tc.flags)]...)...)
				t.Logf("round %d %v: sent %d..%d", i, tc.flags[(i+1)%len(tc.flags)], before, f.Sent())
				st := status(t, gw)
				for _, id := range stageIDs(st) {
					if seen[id] {
						t.Errorf("round %d: program %d still attached: up did not replace it", i, id)
					}
					seen[id] = true
				}
				for k, id := range progIDs(st) {
					if strings.HasSuffix(k, "#entry") && !entries[id] {
						entries[id] = true
						rootSwaps++
					}
				}
				if f.Sent() == before {
					t.Fatalf("round %d: the flood stalled", i)
				}
			}
			time.Sleep(200 * time.Millisecond)
			r := f.Stop(5 * time.Second)
			if r.Lost() != 0 {
				for _, h := range []*lab.Host{gw, client} {
					o1, _ := h.Cmd("ip", "-s", "link", "show", "eth0").CombinedOutput()
					o2, _ := h.Cmd("nstat", "-a").CombinedOutput()
					t.Logf("%s:\n%s\n%s", h.Name, o1, o2)
				}
				t.Fatalf("lost %d of %d datagrams across %d replacements; the server got %d (first missing: %v)", r.Lost(), r.Sent, rounds, srv.Received.Load(), r.Missing)
			}
			if r.Sent < 2000 {
				t.Fatalf("only %d datagrams sent: the flood did not cover the replacements", r.Sent)
			}
			c := vipCounters(t, gw, vip4).Counters
			if c.RxPackets < r.Sent || c.TxPackets < r.Sent {
				t.Fatalf("the programs did not see the flood: %d sent, counters %+v", r.Sent, c)
			}
			if srv.Received.Load() != r.Sent {
				t.Fatalf("server received %d of %d", srv.Received.Load(), r.Sent)
			}
			if rootSwaps < tc.rootSwaps {
				t.Fatalf("%d root swaps, want %d: the stage set changed but the chain's entry stayed", rootSwaps, tc.rootSwaps)
			}
			t.Logf("%d datagrams echoed across %d replacements (%d of them root swaps), none lost", r.Sent, rounds, rootSwaps)
		})
	}
}

// daemon starts `tandem up` as a daemon in h and waits until it runs.
func daemon(t *testing.T, h *lab.Host, args ...string) *exec.Cmd {
	t.Helper()
	cmd := h.Cmd(testenv.Tandem(t), append([]string{"up", "--check-interval", "100ms"}, args...)...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	ready := make(chan error, 1)
	var log bytes.Buffer
	logDone := make(chan struct{})
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-logDone
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(pr)
		sig := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !sig && strings.Contains(sc.Text(), "daemon running") {
				sig = true
				ready <- nil
			}
		}
		if !sig {
			ready <- fmt.Errorf("daemon exited before running:\n%s", log.String())
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon not running after 20s:\n%s", log.String())
	}
	return cmd
}

func echoes(t *testing.T, client *lab.Host, n uint64) {
	t.Helper()
	f, err := traffic.StartFlood(client.Do, netip.AddrPortFrom(vip4, 9000), traffic.FloodConfig{Max: n})
	if err != nil {
		t.Fatal(err)
	}
	f.Wait()
	if r := f.Stop(3 * time.Second); r.Lost() != 0 {
		t.Fatalf("lost %d of %d datagrams", r.Lost(), r.Sent)
	}
}

// TestDaemonKillAdoptDown: SIGKILL of the daemon leaves the datapath
// running; a new daemon adopts the pinned links (same link ids, new
// programs); a broken attachment is repaired by the daemon; down leaves no
// pin, no program and no attachment.
func TestDaemonKillAdoptDown(t *testing.T) {
	l := gatewayLab(t)
	gw, client := l.Host("gw"), l.Host("client")
	args := []string{"-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--state-dir", t.TempDir()}
	srv, err := traffic.ListenEcho(gw.Do, netip.AddrPortFrom(vip4, 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	d := daemon(t, gw, args...)
	before := status(t, gw)
	echoes(t, client, 100)

	if err := d.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	rx := vipCounters(t, gw, vip4).Counters.RxPackets
	echoes(t, client, 1000)
	if got := vipCounters(t, gw, vip4).Counters.RxPackets; got < rx+1000 {
		t.Fatalf("after SIGKILL the programs stopped counting: rx %d -> %d", rx, got)
	}

	// A second daemon adopts what is pinned.
	d2 := daemon(t, gw, args...)
	after := status(t, gw)
	linkIDs := map[string]uint32{}
	for _, a := range before.Attachments {
		linkIDs[a.Pin] = uint32(a.LinkID)
	}
	for _, a := range after.Attachments {
		if uint32(a.LinkID) != linkIDs[a.Pin] {
			t.Errorf("%s: link %d replaced by %d: the new daemon re-attached instead of adopting", a.Pin, linkIDs[a.Pin], a.LinkID)
		}
	}
	for k, id := range stageIDs(after) {
		if id == stageIDs(before)[k] {
			t.Errorf("%s: program %d not replaced by the new up", k, id)
		}
	}
	// While it runs, a second up applies and leaves the daemon in charge.
	r := mustTandem(t, gw, append([]string{"up"}, args...)...)
	if !strings.Contains(r.stdout, "already serves") {
		t.Errorf("second up with a daemon running: %q", r.stdout)
	}
	// The daemon repairs a removed attachment.
	var tcPin string
	for _, a := range after.Attachments {
		if a.Hook == "tc-egress" {
			tcPin = filepath.Join(gw.BPFFS(), "attach", a.Pin)
		}
	}
	if err := os.Remove(tcPin); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(tcPin); err == nil && status(t, gw).Healthy() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not repair %s", tcPin)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// SIGTERM stops the daemon cleanly and leaves the datapath.
	d2.Process.Signal(syscall.SIGTERM)
	if err := d2.Wait(); err != nil {
		t.Fatalf("daemon exit on SIGTERM: %v", err)
	}
	echoes(t, client, 100)

	last := status(t, gw)
	mustTandem(t, gw, "down", "--bpffs", gw.BPFFS())
	if _, err := os.Stat(gw.BPFFS()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("down left %s behind", gw.BPFFS())
	}
	assertClean(t, gw, "eth0", last)
	echoes(t, client, 100) // plain routing still works
}

// assertClean checks with ip, tc and bpftool that nothing of st is left.
func assertClean(t *testing.T, h *lab.Host, iface string, st *loader.Status) {
	t.Helper()
	// The kernel detaches an unpinned link and frees programs once the
	// last reference goes, from a work queue: on a busy machine that
	// takes seconds. Wait for it, then say what is left.
	deadline := time.Now().Add(20 * time.Second)
	for {
		left := leftovers(t, h, iface, st)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, l := range left {
				t.Error(l)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leftovers lists what of tandem's is still on iface or loaded.
func leftovers(t *testing.T, h *lab.Host, iface string, st *loader.Status) []string {
	t.Helper()
	var left []string
	out, _ := h.Cmd("ip", "-d", "link", "show", iface).CombinedOutput()
	if bytes.Contains(out, []byte("prog/xdp")) {
		left = append(left, fmt.Sprintf("ip link still shows an XDP program:\n%s", out))
	}
	out, _ = h.Cmd("bpftool", "-j", "net", "show", "dev", iface).CombinedOutput()
	var nets []struct {
		XDP []any `json:"xdp"`
		TC  []any `json:"tc"`
	}
	if err := json.Unmarshal(out, &nets); err != nil {
		t.Fatalf("bpftool net show: %v\n%s", err, out)
	}
	for _, n := range nets {
		if len(n.XDP)+len(n.TC) != 0 {
			left = append(left, fmt.Sprintf("bpftool net show still lists programs on %s: %s", iface, out))
		}
	}
	for _, dir := range []string{"ingress", "egress"} {
		out, _ := h.Cmd("tc", "filter", "show", "dev", iface, dir).CombinedOutput()
		if len(bytes.TrimSpace(out)) != 0 {
			left = append(left, fmt.Sprintf("tc filter %s still shows: %s", dir, out))
		}
	}
	for _, a := range st.Attachments {
		if p, err := ebpf.NewProgramFromID(a.ProgID); err == nil {
			p.Close()
			left = append(left, fmt.Sprintf("program %d (%s) still loaded after down", a.ProgID, a.Pin))
		}
	}
	return left
}

// TestDownClsactKeepsForeignQdisc: down removes a clsact qdisc only when
// tandem created it.
func TestDownClsact(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	// Someone else's clsact with someone else's filter.
	if out, err := gw.Cmd("tc", "qdisc", "add", "dev", "eth0", "clsact").CombinedOutput(); err != nil {
		t.Fatalf("tc qdisc add: %v %s", err, out)
	}
	if out, err := gw.Cmd("tc", "filter", "add", "dev", "eth0", "ingress", "pref", "1", "protocol", "all", "u32", "match", "u32", "0", "0", "classid", "1:1").CombinedOutput(); err != nil {
		t.Fatalf("tc filter add: %v %s", err, out)
	}
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--ingress", "tc", "--tc", "clsact", "--bpffs", gw.BPFFS())
	mustTandem(t, gw, "down", "--bpffs", gw.BPFFS())
	out, _ := gw.Cmd("tc", "filter", "show", "dev", "eth0", "ingress").CombinedOutput()
	if !bytes.Contains(out, []byte("u32")) || bytes.Contains(out, []byte("vipgate")) {
		t.Fatalf("after down, ingress filters: %s", out)
	}
	out, _ = gw.Cmd("tc", "qdisc", "show", "dev", "eth0").CombinedOutput()
	if !bytes.Contains(out, []byte("clsact")) {
		t.Fatalf("down removed a clsact qdisc it did not create: %s", out)
	}

	// On a bare interface, tandem's own clsact goes with it.
	if out, err := gw.Cmd("tc", "qdisc", "del", "dev", "eth0", "clsact").CombinedOutput(); err != nil {
		t.Fatalf("tc qdisc del: %v %s", err, out)
	}
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--ingress", "tc", "--tc", "clsact", "--bpffs", gw.BPFFS())
	st := status(t, gw)
	if len(st.Attachments) != 2 || st.Attachments[0].Via != "clsact" {
		t.Fatalf("attachments: %+v", st.Attachments)
	}
	// Someone deletes tandem's filter: status says so and exits 1; up repairs.
	if out, err := gw.Cmd("tc", "filter", "del", "dev", "eth0", "egress", "pref", "31328").CombinedOutput(); err != nil {
		t.Fatalf("tc filter del: %v %s", err, out)
	}
	if r := tandem(t, gw, "status", "--bpffs", gw.BPFFS()); r.code != 1 || !strings.Contains(r.stdout, "filter is gone") {
		t.Fatalf("status with a deleted filter: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--ingress", "tc", "--tc", "clsact", "--bpffs", gw.BPFFS())
	st = status(t, gw)
	if !st.Healthy() {
		t.Fatalf("up did not repair the filter: %+v", st.Attachments)
	}
	mustTandem(t, gw, "down", "--bpffs", gw.BPFFS())
	out, _ = gw.Cmd("tc", "qdisc", "show", "dev", "eth0").CombinedOutput()
	if bytes.Contains(out, []byte("clsact")) {
		t.Fatalf("down left tandem's clsact qdisc: %s", out)
	}
	assertClean(t, gw, "eth0", st)
}
