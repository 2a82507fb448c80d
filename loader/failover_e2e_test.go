package loader_test

// VIP ownership and failover end to end: two gateways running the daemon
// with the election, the SYN proxy and the state sync, between a client
// segment and a backend segment (bridges), real TCP connections through
// whichever gateway owns the VIPs.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-net/tandem/syncer/vip"
	"github.com/tandem-net/tandem/tools/gwpair"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
	"golang.org/x/sys/unix"
)

const (
	fvip6    = gwpair.VIP6 // the IPv6 service VIP
	finner6  = gwpair.Inner6
	fvip     = gwpair.VIP   // the service VIP, on the client segment
	finner   = gwpair.Inner // the backends' gateway, on the backend segment
	fport    = gwpair.Port
	fbackend = gwpair.BackendPort
)

// pairLab: client -- [front bridge] -- gwa, gwb -- [back bridge] -- be1, be2;
// gwa -- gwb over sync0 (state sync and adverts). The fields name the
// shared gwpair.Pair's.
type pairLab struct {
	*gwpair.Pair
	client   *lab.Host
	gw       map[string]*lab.Host // "a", "b"
	backends []*lab.Host
	secret   string
	certs    string
	state    map[string]string
	daemons  map[string]*gwpair.Daemon
}

func newPairLab(t testing.TB) *pairLab {
	t.Helper()
	testenv.RequireRoot(t)
	// Before the cleanup that stops the daemons: cleanups run last
	// first, so the daemons are gone before their state directories.
	dir := t.TempDir()
	gp, err := gwpair.New(testenv.Tandem(t), dir, advertInterval())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// What each daemon said, for a failure seen only in CI: the
			// last lines, where the state that never settled shows.
			for g, d := range gp.Daemons {
				t.Logf("gw%s's daemon, last lines:\n%s", g, tailLines(d.Log(), 60))
			}
		}
		if err := gp.Close(); err != nil {
			t.Error(err)
		}
	})
	return &pairLab{Pair: gp, client: gp.Client, gw: gp.GW, backends: gp.Backends, secret: gp.Secret, certs: gp.Certs,
		state: gp.State, daemons: gp.Daemons}
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// advertInterval is 50 ms, the interval the failover goals are set for;
// slower under TCG (TANDEM_TEST_SCALE), where a 150 ms silence is no
// proof of death.
func advertInterval() time.Duration {
	s, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE"))
	if err != nil || s < 1 {
		s = 1
	}
	return time.Duration(s) * 50 * time.Millisecond
}

// start runs host g's daemon until the test ends or it is killed.
func (p *pairLab) start(t testing.TB, g string, extra ...string) {
	t.Helper()
	if _, err := p.Start(g, nil, extra...); err != nil {
		t.Fatal(err)
	}
}

// vipStatus asks host g's daemon (tandem vip --json).
func (p *pairLab) vipStatus(t testing.TB, g string) (vip.Status, error) {
	t.Helper()
	return p.VIPStatus(g)
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if err := gwpair.WaitFor(d, what, cond); err != nil {
		t.Fatal(err)
	}
}

// owners reports which daemons say they own the VIPs, and whether the
// standby has caught up.
func (p *pairLab) owners(t testing.TB) (own map[string]bool, caught map[string]bool, state string) {
	return p.Owners()
}

// settled waits until exactly want owns and the other daemon (if running)
// has caught up.
func (p *pairLab) settled(t testing.TB, want string, d time.Duration) {
	t.Helper()
	waitFor(t, d, "gw"+want+" owns the VIPs and the other caught up", func() (bool, string) { return p.Settled(want) })
}

// serve runs the backends' upload/download server (see proxyLab.serve).
func (p *pairLab) serve(t testing.TB) {
	(&proxyLab{backends: p.backends}).serve(t)
}

// stream is a connection through the VIP that uploads in two halves with
// a pause between (the failover happens in the pause), then checks both
// directions' contents like proxyLab.transfer.
type stream struct {
	c    net.Conn
	up   []byte
	errc chan error
}

func (p *pairLab) open(t testing.TB) *stream { return p.openTo(t, fvip) }

// openTo opens a stream to vip (either family).
func (p *pairLab) openTo(t testing.TB, vip string) *stream {
	t.Helper()
	var c net.Conn
	if err := p.client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(vip, strconv.Itoa(fport)), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := newStream(c)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(s.up[:xferBytes/2]); err != nil {
		t.Fatal(err)
	}
	return s
}

// newStream is a stream on c with xferBytes of random upload.
func newStream(c net.Conn) *stream {
	s := &stream{c: c, up: make([]byte, xferBytes), errc: make(chan error, 1)}
	for i := range s.up {
		s.up[i] = byte(rand.Uint32())
	}
	return s
}

// finish sends the second half and checks everything.
func (s *stream) finish() error { return s.finishFrom(xferBytes / 2) }

// finishFrom sends the upload from off on, then checks everything.
func (s *stream) finishFrom(off int) error {
	defer s.c.Close()
	go func() {
		_, err := s.c.Write(s.up[off:])
		if err == nil {
			err = s.c.(*net.TCPConn).CloseWrite()
		}
		s.errc <- err
	}()
	return s.check()
}

// check reads the answer to the end and compares both directions.
func (s *stream) check() error {
	got, err := io.ReadAll(s.c)
	if err != nil {
		return fmt.Errorf("read: %w (after %d bytes)", err, len(got))
	}
	if err := <-s.errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	want := sha256.Sum256(s.up)
	return checkAnswer(got, want[:])
}

// checkAnswer checks what the test server sent back for an upload whose
// SHA-256 is sum: the hash, then xferBytes seeded by it.
func checkAnswer(got, sum []byte) error {
	if len(got) != 32+xferBytes {
		return fmt.Errorf("got %d bytes back, want %d", len(got), 32+xferBytes)
	}
	if !bytes.Equal(got[:32], sum) {
		return errors.New("the backend's hash of the upload differs: upload corrupted")
	}
	exp, _ := io.ReadAll(io.LimitReader(seeded(sum), xferBytes))
	if !bytes.Equal(got[32:], exp) {
		return errors.New("download corrupted")
	}
	return nil
}

// newConn runs one whole transfer through the VIP.
func (p *pairLab) newConn(t testing.TB) error {
	t.Helper()
	return p.open(t).finish()
}

// TestFailoverKill: gwa owns the VIPs and serves 8 connections through the
// SYN proxy; its daemon is SIGKILLed and its interfaces go down. gwb takes
// the VIPs (probe, addresses, gate, announcements); the 8 connections
// finish with both directions' contents intact; new connections work.
// gwa, restarted, rejoins as standby, catches up, and does not take the
// VIPs back (no preemption).
func TestFailoverKill(t *testing.T) {
	p := newPairLab(t)
	p.serve(t)
	p.start(t, "a")
	p.start(t, "b")
	p.settled(t, "a", 30*time.Second)
	// A hostile host on the client segment: garbage, adverts that claim
	// ownership signed with the wrong key, and some signed with the
	// pair's secret (a host that stole it). None comes from a peer
	// address: refused and counted as such; nothing changes.
	secret, err := os.ReadFile(p.secret)
	if err != nil {
		t.Fatal(err)
	}
	forge := func() [][]byte {
		var out [][]byte
		for i := range 10 {
			a := vip.Advert{Name: "a", Boot: uint64(i), Seq: 1, SentNanos: time.Now().UnixNano(), Priority: 255, Owner: true, Healthy: true}
			b, _ := a.Marshal([]byte("not the pair's secret at all......"))
			signed, _ := a.Marshal(secret)
			out = append(out, b, []byte("garbage"), signed)
		}
		return out
	}()
	if err := p.client.Do(func() error {
		c, err := net.Dial("udp", "10.79.1.3:7401")
		if err != nil {
			return err
		}
		defer c.Close()
		for _, b := range forge {
			c.Write(b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "gwb refused the 30 forged adverts as from a stranger", func() (bool, string) {
		st, err := p.vipStatus(t, "b")
		if err != nil {
			return false, err.Error()
		}
		return st.RefusedBy.WrongSource >= 30 && !st.Owner, fmt.Sprintf("refused %d (%+v), owner %v", st.Refused, st.RefusedBy, st.Owner)
	})
	p.settled(t, "a", 5*time.Second)
	const n = 8
	streams := make([]*stream, n)
	for i := range streams {
		streams[i] = p.openTo(t, []string{fvip, fvip6}[i%2]) // both families
	}
	// The standby has every connection before the failover.
	waitFor(t, 10*time.Second, "gwb has the 8 connection entries", func() (bool, string) {
		a, b := connTable(t, p.gw["a"]), connTable(t, p.gw["b"])
		return len(b) >= n && len(a) == len(b), fmt.Sprintf("gwa %d, gwb %d", len(a), len(b))
	})

	p.daemons["a"].Kill()
	for _, i := range []string{"eth0", "eth1"} {
		if err := p.gw["a"].IP("link", "set", i, "down"); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	waitFor(t, 10*time.Second, "gwb owns the VIPs", func() (bool, string) {
		st, err := p.vipStatus(t, "b")
		if err != nil {
			return false, err.Error()
		}
		return st.Owner, st.Why
	})
	t.Logf("gwb owns the VIPs %s after gwa went", time.Since(start).Round(time.Millisecond))
	for _, l := range strings.Split(p.daemons["b"].Log(), "\n") {
		if strings.Contains(l, "took the VIPs") || strings.Contains(l, "sync role") {
			t.Log(l)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, s := range streams {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.finish() }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("connection %d across the failover: %v", i, err)
		}
	}
	for _, v := range []string{fvip, fvip6} {
		if err := p.openTo(t, v).finish(); err != nil {
			t.Errorf("a new connection to %s after the failover: %v", v, err)
		}
	}
	if st := proxyStatsAt(t, p.gw["b"]); st["established"] != 2 {
		t.Errorf("gwb's counters: %v (want exactly the new connections' handshakes)", st)
	}

	// gwa comes back: a standby that catches up and leaves the VIPs be.
	// A connection stays open meanwhile (closed ones expire after 10 s
	// idle: in a slow VM before the tables are compared).
	live := p.open(t)
	for _, i := range []string{"eth0", "eth1"} {
		if err := p.gw["a"].IP("link", "set", i, "up"); err != nil {
			t.Fatal(err)
		}
	}
	p.start(t, "a")
	p.settled(t, "b", 30*time.Second)
	time.Sleep(500 * time.Millisecond) // ten adverts: still gwb's
	own, _, state := p.owners(t)
	if !own["b"] || own["a"] {
		t.Errorf("after gwa rejoined: %s", state)
	}
	if err := p.newConn(t); err != nil {
		t.Errorf("a new connection after gwa rejoined: %v", err)
	}
	// Caught up means the same table: gwb's entries, the open one too.
	waitFor(t, 10*time.Second, "gwa's connection table equals gwb's", func() (bool, string) {
		a, b := connTable(t, p.gw["a"]), connTable(t, p.gw["b"])
		return len(b) >= 1 && reflect.DeepEqual(a, b), fmt.Sprintf("gwa %d entries, gwb %d", len(a), len(b))
	})
	if err := live.finish(); err != nil {
		t.Errorf("the connection open while gwa rejoined: %v", err)
	}
	if d := p.daemons["b"].Log(); !strings.Contains(d, "took the VIPs") {
		t.Errorf("gwb's log does not say it took the VIPs:\n%s", d)
	}
}

// steady is a connection through the VIP that uploads 4 KiB every 10 ms
// until stopped: a live flow for a change of owner. Both of its ends are
// in this process (the backends are the test's own server), so their TCP
// counters say exactly how many segments went missing: every segment one
// end sent (retransmissions and pure ACKs included) was counted in by the
// other, or it was lost on the way. Retransmissions prove nothing here:
// the lab's veths reorder bursts (per-CPU backlogs), and TCP answers that
// with fast retransmissions of segments that were not lost.
type steady struct {
	c, be *net.TCPConn
	sum   hash.Hash // of what was written
	quit  chan struct{}
	errc  chan error
	base  [2]*unix.TCPInfo
}

func (p *pairLab) steady(t testing.TB) *steady {
	t.Helper()
	var c net.Conn
	if err := p.client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(fvip, strconv.Itoa(fport)), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	s := &steady{c: c.(*net.TCPConn), sum: sha256.New(), quit: make(chan struct{}), errc: make(chan error, 1)}
	waitFor(t, 5*time.Second, "the backend accepted the connection", func() (bool, string) {
		be, ok := accepted.Load(c.LocalAddr().String())
		if ok {
			s.be = be.(*net.TCPConn)
		}
		return ok, c.LocalAddr().String()
	})
	var err error
	if s.base, err = s.quiet(); err != nil {
		t.Fatal(err)
	}
	go func() {
		data := seeded([]byte("steady"))
		buf := make([]byte, 4096)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.quit:
				s.errc <- nil
				return
			case <-tick.C:
			}
			io.ReadFull(data, buf)
			if _, err := s.c.Write(buf); err != nil {
				s.errc <- err
				return
			}
			s.sum.Write(buf)
		}
	}()
	return s
}

// tcpInfo reads c's TCP_INFO.
func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return nil, err
	}
	return info, ierr
}

// quiet waits until the client's bytes are all acknowledged and neither
// end's segment counters move for 50 ms (nothing in flight), and returns
// both ends' TCP_INFO (client, backend).
func (s *steady) quiet() ([2]*unix.TCPInfo, error) {
	var last [2]*unix.TCPInfo
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var now [2]*unix.TCPInfo
		for i, c := range []*net.TCPConn{s.c, s.be} {
			info, err := tcpInfo(c)
			if err != nil {
				return now, fmt.Errorf("TCP_INFO: %w", err)
			}
			now[i] = info
		}
		if last[0] != nil && now[0].Unacked == 0 && now[0].Notsent_bytes == 0 &&
			now[0].Segs_out == last[0].Segs_out && now[0].Segs_in == last[0].Segs_in &&
			now[1].Segs_out == last[1].Segs_out && now[1].Segs_in == last[1].Segs_in {
			return now, nil
		}
		last = now
	}
	return last, errors.New("the connection never went quiet: unacknowledged data after 20s")
}

// stop ends the upload and returns what the connection lost since it
// began (segments sent by one end and never received by the other, each
// way) and how many segments were retransmitted; then it checks both
// directions' contents like stream.check.
func (s *steady) stop() (lost [2]int64, retrans int64, err error) {
	close(s.quit)
	if err := <-s.errc; err != nil {
		return lost, 0, fmt.Errorf("write: %w", err)
	}
	end, err := s.quiet()
	if err != nil {
		return lost, 0, err
	}
	c0, b0, c1, b1 := s.base[0], s.base[1], end[0], end[1]
	lost[0] = int64(c1.Segs_out-c0.Segs_out) - int64(b1.Segs_in-b0.Segs_in) // client -> backend
	lost[1] = int64(b1.Segs_out-b0.Segs_out) - int64(c1.Segs_in-c0.Segs_in) // backend -> client
	retrans = int64(c1.Total_retrans-c0.Total_retrans) + int64(b1.Total_retrans-b0.Total_retrans)
	if err := s.c.CloseWrite(); err != nil {
		return lost, retrans, err
	}
	got, err := io.ReadAll(s.c)
	if err != nil {
		return lost, retrans, fmt.Errorf("read: %w (after %d bytes)", err, len(got))
	}
	return lost, retrans, checkAnswer(got, s.sum.Sum(nil))
}

// lossless stops st and fails the test unless the stream lost nothing
// across what (a change of owner) and came through intact.
func (p *pairLab) lossless(t *testing.T, st *steady, what string) {
	t.Helper()
	lost, retrans, err := st.stop()
	if err != nil {
		t.Errorf("the stream across %s: %v", what, err)
	}
	t.Logf("across %s: %d segments lost client->backend, %d backend->client; %d retransmitted (reordering: not a loss)", what, lost[0], lost[1], retrans)
	if lost != [2]int64{} {
		t.Errorf("%d segments lost across %s", lost[0]+lost[1], what)
		p.drops(t)
		for _, g := range []string{"a", "b"} {
			out, _ := p.gw[g].Cmd("nstat", "-az", "IpExtInNoRoutes", "TcpExtIPReversePathFilter", "IpInAddrErrors", "IpOutNoRoutes", "IpInDiscards").CombinedOutput()
			t.Logf("gw%s: %v\n%s\n%s", g, proxyStatsAt(t, p.gw[g]), out, p.daemons[g].Log())
		}
	}
}

// TestHandover: `tandem vip handover` on the owner under a steady stream
// through the SYN proxy: gwb owns afterwards, not one segment was lost
// (both ends' TCP counters agree), no gateway dropped a packet
// for not owning the VIP, the stream's contents are intact, and the sync
// now runs from gwb (gwa's table follows gwb's).
func TestHandover(t *testing.T) {
	p := newPairLab(t)
	p.serve(t)
	p.start(t, "a")
	p.start(t, "b")
	p.settled(t, "a", 30*time.Second)
	if err := p.newConn(t); err != nil { // neighbours resolved everywhere
		t.Fatal(err)
	}
	st := p.steady(t)
	time.Sleep(500 * time.Millisecond)
	r := tandem(t, p.gw["a"], "vip", "handover", "--state-dir", p.state["a"])
	t.Logf("tandem vip handover: %d\n%s%s", r.code, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("handover failed")
	}
	time.Sleep(300 * time.Millisecond) // the stream goes on through gwb
	p.lossless(t, st, "the handover")
	for _, g := range []string{"a", "b"} {
		if st := proxyStatsAt(t, p.gw[g]); st["not_owner"] != 0 {
			t.Errorf("gw%s dropped %d segments for not owning the VIP", g, st["not_owner"])
		}
	}
	p.settled(t, "b", 10*time.Second)
	live := p.open(t) // made on gwb: the sync must now run from gwb
	waitFor(t, 10*time.Second, "gwa's connection table equals gwb's", func() (bool, string) {
		a, b := connTable(t, p.gw["a"]), connTable(t, p.gw["b"])
		return len(b) >= 1 && reflect.DeepEqual(a, b), fmt.Sprintf("gwa %d entries, gwb %d", len(a), len(b))
	})
	if err := live.finish(); err != nil {
		t.Errorf("a new connection after the handover: %v", err)
	}
	// Handing over from the standby is refused with a pointer to the owner.
	if r := tandem(t, p.gw["a"], "vip", "handover", "--state-dir", p.state["a"]); r.code == 0 || !strings.Contains(r.stderr, "run the handover on b") {
		t.Errorf("handover on the standby: %d %s", r.code, r.stderr)
	}
}

// TestSplitBrain: with the sync link cut, the adverts over the service
// network keep one owner. Then both paths between the gateways are cut
// while both run
// (the sync link down, and the switch isolates their ports from each
// other, so neither hears the other's adverts nor its ARP answers): gwb
// takes the VIPs too. When the paths heal, the adverts return and the
// election settles on exactly one owner (gwa, by priority) within the
// settle time; the loser has removed its addresses and closed its gate.
func TestSplitBrain(t *testing.T) {
	p := newPairLab(t)
	p.serve(t)
	p.start(t, "a")
	p.start(t, "b")
	p.settled(t, "a", 30*time.Second)
	sw := p.Host("sw")
	isolate := func(on string) {
		t.Helper()
		for _, port := range []string{"af", "bf", "ab", "bb"} {
			if out, err := sw.Cmd("bridge", "link", "set", "dev", port, "isolated", on).CombinedOutput(); err != nil {
				t.Fatalf("bridge link set %s isolated %s: %v %s", port, on, err, out)
			}
		}
		state := map[string]string{"on": "down", "off": "up"}[on]
		if err := p.gw["a"].IP("link", "set", "sync0", state); err != nil {
			t.Fatal(err)
		}
	}
	// The sync link alone: the adverts still cross the service network,
	// so nobody moves (checked for 20 advert intervals).
	if err := p.gw["a"].IP("link", "set", "sync0", "down"); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(20 * advertInterval()); time.Now().Before(end); {
		if own, _, state := p.owners(t); own["b"] || !own["a"] {
			t.Fatalf("with only the sync link cut: %s", state)
		}
	}
	if err := p.gw["a"].IP("link", "set", "sync0", "up"); err != nil {
		t.Fatal(err)
	}
	isolate("on")
	waitFor(t, 10*time.Second, "both gateways own the VIPs (split brain)", func() (bool, string) {
		own, _, state := p.owners(t)
		return own["a"] && own["b"], state
	})
	isolate("off")
	healed := time.Now()
	waitFor(t, 5*time.Second+20*advertInterval(), "exactly gwa owns", func() (bool, string) {
		own, _, state := p.owners(t)
		return own["a"] && !own["b"], state
	})
	t.Logf("split brain settled %s after the paths healed", time.Since(healed).Round(time.Millisecond))
	// Settled for good, and gwb let go of everything.
	time.Sleep(time.Second)
	own, _, state := p.owners(t)
	if !own["a"] || own["b"] {
		t.Errorf("a second after settling: %s", state)
	}
	for _, a := range []string{fvip, finner} {
		out, err := p.gw["b"].Cmd("ip", "-o", "addr", "show", "to", a).Output()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("gwb still holds %s: %s %v", a, out, err)
		}
	}
	if err := p.newConn(t); err != nil {
		t.Errorf("a new connection after the split brain: %v", err)
	}
	p.settled(t, "a", 30*time.Second)
}

// TestHealthDemotes: the owner's backend-side interface goes down while
// its daemon runs: it is unhealthy, gives the VIPs up (addresses removed)
// and gwb takes them; connections keep working. With the interface back,
// gwa stays standby (no preemption).
//
// The adverts run at twice the failover tests' interval: nothing here is
// timed, and the end (gwb keeps the VIPs from the better gwa) holds only
// while gwa never finds gwb silent. At 50 ms a 150 ms stall of the lab's
// packet path on a loaded machine (softirq deferred to ksoftirqd) made
// gwa call the live owner silent: seen once in about 100 runs, rescued
// by the takeover probe; had the probe gone unanswered too, gwa would
// have taken the VIPs and kept them (a split brain settles by priority),
// and the last settle timed out after 30 s, as once in CI.
func TestHealthDemotes(t *testing.T) {
	p := newPairLab(t)
	p.serve(t)
	slow := []string{"--vip-interval", (2 * advertInterval()).String()}
	p.start(t, "a", slow...)
	p.start(t, "b", slow...)
	p.settled(t, "a", 30*time.Second)
	s := p.open(t)
	waitFor(t, 10*time.Second, "gwb has the connection", func() (bool, string) {
		b := connTable(t, p.gw["b"])
		return len(b) >= 1, fmt.Sprintf("gwb %d entries", len(b))
	})
	if err := p.gw["a"].IP("link", "set", "eth1", "down"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "gwb owns, gwa unhealthy and not owning", func() (bool, string) {
		a, errA := p.vipStatus(t, "a")
		b, errB := p.vipStatus(t, "b")
		if errA != nil || errB != nil {
			return false, fmt.Sprint(errA, errB)
		}
		return b.Owner && !a.Owner && !a.Healthy, fmt.Sprintf("gwa owner=%v healthy=%v (%s); gwb owner=%v (%s)", a.Owner, a.Healthy, a.Problem, b.Owner, b.Why)
	})
	if out, _ := p.gw["a"].Cmd("ip", "-o", "addr", "show", "to", fvip).Output(); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("the unhealthy gwa still holds %s: %s", fvip, out)
	}
	if err := s.finish(); err != nil {
		t.Errorf("the connection across the demotion: %v", err)
	}
	if err := p.gw["a"].IP("link", "set", "eth1", "up"); err != nil {
		t.Fatal(err)
	}
	p.settled(t, "b", 30*time.Second)
	if err := p.newConn(t); err != nil {
		t.Errorf("a new connection: %v", err)
	}
}

// TestPreempt: with --vip-preempt, a better host that (re)joins takes the
// VIPs once it has caught up, by a handover: a steady stream loses not
// one segment.
func TestPreempt(t *testing.T) {
	p := newPairLab(t)
	p.serve(t)
	p.start(t, "b")
	waitFor(t, 10*time.Second, "gwb alone owns", func() (bool, string) {
		st, err := p.vipStatus(t, "b")
		if err != nil {
			return false, err.Error()
		}
		return st.Owner, st.Why
	})
	if err := p.newConn(t); err != nil {
		t.Fatal(err)
	}
	st := p.steady(t)
	p.start(t, "a", "--vip-preempt")
	p.settled(t, "a", 30*time.Second)
	t.Logf("settled at %s", time.Now().Format("15:04:05.000"))
	time.Sleep(300 * time.Millisecond) // the stream goes on through gwa
	p.lossless(t, st, "the preemption")
	if err := p.newConn(t); err != nil {
		t.Errorf("a new connection after the preemption: %v", err)
	}
	if !strings.Contains(p.daemons["b"].Log(), "preemption: done") {
		t.Errorf("gwb did not hand over by preemption:\n%s", p.daemons["b"].Log())
	}
}

// drops logs every lab interface's non-zero drop and error counters
// (ethtool -S: veth's XDP ring and redirect failures among them): where a
// lost segment went.
func (p *pairLab) drops(t testing.TB) {
	t.Helper()
	// The host's own list of links: nsenter leaves /sys/class/net showing
	// the initial namespace's.
	for _, name := range []string{"client", "sw", "gwa", "gwb", "be1", "be2"} {
		h := p.Host(name)
		out, err := h.Cmd("sh", "-c", `for i in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do ethtool -S $i 2>/dev/null | awk -v i=$i '/drop|err|fail/ && $2 != 0 {print i": "$0}'; done`).CombinedOutput()
		if err != nil {
			t.Logf("%s: %v", name, err)
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			t.Logf("%s drops:\n%s", name, s)
		}
	}
}

// cpuTicks is a process's user and system time in clock ticks (USER_HZ,
// 100 a second), from /proc/PID/stat: time it ran, which other
// processes competing for the CPUs do not inflate.
func cpuTicks(t testing.TB, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces: fields count from its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, err1 := strconv.ParseUint(f[11], 10, 64) // utime, field 14
	s, err2 := strconv.ParseUint(f[12], 10, 64) // stime, field 15
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return u + s
}

// sleeps is how often pid's threads went to sleep so far (voluntary
// context switches, /proc/PID/task/*/status): every wakeup of an idle
// daemon ends in one. Threads that exited are not counted: the idle
// daemon keeps its threads.
func sleeps(t testing.TB, pid int) uint64 {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
				c, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// TestIdleAdverts: two idle daemons with everything on (SYN proxy, state
// sync at 10 ms ticks, the election at the default 100 ms interval over
// two paths, the datapath check every second) send 20 adverts a second
// each way (one per interval per path, within 10%), each uses under 2%
// of a core, and their threads go to sleep under 500 times a second each
// (voluntary context switches: a count the machine's load does not
// inflate, unlike CPU time, which on this shared VM varies by a factor of
// two with the load). An advert that answered every advert made this a
// storm of thousands a second; the Go runtime's monitor polling after
// every advert (the sender's sleep held a P) cost ~1,200 switches a
// second, and the idle sync ticks on a Go ticker ~300 of the rest. Now
// 240-400 a second (the 10 ms tick thread's hundred wakeups, the adverts
// sent and received, the runtime's own); the < 1% goal is met in most
// runs on the loaded VM, not all (up to 1.3%, and 3.6% when the machine
// was busiest): the CPU bound stays 2%.
func TestIdleAdverts(t *testing.T) {
	// Under TCG (TANDEM_TEST_SCALE) the interval is longer and every
	// instruction costs more: the CPU bound grows with the scale.
	scale := int64(advertInterval() / (50 * time.Millisecond))
	interval, paths, maxCPU := time.Duration(scale)*100*time.Millisecond, 2, 0.02*float64(scale)
	// The sync's 10 ms ticks are not scaled: the bound is the same.
	const maxSwitches = 500
	p := newPairLab(t)
	for _, g := range []string{"a", "b"} {
		p.start(t, g, "--vip-interval", interval.String())
	}
	p.settled(t, "a", 30*time.Second)
	time.Sleep(time.Second) // past the state changes of meeting
	type snap struct {
		st       vip.Status
		cpu, csw uint64
	}
	take := func() map[string]snap {
		out := map[string]snap{}
		for _, g := range []string{"a", "b"} {
			st, err := p.vipStatus(t, g)
			if err != nil {
				t.Fatal(err)
			}
			out[g] = snap{st, cpuTicks(t, p.daemons[g].Pid()), sleeps(t, p.daemons[g].Pid())}
		}
		return out
	}
	// At least 50 adverts expected each way, so that one advert more or
	// less at the window's edges is 2%, not the whole 10% margin (under
	// TCG the interval is a second).
	window := max(10*time.Second, 25*interval)
	s0 := take()
	time.Sleep(window)
	s1 := take()
	want := float64(paths) / interval.Seconds()
	for _, c := range []struct{ from, to string }{{"a", "b"}, {"b", "a"}} {
		secs := s1[c.from].st.At.Sub(s0[c.from].st.At).Seconds()
		sent := float64(s1[c.from].st.Sent-s0[c.from].st.Sent) / secs
		secs2 := s1[c.to].st.At.Sub(s0[c.to].st.At).Seconds()
		got := float64(s1[c.to].st.Received-s0[c.to].st.Received) / secs2
		t.Logf("gw%s -> gw%s: %.1f adverts/s sent, %.1f received (want %.0f)", c.from, c.to, sent, got, want)
		for what, rate := range map[string]float64{"sent": sent, "received": got} {
			if rate < 0.9*want || rate > 1.1*want {
				t.Errorf("gw%s -> gw%s: %.1f adverts/s %s; want %.0f +-10%%", c.from, c.to, rate, what, want)
			}
		}
	}
	for _, g := range []string{"a", "b"} {
		secs := s1[g].st.At.Sub(s0[g].st.At).Seconds()
		cpu := float64(s1[g].cpu-s0[g].cpu) / 100 / secs
		csw := float64(s1[g].csw-s0[g].csw) / secs
		t.Logf("gw%s: %.2f%% of a core, %.0f voluntary context switches a second", g, 100*cpu, csw)
		if csw >= maxSwitches {
			t.Errorf("gw%s: idle daemon's threads sleep %.0f times a second; want under %d", g, csw, maxSwitches)
		}
		if cpu >= maxCPU {
			t.Errorf("gw%s: idle daemon uses %.1f%% of a core; want under %.0f%%", g, 100*cpu, 100*maxCPU)
		}
	}
}
