package vip

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// These tests run Managers on loopback sockets with the address
// operations replaced (no root, no interfaces): what they check is the
// advert protocol, not the takeover.

var testKey = []byte("the pair's shared secret, 32 bytes")

// fakeHost is a Manager's addresses: held or not.
type fakeHost struct{ held atomic.Bool }

func (h *fakeHost) ops() netOps {
	return netOps{
		has:      func(Addr) bool { return h.held.Load() },
		add:      func(Addr) error { h.held.Store(true); return nil },
		del:      func(Addr) error { h.held.Store(false); return nil },
		probe:    func(Addr, time.Time) (net.HardwareAddr, error) { return nil, nil },
		announce: func(Addr) error { return nil },
	}
}

// newTestManager is a Manager named name on 127.0.0.1, peer peerName at
// peers (patched in later when they are not known yet).
func newTestManager(t *testing.T, name, peerName string, interval time.Duration, clock func() time.Time) (*Manager, *fakeHost) {
	t.Helper()
	a, err := ParseAddr("192.0.2.10/24@lo")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{
		Name: name, PeerName: peerName, Priority: 100, Interval: interval, Dead: 3, Secret: testKey,
		Listen: "127.0.0.1:0", Peers: []string{"127.0.0.1:9"}, Addrs: []Addr{a},
		Gate: func(bool) error { return nil }, Health: func() error { return nil },
		Sync: func(Advert) (bool, uint64, uint64) { return true, 1, 0 },
		Role: func(bool) {}, Flush: func(context.Context) error { return nil },
		Clock: clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHost{}
	m.net = h.ops()
	t.Cleanup(func() { m.conn.Close() })
	return m, h
}

func (m *Manager) addr() *net.UDPAddr { return m.conn.LocalAddr().(*net.UDPAddr) }

// run runs m until the test ends.
func run(t *testing.T, m *Manager) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// chattyPeer answers every advert it gets from m at once, echoing m's
// challenge, and sends one more every millisecond on its own: a peer
// that talks far more than the interval asks. It counts m's adverts.
type chattyPeer struct {
	conn *net.UDPConn
	got  atomic.Uint64
}

func newChattyPeer(t *testing.T, m *Manager, name string) *chattyPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &chattyPeer{conn: c}
	m.peer = []*net.UDPAddr{c.LocalAddr().(*net.UDPAddr)}
	var mu sync.Mutex
	var seq, echo uint64
	send := func() {
		mu.Lock()
		seq++
		a := Advert{Name: name, Boot: 77, Seq: seq, SentNanos: time.Now().UnixNano(), Priority: 50, Generation: 1,
			Healthy: true, CaughtUp: true, Challenge: 5, Echo: echo}
		mu.Unlock()
		b, _ := a.Marshal(testKey)
		c.WriteTo(b, m.addr())
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2*AdvertLen)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			p.got.Add(1)
			if a, err := UnmarshalAdvert(buf[:n], testKey); err == nil {
				mu.Lock()
				echo = a.Challenge
				mu.Unlock()
			}
			send()
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				send()
			}
		}
	}()
	t.Cleanup(func() { close(stop); c.Close(); wg.Wait() })
	return p
}

// TestAdvertRate: a Manager with a chatty peer sends its adverts at the
// interval, not in answer to every advert it hears (which, with a peer
// doing the same, was a storm of thousands a second). Counted over 20
// intervals once the peer is heard: at most one advert per interval per
// path, plus a few immediate ones for changes of state.
func TestAdvertRate(t *testing.T) {
	const interval = 50 * time.Millisecond
	m, _ := newTestManager(t, "a", "b", interval, nil)
	p := newChattyPeer(t, m, "b")
	run(t, m)
	deadline := time.Now().Add(10 * time.Second)
	for !m.Status().PeerAlive {
		if time.Now().After(deadline) {
			t.Fatalf("the chatty peer is never heard: %+v", m.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * interval) // the state changes of meeting the peer
	st0, got0 := m.Status(), p.got.Load()
	time.Sleep(20 * interval)
	st1, got1 := m.Status(), p.got.Load()
	intervals := float64(st1.At.Sub(st0.At)) / float64(interval)
	sent, got := st1.Sent-st0.Sent, got1-got0
	t.Logf("%.1f intervals: %d adverts sent, %d arrived at the peer, %d received from it", intervals, sent, got, st1.Received-st0.Received)
	if max := uint64(intervals) + 3; sent > max || got > max {
		t.Errorf("%d adverts sent (%d arrived) in %.1f intervals with a chatty peer; want at most %d", sent, got, intervals, max)
	}
	if min := uint64(intervals / 2); sent < min {
		t.Errorf("%d adverts sent in %.1f intervals; want at least %d", sent, intervals, min)
	}
}

// TestClockSkew: two Managers whose wall clocks differ by 7 minutes hear
// each other and elect exactly one owner. Replay protection must not
// depend on the clocks agreeing.
func TestClockSkew(t *testing.T) {
	const interval = 50 * time.Millisecond
	skewed := func() time.Time { return time.Now().Add(7 * time.Minute) }
	a, ha := newTestManager(t, "a", "b", interval, skewed)
	b, hb := newTestManager(t, "b", "a", interval, nil)
	a.peer, b.peer = []*net.UDPAddr{b.addr()}, []*net.UDPAddr{a.addr()}
	run(t, a)
	run(t, b)
	var state string
	deadline := time.Now().Add(15 * time.Second)
	for stable := 0; stable < 5; time.Sleep(interval) {
		sa, sb := a.Status(), b.Status()
		state = fmt.Sprintf("a: owner %v (%s) peer alive %v, refused %+v; b: owner %v (%s) peer alive %v, refused %+v",
			sa.Owner, sa.Why, sa.PeerAlive, sa.RefusedBy, sb.Owner, sb.Why, sb.PeerAlive, sb.RefusedBy)
		if sa.PeerAlive && sb.PeerAlive && sa.Owner != sb.Owner && ha.held.Load() == sa.Owner && hb.held.Load() == sb.Owner {
			stable++
		} else {
			stable = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single owner that hears its peer after 15 s: %s", state)
		}
	}
	t.Log(state)
}

// TestRefuseStrangers: adverts signed with the pair's secret are refused
// and counted by reason when they come from an address that is not a
// peer, or under a name that is not the peer's.
func TestRefuseStrangers(t *testing.T) {
	m, _ := newTestManager(t, "a", "b", 50*time.Millisecond, nil)
	m.peer = []*net.UDPAddr{{IP: net.IPv4(127, 0, 0, 2), Port: 7401}}
	run(t, m)
	for _, c := range []struct {
		name  string
		from  net.IP
		adv   string
		count func(Refusals) uint64
	}{
		{"wrong source", net.IPv4(127, 0, 0, 3), "b", func(r Refusals) uint64 { return r.WrongSource }},
		{"wrong name", net.IPv4(127, 0, 0, 2), "c", func(r Refusals) uint64 { return r.WrongName }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.from})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			before := m.Status()
			const n = 10
			for i := range n {
				b, _ := Advert{Name: c.adv, Boot: 9, Seq: uint64(i + 1), SentNanos: time.Now().UnixNano(), Priority: 255, Owner: true, Healthy: true}.Marshal(testKey)
				s.WriteTo(b, m.addr())
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				st := m.Status()
				if got := c.count(st.RefusedBy) - c.count(before.RefusedBy); got == n && st.Refused-before.Refused == n && !st.PeerAlive {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("want %d refused for %s: total %d -> %d, by reason %+v; peer alive %v (%s)", n, c.name, before.Refused, st.Refused, st.RefusedBy, st.PeerAlive, st.Peer)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestReceiveOverflow: datagrams the advert socket's receive buffer
// drops are counted (SO_RXQ_OVFL) and shown in Status.
func TestReceiveOverflow(t *testing.T) {
	m, _ := newTestManager(t, "a", "b", 50*time.Millisecond, nil)
	s, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m.peer = []*net.UDPAddr{s.LocalAddr().(*net.UDPAddr)}
	junk := make([]byte, AdvertLen)
	// Nobody reads yet: the buffer fills and the kernel drops the rest.
	for range 5000 {
		s.WriteTo(junk, m.addr())
	}
	run(t, m)
	deadline := time.Now().Add(5 * time.Second)
	for m.Status().Dropped == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("5000 datagrams into an unread socket: none counted as dropped: %+v", m.Status())
		}
		s.WriteTo(junk, m.addr()) // a datagram queued after the drops carries their count
		time.Sleep(10 * time.Millisecond)
	}
	st := m.Status()
	t.Logf("dropped %d, refused %d", st.Dropped, st.Refused)
}

// relay forwards datagrams between two Managers until cut: a path that a
// test can partition and heal.
type relay struct {
	cut atomic.Bool
}

// link makes m send its adverts through a relay socket that forwards them
// to peer's socket while r is not cut.
func (r *relay) link(t *testing.T, m, peer *Manager) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m.peer = []*net.UDPAddr{c.LocalAddr().(*net.UDPAddr)}
	go func() {
		buf := make([]byte, 2*AdvertLen)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if !r.cut.Load() {
				c.WriteToUDP(buf[:n], peer.addr())
			}
		}
	}()
}

// TestSplitBrainReannounce: after a split brain, the host that keeps the
// VIPs announces them again (the loser announced them too while it
// owned, and the neighbours that learned its MAC would keep sending to it
// until their entries aged out); the loser announces nothing.
func TestSplitBrainReannounce(t *testing.T) {
	const interval = 50 * time.Millisecond
	a, ha := newTestManager(t, "a", "b", interval, nil)
	b, hb := newTestManager(t, "b", "a", interval, nil)
	a.cfg.Priority = 200
	var announced [2]atomic.Int64
	for i, h := range []*fakeHost{ha, hb} {
		ops := h.ops()
		ops.announce = func(Addr) error { announced[i].Add(1); return nil }
		[]*Manager{a, b}[i].net = ops
	}
	// A short schedule: it runs out during the partition.
	a.cfg.Announce = []time.Duration{0, interval}
	b.cfg.Announce = a.cfg.Announce
	var r relay
	r.cut.Store(true)
	r.link(t, a, b)
	r.link(t, b, a)
	run(t, a)
	run(t, b)
	wait := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(interval / 5) {
			if time.Now().After(deadline) {
				t.Fatalf("after 10 s: %s: a %+v, b %+v", what, a.Status(), b.Status())
			}
		}
	}
	wait("both own while cut off", func() bool { return a.Status().Owner && b.Status().Owner })
	time.Sleep(4 * interval) // past both schedules
	// Cut off, neither hears the other: no split brain seen yet.
	if na, nb := a.Status().SplitBrains, b.Status().SplitBrains; na != 0 || nb != 0 {
		t.Fatalf("split brains settled before the heal: a %d, b %d; want 0", na, nb)
	}
	beforeA, beforeB := announced[0].Load(), announced[1].Load()
	r.cut.Store(false)
	wait("b released", func() bool { return !b.Status().Owner && !hb.held.Load() && a.Status().Owner })
	wait("a announced again", func() bool { return announced[0].Load() >= beforeA+2 })
	// b gave up because both owned: it saw the split brain settle (a may
	// hear b's release before it ever steps with both owning; a loaded
	// machine may make a peer look silent for a moment, and more).
	wait("b counted the split brain settled", func() bool { return b.Status().SplitBrains >= 1 })
	time.Sleep(4 * interval)
	if n := announced[1].Load() - beforeB; n != 0 {
		t.Errorf("the host that released announced %d times after the heal; want 0", n)
	}
	t.Logf("after the heal: a announced %d times, b %d", announced[0].Load()-beforeA, announced[1].Load()-beforeB)
}

// TestStalledReceiverHearsQueued: a host whose election runs late (a
// starved CPU: the receiving goroutine has not read the peer's adverts
// that the kernel queued in time) does not declare the peer silent. The
// step reads the socket first and judges the peer by the kernel's
// receive time of its adverts, not by when this process got to them.
func TestStalledReceiverHearsQueued(t *testing.T) {
	// Slower under TCG (TANDEM_TEST_SCALE): the last advert must still
	// be fresh when the step runs right after it.
	scale, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE"))
	if err != nil || scale < 1 {
		scale = 1
	}
	interval := time.Duration(scale) * 10 * time.Millisecond
	m, h := newTestManager(t, "a", "b", interval, nil)
	s, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m.peer = []*net.UDPAddr{s.LocalAddr().(*net.UDPAddr)}
	// The peer (boot 7) was heard long ago, by this process's reckoning.
	m.lastBoot, m.lastSeq, m.lastAt = 7, 1, time.Now().Add(-time.Hour)
	m.last = Advert{Name: "b", Boot: 7, Seq: 1, Priority: 100, Generation: 1, Owner: true, Healthy: true, CaughtUp: true}
	m.started = time.Now().Add(-time.Hour)
	// It kept advertising on the interval while this host's election
	// stalled for 6 intervals (past the dead interval): the adverts sit
	// in the socket, unread.
	sent := time.Now()
	for seq := uint64(2); seq < 8; seq++ {
		time.Sleep(interval)
		b, _ := Advert{Name: "b", Boot: 7, Seq: seq, Priority: 100, Generation: 1, Owner: true, Healthy: true, CaughtUp: true}.Marshal(testKey)
		if _, err := s.WriteTo(b, m.addr()); err != nil {
			t.Fatal(err)
		}
	}
	stepped := time.Now()
	m.step(context.Background(), false)
	st := m.Status()
	if h.held.Load() || st.Owner {
		t.Fatalf("the peer's adverts were queued in time, yet the late step took the VIPs (%s)", st.Why)
	}
	if st.PeerSeen.Before(sent) || !st.PeerSeen.Before(stepped) {
		t.Errorf("peer seen at %s: want its adverts' kernel receive time, between the send (%s) and the step (%s)",
			st.PeerSeen.Format(time.StampMicro), sent.Format(time.StampMicro), stepped.Format(time.StampMicro))
	}
}

// TestStartHearsSlowHandshake: a host that starts while its peer owns,
// with a peer whose election answers this boot's challenge only after 8
// intervals (a busy host: its adverts go out on time, the echo waits for
// its election to run), keeps listening instead of calling the peer
// silent: it never takes the VIPs (here no probe answers, as on a host
// too busy to answer one in a quarter interval), and it then hears the
// peer own. Before, it listened one dead interval, took the VIPs from
// the live owner if the probe went unanswered, and a better priority
// kept them: the split brain settles by priority (a rejoining gwa in
// TestFailoverKill).
func TestStartHearsSlowHandshake(t *testing.T) {
	scale, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE"))
	if err != nil || scale < 1 {
		scale = 1
	}
	interval := time.Duration(scale) * 50 * time.Millisecond
	m, h := newTestManager(t, "a", "b", interval, nil)
	m.cfg.Priority = 200 // better than the owner: a split brain would keep it
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m.peer = []*net.UDPAddr{c.LocalAddr().(*net.UDPAddr)}
	var chal atomic.Uint64 // m's challenge, as the peer read it
	go func() {
		buf := make([]byte, 2*AdvertLen)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if a, err := UnmarshalAdvert(buf[:n], testKey); err == nil {
				chal.Store(a.Challenge)
			}
		}
	}()
	run(t, m)
	start := time.Now()
	answer := start.Add(8 * interval)
	// The owner advertises every tenth of an interval (whatever the
	// test's own scheduling, the gaps stay far under the dead interval).
	tick := time.NewTicker(interval / 10)
	defer tick.Stop()
	for seq := uint64(1); time.Since(start) < 20*interval; seq++ {
		<-tick.C
		var echo uint64
		if time.Now().After(answer) {
			echo = chal.Load()
		}
		b, _ := Advert{Name: "b", Boot: 77, Seq: seq, SentNanos: time.Now().UnixNano(), Priority: 100, Generation: 1,
			Owner: true, Healthy: true, CaughtUp: true, Challenge: 5, Echo: echo}.Marshal(testKey)
		c.WriteTo(b, m.addr())
		if st := m.Status(); h.held.Load() || st.Takeovers > 0 {
			t.Fatalf("%s after start, with the owner talking but not yet answering: took the VIPs (%s)",
				time.Since(start).Round(time.Millisecond), st.Why)
		}
	}
	if st := m.Status(); !st.PeerAlive || !st.PeerOwner || st.Owner {
		t.Errorf("after the handshake: %+v; want the peer heard as the owner", st)
	}
}
