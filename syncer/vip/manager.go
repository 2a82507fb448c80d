package vip

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-net/tandem/internal/kclock"
	"golang.org/x/sys/unix"
)

// Config is one host's side of the election.
type Config struct {
	Name     string
	PeerName string // the peer's Name: adverts under any other name are refused
	Priority uint8
	Preempt  bool          // a better, caught-up standby asks for the VIPs
	Interval time.Duration // between adverts; default 100 ms
	Dead     int           // adverts missed before the peer counts as gone; default 3
	Secret   []byte        // the pair's shared secret: adverts are signed with it
	Listen   string        // UDP ADDR:PORT for the peer's adverts
	Peers    []string      // UDP HOST:PORT of the peer, one per path (sync link, service network)
	Addrs    []Addr        // the addresses the owner holds

	// Gate opens (true) or closes the VIP gate for every VIP.
	Gate func(owned bool) error
	// Health reports a reason this host cannot serve (interface down,
	// programs detached), or nil.
	Health func() error
	// Sync reports the state sync: whether this host is as fresh as the
	// owner (a standby whose session is up and has applied the owner's
	// generation), its generation, and the last sequence it applied or,
	// as primary, had acknowledged.
	Sync func(peer Advert) (caughtUp bool, generation, applied uint64)
	// Role is called when this host should run the sync as primary
	// (true) or as standby. It must not block.
	Role func(primary bool)
	// Flush waits until everything this host's sync sent is acknowledged.
	Flush func(ctx context.Context) error
	// Claim, when set, runs at the start of a takeover, before the
	// addresses are added and the gate opens: what the new owner must
	// install before it serves (the IPsec SAs' replicated replay state).
	Claim func()

	Announce []time.Duration // gratuitous ARP/NA schedule after a takeover
	// Realtime is the SCHED_FIFO priority (1-99) of the thread that sends
	// the adverts on the interval, 0 for the default policy: a peer must
	// not look dead because a busy CPU kept its adverts back.
	Realtime int
	Log      *slog.Logger
	// Clock is the wall clock (default time.Now); tests skew it.
	Clock func() time.Time
}

// Refusals counts refused adverts by reason.
type Refusals struct {
	Malformed   uint64 `json:"malformed"`    // wrong length, version or name length
	BadMAC      uint64 `json:"bad_mac"`      // not signed with the pair's secret
	WrongSource uint64 `json:"wrong_source"` // from an address that is not a --vip-peer
	WrongName   uint64 `json:"wrong_name"`   // signed, but under another name than the peer's
	Own         uint64 `json:"own"`          // this daemon's own advert (a loop)
	Replay      uint64 `json:"replay"`       // a sequence far behind, or a boot the peer left
	Unanswered  uint64 `json:"unanswered"`   // a new boot that has not echoed our challenge (yet)
}

// Total is the sum over every reason.
func (r Refusals) Total() uint64 {
	return r.Malformed + r.BadMAC + r.WrongSource + r.WrongName + r.Own + r.Replay + r.Unanswered
}

// Status is what `tandem vip` shows.
type Status struct {
	Name        string    `json:"name"`
	Priority    uint8     `json:"priority"`
	Owner       bool      `json:"owner"`
	Why         string    `json:"why"`
	Since       time.Time `json:"since"`
	Healthy     bool      `json:"healthy"`
	Problem     string    `json:"problem,omitempty"`
	CaughtUp    bool      `json:"caught_up"`
	Generation  uint64    `json:"generation"`
	Primary     bool      `json:"sync_primary"`
	Peer        string    `json:"peer,omitempty"`
	PeerAlive   bool      `json:"peer_alive"`
	PeerOwner   bool      `json:"peer_owner"`
	PeerHealthy bool      `json:"peer_healthy"`
	PeerSeen    time.Time `json:"peer_seen"`
	Takeovers   uint64    `json:"takeovers"`
	Releases    uint64    `json:"releases"`
	SplitBrains uint64    `json:"split_brains_settled"` // both hosts owned (a partition healed), then one let go
	Refused     uint64    `json:"adverts_refused"`
	RefusedBy   Refusals  `json:"adverts_refused_by"`
	Sent        uint64    `json:"adverts_sent"`     // datagrams sent, every path
	Received    uint64    `json:"adverts_received"` // verified datagrams from the peer, every path
	Dropped     uint64    `json:"adverts_dropped"`  // datagrams the socket's receive buffer dropped (SO_RXQ_OVFL)
	At          time.Time `json:"at"`               // when these counters were read
	Addrs       []string  `json:"addrs"`
}

// netOps are the address and neighbour operations; tests replace them.
type netOps struct {
	has      func(Addr) bool
	add, del func(Addr) error
	probe    func(Addr, time.Time) (net.HardwareAddr, error) // listens until the deadline (time.Now's clock)
	announce func(Addr) error
	// startProbe, when set, runs the early probe (hostNet's); without
	// it (tests) the early probe is probe in a goroutine per address.
	startProbe func(addrs []Addr, deadline, until time.Time) *probeSet
}

// Manager runs the election and moves the VIPs.
type Manager struct {
	cfg  Config
	net  netOps
	hn   *hostNet // the takeover's sockets and interfaces (nil in tests that replace net)
	now  func() time.Time
	log  *slog.Logger
	conn net.PacketConn
	peer []*net.UDPAddr
	boot uint64
	seq  atomic.Uint64
	kick chan struct{}
	// sentTick says the sender thread sent the interval's advert: the
	// election's round of the interval.
	sentTick chan struct{}

	// The sender thread's advert: what the last election round said.
	tmpl atomic.Pointer[Advert]
	sent atomic.Uint64 // datagrams sent, every path

	// rxMu is held while datagrams are read and handled: whoever holds it
	// has seen every datagram the kernel queued until then.
	rxMu  sync.Mutex
	rxBuf []byte
	rxOOB []byte
	early *earlyProbe // the takeover probe started before the dead interval ends (Run's goroutine only)

	mu        sync.Mutex
	last      Advert // the peer's last advert
	lastAt    time.Time
	lastBoot  uint64 // the peer's boot we hear; 0: none yet
	lastSeq   uint64
	retired   []uint64  // the peer's boots we heard before lastBoot: their adverts are replays
	chal      uint64    // our challenge: a new boot of the peer is heard once it echoes it
	echo      uint64    // the peer's challenge, echoed in our adverts
	sentState Advert    // what our last advert said (no sequence, clock or applied)
	urgentAt  time.Time // when an advert last went out between intervals
	owner     bool      // holds the addresses (and the gate is open)
	inherited bool      // held from before this daemon started, not yet confirmed
	yielding  bool
	handing   bool // a handover is running
	primary   bool
	started   time.Time
	st        Status
	announces []time.Time
	peerOwned bool // the peer said it owned at the last step
	peerHeard bool // the peer was alive at the last step
	split     bool // both hosts owned at the last step (neither handing over)
	// unansweredAt is when the last advert of a boot not heard yet
	// arrived (refused until it echoes our challenge): the peer talks,
	// but its handshake with this boot is not done.
	unansweredAt time.Time
}

// Check checks cfg as New does, without opening anything: a daemon
// reloading its config learns whether the new election can start before
// it stops the running one.
func Check(cfg Config) error {
	_, err := cfg.prepare()
	return err
}

// prepare fills cfg's defaults, checks it and resolves the peers.
func (cfg *Config) prepare() ([]*net.UDPAddr, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.Dead <= 0 {
		cfg.Dead = 3
	}
	if len(cfg.Secret) < 16 {
		return nil, errors.New("vip: the pair's secret must be at least 16 bytes (--vip-secret FILE)")
	}
	if len(cfg.Peers) == 0 {
		return nil, errors.New("vip: name the peer's advert address with --vip-peer HOST:PORT (one per path)")
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("vip: no address to move: give --vip-addr ADDR/LEN@IFACE")
	}
	if cfg.Announce == nil {
		cfg.Announce = []time.Duration{0, cfg.Interval, 2 * cfg.Interval, 4 * cfg.Interval, time.Second, 2 * time.Second, 5 * time.Second}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	for _, f := range []struct {
		name string
		nil  bool
	}{{"Gate", cfg.Gate == nil}, {"Health", cfg.Health == nil}, {"Sync", cfg.Sync == nil}, {"Role", cfg.Role == nil}, {"Flush", cfg.Flush == nil}} {
		if f.nil {
			return nil, fmt.Errorf("vip: Config.%s is required", f.name)
		}
	}
	var peers []*net.UDPAddr
	for _, p := range cfg.Peers {
		a, err := net.ResolveUDPAddr("udp", p)
		if err != nil {
			return nil, fmt.Errorf("vip: peer %q: %w", p, err)
		}
		peers = append(peers, a)
	}
	if cfg.PeerName == "" {
		return nil, errors.New("vip: name the peer with --vip-peer-name (adverts under any other name are refused)")
	}
	return peers, nil
}

// New checks cfg and opens the advert socket.
func New(cfg Config) (*Manager, error) {
	peers, err := cfg.prepare()
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Log.With("vip", cfg.Name), kick: make(chan struct{}, 1), sentTick: make(chan struct{}, 1), now: cfg.Clock, peer: peers,
		hn: newHostNet(cfg.Addrs)}
	m.net = netOps{has: HasAddr, add: m.hn.add, del: m.hn.del, probe: m.hn.probe, announce: m.hn.announce, startProbe: m.hn.startProbe}
	m.boot, m.chal = nonce(), nonce()
	c, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		m.hn.Close()
		return nil, fmt.Errorf("vip: listen for adverts on %s: %w", cfg.Listen, err)
	}
	// Datagrams the receive buffer drops are counted by the kernel and
	// reported with the next datagram read (SO_RXQ_OVFL). Every datagram
	// carries the kernel's receive time (SO_TIMESTAMPNS): the peer is
	// judged alive by when its adverts arrived, not by when this process
	// got to read them.
	if rc, err := c.(*net.UDPConn).SyscallConn(); err == nil {
		var ovfl, ts error
		rc.Control(func(fd uintptr) {
			ovfl = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
			ts = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		})
		if ovfl != nil {
			cfg.Log.Warn("advert socket: drops will not be counted", "err", ovfl)
		}
		if ts != nil {
			cfg.Log.Warn("advert socket: no receive timestamps, the peer is judged by when adverts are read", "err", ts)
		}
	}
	m.conn = c
	m.rxBuf = make([]byte, 2*AdvertLen)
	m.rxOOB = make([]byte, unix.CmsgSpace(4)+unix.CmsgSpace(16))
	m.st = Status{Name: cfg.Name, Priority: cfg.Priority, Why: "starting", Since: m.now()}
	for _, a := range cfg.Addrs {
		m.st.Addrs = append(m.st.Addrs, a.String())
	}
	return m, nil
}

// nonce is a random non-zero 64-bit number.
func nonce() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:])
		if n := binary.BigEndian.Uint64(b[:]); n != 0 {
			return n
		}
	}
}

// Status is the election as of now.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st
	st.Addrs = append([]string(nil), st.Addrs...)
	st.Refused = st.RefusedBy.Total()
	st.Sent = m.sent.Load()
	st.At = m.now()
	st.PeerAlive = m.peerAlive(st.At)
	return st
}

func (m *Manager) peerAlive(now time.Time) bool {
	return !m.lastAt.IsZero() && now.Sub(m.lastAt) <= time.Duration(m.cfg.Dead)*m.cfg.Interval
}

// Run elects until ctx ends. It leaves the VIPs as they are on return: a
// daemon that stops (or dies) leaves the datapath serving, like the rest
// of tandem; `tandem down` or the peer's probe settles the rest.
func (m *Manager) Run(ctx context.Context) error {
	defer m.conn.Close()
	if m.hn != nil {
		defer m.hn.Close()
	}
	m.started = m.now()
	// A host that owned the addresses before a restart still holds them:
	// it says so, and the election keeps it or settles it.
	held := true
	for _, a := range m.cfg.Addrs {
		held = held && m.net.has(a)
	}
	if held {
		m.mu.Lock()
		m.owner, m.inherited = true, true
		m.mu.Unlock()
		m.log.Info("holding the VIPs from before the restart")
	}
	go m.receive(ctx)
	// The adverts go out from a thread of their own, on the interval,
	// whatever the election is doing.
	go m.sendLoop(ctx)
	// The peer is declared gone the moment its dead interval ends, not
	// at the next tick.
	dead := time.NewTimer(time.Hour)
	defer dead.Stop()
	// The takeover's probe runs during the last stretch of the dead
	// interval, not after it.
	early := time.NewTimer(time.Hour)
	defer early.Stop()
	// A change of state that comes too soon after the last advert sent
	// between intervals goes out when the rate limit allows.
	soon := time.NewTimer(time.Hour)
	defer soon.Stop()
	ticked := true
	for {
		if wait := m.step(ctx, ticked); wait > 0 {
			soon.Reset(wait)
		}
		ticked = false
		m.mu.Lock()
		lastAt, standby := m.lastAt, !m.owner || m.inherited
		m.mu.Unlock()
		left := lastAt.Add(time.Duration(m.cfg.Dead) * m.cfg.Interval).Sub(m.now())
		if !lastAt.IsZero() && left > 0 {
			dead.Reset(left + 100*time.Microsecond)
		} else {
			dead.Reset(time.Hour)
		}
		early.Reset(time.Hour)
		if standby && !lastAt.IsZero() && left > 0 && (m.early == nil || !m.early.after.Equal(lastAt)) {
			// Half a wait early: the probe is up and listening by the
			// time its window starts, on a busy machine too.
			early.Reset(max(left-m.probeWait()*3/2, 0))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.sentTick:
			// The round of the interval runs when the sender thread has
			// sent its advert, not on a Go ticker of its own: one wakeup
			// less an interval for an idle daemon. It prepares the next
			// advert, as a ticker at any other phase would.
			ticked = true
		case <-m.kick:
		case <-dead.C:
		case <-soon.C:
		case <-early.C:
			m.startEarlyProbe(lastAt)
		}
	}
}

// earlyProbe is a takeover probe started before the peer's dead interval
// ends, so that it costs the takeover nothing: if no advert comes by the
// end, the probe has already listened for the whole of its wait.
type earlyProbe struct {
	after time.Time     // the peer's last advert when it started: a later one voids it
	done  chan struct{} // closed with who set
	end   time.Time
	who   string
	set   *probeSet // hostNet's probe, read without waiting for its goroutine (nil: done and who)
}

// startEarlyProbe probes the addresses now, in the background, unless an
// advert arrived since lastAt.
func (m *Manager) startEarlyProbe(lastAt time.Time) {
	m.drain()
	m.mu.Lock()
	quiet := m.lastAt.Equal(lastAt) && (!m.owner || m.inherited)
	m.mu.Unlock()
	if !quiet {
		return
	}
	e := &earlyProbe{after: lastAt, done: make(chan struct{})}
	m.early = e
	// It listens until the peer's dead interval ends, and at least a
	// probe's wait.
	wait := max(lastAt.Add(time.Duration(m.cfg.Dead)*m.cfg.Interval).Sub(m.now()), m.probeWait())
	// The deadline is fixed here, not when each probe has resolved its
	// interface and opened its socket: on a busy host that took
	// milliseconds to tens of them, and the takeover waited them out
	// after the dead interval (the takeover log's probe_wait).
	deadline := time.Now().Add(wait)
	if m.net.startProbe != nil {
		// It listens on past the deadline, for as long again: a round
		// that runs late (a busy host) still finds a probe that listened
		// until it, instead of probing again.
		e.set = m.net.startProbe(m.cfg.Addrs, deadline, deadline.Add(time.Duration(m.cfg.Dead)*m.cfg.Interval))
		return
	}
	go func() {
		e.who = m.probeAll(deadline)
		e.end = m.now()
		close(e.done)
	}()
}

// probed is the answer of an early probe that listened until about now
// for the silence since lastAt, if there is one.
func (m *Manager) probed(lastAt time.Time) (who string, ok bool) {
	e := m.early
	m.early = nil
	if e == nil || !e.after.Equal(lastAt) {
		return "", false
	}
	if e.set != nil {
		// Not listened its time yet (its goroutine has not sent, or
		// this round came before the deadline): wait for that, not for
		// the goroutine to end (it listens on past the deadline).
		who, errs, listened, ok := e.set.answer()
		for !ok {
			select {
			case <-e.set.sent:
				time.Sleep(time.Until(e.set.deadline))
			case <-e.set.done:
			}
			who, errs, listened, ok = e.set.answer()
		}
		// A probe that ended long ago (this round ran later still) is no
		// proof about now: probe again.
		if time.Since(listened) > m.probeWait() {
			return "", false
		}
		for i, a := range m.cfg.Addrs {
			if v := m.probeVerdict(a, who[i], errs[i]); v != "" {
				return v, true
			}
		}
		return "", true
	}
	<-e.done
	// A probe that ended long ago (this round ran late) is no proof
	// about now: probe again.
	if m.now().Sub(e.end) > m.probeWait() {
		return "", false
	}
	return e.who, true
}

// refusal is why an advert was refused.
type refusal int

const (
	accepted refusal = iota
	malformed
	badMAC
	wrongSource
	wrongName
	own
	replay
	unanswered
)

func (r refusal) count(c *Refusals) {
	switch r {
	case malformed:
		c.Malformed++
	case badMAC:
		c.BadMAC++
	case wrongSource:
		c.WrongSource++
	case wrongName:
		c.WrongName++
	case own:
		c.Own++
	case replay:
		c.Replay++
	case unanswered:
		c.Unanswered++
	}
}

func (m *Manager) receive(ctx context.Context) {
	rc, err := m.conn.(*net.UDPConn).SyscallConn()
	if err != nil {
		m.log.Error("advert socket", "err", err)
		return
	}
	for ctx.Err() == nil {
		// Read waits until the socket is readable and drains it; the
		// election drains it too before it judges the peer (drain).
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			rerr = m.drainFD(int(fd))
			return rerr != nil
		})
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				m.log.Warn("advert socket", "err", err)
			}
			return
		}
		if rerr != nil && ctx.Err() == nil {
			m.log.Warn("advert socket", "err", rerr)
			time.Sleep(m.cfg.Interval / 4)
		}
	}
}

// drain reads and handles every datagram queued on the advert socket,
// here and now: an election that runs late (a busy CPU) hears what the
// kernel received in time before it calls the peer silent.
func (m *Manager) drain() {
	rc, err := m.conn.(*net.UDPConn).SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { m.drainFD(int(fd)) })
}

// drainFD reads fd until it would block, under rxMu: whoever holds it
// next has seen every datagram queued before.
func (m *Manager) drainFD(fd int) error {
	m.rxMu.Lock()
	defer m.rxMu.Unlock()
	for {
		n, oobn, _, sa, err := unix.Recvmsg(fd, m.rxBuf, m.rxOOB, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil
		case err != nil:
			return err
		}
		var from netip.AddrPort
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			from = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			from = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
		}
		m.handle(m.rxBuf[:n], m.rxOOB[:oobn], from)
	}
}

// handle is one datagram with its control messages.
func (m *Manager) handle(b, oob []byte, from netip.AddrPort) {
	at := m.now()
	dropped, ok, rx := controls(oob)
	if ok {
		m.mu.Lock()
		m.st.Dropped = max(m.st.Dropped, uint64(dropped))
		m.mu.Unlock()
	}
	if !rx.IsZero() {
		// The kernel's receive time, on this Manager's clock (which
		// tests skew): now, less how long the datagram waited.
		if waited := time.Since(rx); waited > 0 {
			at = at.Add(-waited)
		}
	}
	r, wake, err := m.checkAt(b, from.Addr(), at)
	if err != nil {
		m.mu.Lock()
		r.count(&m.st.RefusedBy)
		refused := m.st.RefusedBy.Total()
		m.mu.Unlock()
		if refused == 1 || refused%100 == 0 {
			m.log.Warn("advert refused", "from", from.String(), "err", err, "refused", refused)
		}
		return
	}
	// Only news wakes the election: an advert that repeats what the
	// peer said is recorded (it keeps the peer alive) and waits for
	// the next round. Waking on every advert, with a step that
	// advertises, made two peers answer each other in a storm.
	if wake {
		m.wake()
	}
}

// controls reads a datagram's control messages: the SO_RXQ_OVFL count
// (how many datagrams the socket dropped so far) and the kernel's
// receive time (SO_TIMESTAMPNS; zero without).
func controls(oob []byte) (dropped uint32, ok bool, rx time.Time) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false, time.Time{}
	}
	for _, c := range msgs {
		switch {
		case c.Header.Level != unix.SOL_SOCKET:
		case c.Header.Type == unix.SO_RXQ_OVFL && len(c.Data) >= 4:
			dropped, ok = binary.NativeEndian.Uint32(c.Data), true
		case c.Header.Type == unix.SCM_TIMESTAMPNS && len(c.Data) >= 16:
			rx = time.Unix(int64(binary.NativeEndian.Uint64(c.Data)), int64(binary.NativeEndian.Uint64(c.Data[8:])))
		}
	}
	return dropped, ok, rx
}

// check decides about one datagram from from: the cheap checks first
// (a flood from a stranger costs no MAC). wake says the election should
// look at it now.
func (m *Manager) check(b []byte, from netip.Addr) (r refusal, wake bool, err error) {
	return m.checkAt(b, from, m.now())
}

// checkAt is check for a datagram that arrived at at.
func (m *Manager) checkAt(b []byte, from netip.Addr, at time.Time) (r refusal, wake bool, err error) {
	if !m.fromPeer(from) {
		return wrongSource, false, fmt.Errorf("from %s, not a --vip-peer address", from)
	}
	a, err := UnmarshalAdvert(b, m.cfg.Secret)
	if errors.Is(err, ErrAuth) {
		return badMAC, false, err
	}
	if err != nil {
		return malformed, false, err
	}
	m.mu.Lock()
	m.st.Received++
	m.mu.Unlock()
	if a.Boot == m.boot {
		return own, false, errors.New("our own advert (a loop, or a --vip-peer address of this host)")
	}
	if a.Name != m.cfg.PeerName {
		return wrongName, false, fmt.Errorf("advert from %q, the peer is %q (--vip-peer-name)", a.Name, m.cfg.PeerName)
	}
	return m.acceptAt(a, at)
}

// fromPeer says whether a datagram from addr comes from a --vip-peer
// address. The port is not checked: the address is what routing proves.
func (m *Manager) fromPeer(addr netip.Addr) bool {
	for _, p := range m.peer {
		if p.AddrPort().Addr().Unmap() == addr {
			return true
		}
	}
	return false
}

// staleWindow is how far behind the last advert one arriving over a
// slower path may be and still be ignored quietly rather than refused.
const staleWindow = 16

// retiredBoots is how many of the peer's earlier boots are remembered:
// their adverts are refused as replays, and they cannot disturb the
// challenge of a new boot.
const retiredBoots = 8

// accept records a verified advert from the peer unless it is a replay.
// Within a boot the sequence must grow. A boot not heard before is heard
// only once one of its adverts echoes our challenge: a nonce we chose at
// random after the last boot we accepted, which no advert made before
// could carry. No clock is compared, so the hosts' clocks may disagree.
// wake says the advert changes something the election decides on.
func (m *Manager) accept(a Advert) (r refusal, wake bool, err error) {
	return m.acceptAt(a, m.now())
}

// acceptAt is accept for an advert that arrived at now.
func (m *Manager) acceptAt(a Advert, now time.Time) (r refusal, wake bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now = later(now, m.lastAt) // the queue is in order; the clock readings may not be
	switch {
	case m.lastBoot != 0 && a.Boot == m.lastBoot:
		if a.Seq <= m.lastSeq {
			if m.lastSeq-a.Seq < staleWindow {
				// The same advert, or a slightly older one, over another
				// path (paths reorder): nothing new, nothing hostile.
				return accepted, false, nil
			}
			return replay, false, fmt.Errorf("replayed advert (seq %d, last %d)", a.Seq, m.lastSeq)
		}
	case slices.Contains(m.retired, a.Boot):
		return replay, false, fmt.Errorf("advert from boot %x the peer has left", a.Boot)
	default:
		// A new boot of the peer (or a replay of one we never heard:
		// indistinguishable until it answers). Its challenge is echoed
		// from now on, and answered at once.
		wake = m.echo != a.Challenge
		m.echo = a.Challenge
		if a.Echo != m.chal {
			m.unansweredAt = later(now, m.unansweredAt)
			return unanswered, wake, fmt.Errorf("boot %x has not echoed our challenge (yet)", a.Boot)
		}
		if m.lastBoot != 0 {
			m.retired = append(m.retired, m.lastBoot)
			if len(m.retired) > retiredBoots {
				m.retired = m.retired[1:]
			}
		}
		m.chal = nonce() // the next new boot answers a new challenge
		m.last, m.lastAt, m.lastBoot, m.lastSeq = a, now, a.Boot, a.Seq
		return accepted, true, nil
	}
	wake = !m.peerAlive(now) || m.echo != a.Challenge || news(m.last, a)
	m.echo = a.Challenge
	m.last, m.lastAt, m.lastSeq = a, now, a.Seq
	return accepted, wake, nil
}

func later(a, b time.Time) time.Time {
	if a.Before(b) {
		return b
	}
	return a
}

// news says whether b changes anything the election decides on.
func news(a, b Advert) bool {
	return a.Owner != b.Owner || a.Healthy != b.Healthy || a.CaughtUp != b.CaughtUp || a.Yield != b.Yield ||
		a.Want != b.Want || a.Priority != b.Priority || a.Generation != b.Generation
}

// step runs one election round: advertise, decide, act. It advertises
// on the interval's tick (ticked), and between ticks only when what it
// says has changed, at most once per urgentGap; when the limit holds a
// change back, it returns how long until it may go.
func (m *Manager) step(ctx context.Context, ticked bool) (retry time.Duration) {
	// What the kernel queued counts, whenever this round runs.
	m.drain()
	now := m.now()
	healthErr := m.cfg.Health()
	m.mu.Lock()
	peer := Peer{Advert: m.last, Alive: m.peerAlive(now)}
	lastAt := m.lastAt
	// The peer's adverts arrive, but its handshake with this boot is not
	// done: it echoes our challenge only once its election has run, late
	// on a busy host.
	handshaking := !peer.Alive && !m.unansweredAt.IsZero() &&
		now.Sub(m.unansweredAt) <= time.Duration(m.cfg.Dead)*m.cfg.Interval
	held, inherited, yielding := m.owner, m.inherited, m.yielding
	m.mu.Unlock()
	// An owner is a host that took the VIPs in this run; addresses held
	// from before a restart are only inherited until the election
	// confirms them (a restarted host never wins a contest with the
	// owner that served while it was gone).
	owner := held && !inherited
	caught, gen, applied := m.cfg.Sync(peer.Advert)
	if owner {
		caught = true // the owner's state is the reference
	}
	self := Self{Name: m.cfg.Name, Priority: m.cfg.Priority, Generation: gen, Owner: owner, Healthy: healthErr == nil, CaughtUp: caught, Yielding: yielding}
	want := m.cfg.Preempt && !owner && caught && peer.Alive && peer.Owner && m.cfg.Priority > peer.Priority
	retry = m.advertise(Advert{Name: m.cfg.Name, Priority: m.cfg.Priority, Generation: gen, Owner: owner, Healthy: healthErr == nil,
		CaughtUp: caught, Yield: yielding, Want: want, Applied: applied}, ticked, now)

	own, why := Decide(self, peer)
	// Listen first: a host that just started hears its peer before it
	// claims or gives up anything (inherited addresses keep serving):
	// one dead interval, and longer while the peer talks but has not yet
	// answered our challenge (up to handshakeListen intervals). Such a
	// peer is alive; calling it silent left the takeover to a probe of a
	// quarter interval, which a busy host answers late too, and a
	// restarted better-priority standby that took the VIPs so kept them
	// (a split brain settles by priority).
	listen := time.Duration(m.cfg.Dead) * m.cfg.Interval
	if handshaking {
		listen = max(listen, handshakeListen*m.cfg.Interval)
	}
	if !owner && now.Sub(m.started) < listen {
		own, why = false, "listening for the peer"
		held = false
	}
	switch {
	case own && inherited && held:
		m.takeover(why + " (addresses held from before the restart)")
	case own && !held:
		var silent []any // where a takeover's time went, for its log line
		if !peer.Alive {
			// Nobody must answer for the addresses: a peer whose daemon
			// died may still serve them. All are probed at once.
			decided := m.now()
			who, early := m.probed(lastAt)
			if !early {
				who = m.probeAll(time.Now().Add(m.probeWait()))
			}
			if who != "" {
				own, why = false, who
				m.log.Debug("takeover probe answered", "who", who)
			}
			if !lastAt.IsZero() {
				silent = []any{"silent", decided.Sub(lastAt).Round(10 * time.Microsecond), "early_probe", early,
					"probe_wait", m.now().Sub(decided).Round(10 * time.Microsecond)}
			}
		}
		if own {
			m.takeover(why, silent...)
		}
	case !own && held && !yielding:
		m.release(why)
	}
	if owner && own && healthErr == nil && peer.Alive && peer.Want && peer.Priority > m.cfg.Priority && !m.isHanding() {
		go func() {
			if err := m.Handover(ctx, func(s string) { m.log.Info("preemption: " + s) }); err != nil {
				m.log.Warn("preemption handover", "err", err)
			}
		}()
	}
	// A split brain settled in our favour: the peer announced the
	// addresses too while it owned, and hosts that learned its MAC keep
	// sending to it, and its closed gate, until their neighbour entries
	// age out. Announce again, on the takeover's schedule, when the peer
	// stops owning, and when it is heard again after a silence (it may
	// have owned while we could not hear it, and let go before we heard
	// it say so).
	peerOwns := peer.Alive && peer.Owner
	m.mu.Lock()
	back := peer.Alive && !m.peerHeard
	settled := (back || m.peerOwned && !peerOwns) && m.owner && !m.inherited && !m.yielding && owner && own
	m.peerOwned, m.peerHeard = peerOwns, peer.Alive
	// A split brain: both own and neither hands over. It is settled when
	// either lets go (or the peer falls silent).
	split := owner && peerOwns && !peer.Yield && !yielding
	if m.split && !split {
		m.st.SplitBrains++
	}
	m.split = split
	m.mu.Unlock()
	if settled {
		m.log.Info("the peer is back or let go of the VIPs: announcing them again")
		m.announceFrom(now)
	}
	m.reannounce(now)

	m.mu.Lock()
	// The sync's primary is the owner, once the peer has let go: a
	// handing-over peer stays primary until it has flushed its last
	// changes, and says it let go only then. Two owners (a healed
	// partition) stop syncing until the election settles.
	primary := m.owner && !m.inherited && (m.yielding || !(peer.Alive && peer.Owner))
	changed := primary != m.primary
	m.primary = primary
	if m.st.Why != why && (m.owner && !m.inherited) == own {
		m.st.Why = why
	}
	m.st.Owner, m.st.Healthy, m.st.CaughtUp, m.st.Generation, m.st.Primary = m.owner && !m.inherited, healthErr == nil, caught, gen, primary
	m.st.Problem = ""
	if healthErr != nil {
		m.st.Problem = healthErr.Error()
	}
	m.st.Peer, m.st.PeerOwner, m.st.PeerHealthy, m.st.PeerSeen = peer.Name, peer.Owner, peer.Healthy, m.lastAt
	m.mu.Unlock()
	if changed {
		m.log.Info("sync role", "event", "role", "primary", primary)
		m.cfg.Role(primary)
	}
	return retry
}

// handshakeListen is how many intervals a host that just started keeps
// listening while its peer's adverts arrive unanswered (the handshake
// with this boot not done): a peer that never answers (or a replay of a
// boot it left) holds the start back this long at most.
const handshakeListen = 40

// urgentGap is the least time between two adverts sent between ticks.
func (m *Manager) urgentGap() time.Duration { return m.cfg.Interval / 4 }

// advertise sends a on every path between ticks, when it says something
// the last advert did not (a change of ownership, health, a yield, an
// echo the peer waits for), and then at most once per urgentGap; on a
// tick it only hands a to the sender thread (sendLoop). It returns how
// long a change held back must wait, or 0.
func (m *Manager) advertise(a Advert, ticked bool, now time.Time) time.Duration {
	m.mu.Lock()
	a.Challenge, a.Echo = m.chal, m.echo
	state := a // the applied sequence moves with traffic: not a change of state
	state.Applied = 0
	if ticked || state == m.sentState {
		m.tmpl.Store(&a)
		m.sentState = state
		m.mu.Unlock()
		return 0
	}
	if wait := m.urgentAt.Add(m.urgentGap()).Sub(now); wait > 0 {
		m.mu.Unlock()
		return wait
	}
	m.urgentAt = now
	m.sentState = state
	m.tmpl.Store(&a)
	m.mu.Unlock()
	m.send(a)
	return 0
}

// send signs a with the next sequence and sends it on every path.
func (m *Manager) send(a Advert) {
	a.Seq, a.Boot, a.SentNanos = m.seq.Add(1), m.boot, m.now().UnixNano()
	b, err := a.Marshal(m.cfg.Secret)
	if err != nil {
		m.log.Error("advert", "err", err)
		return
	}
	for _, p := range m.peer {
		m.conn.WriteTo(b, p) // a path that is down is what the other paths are for
	}
	m.sent.Add(uint64(len(m.peer)))
}

// sendLoop sends the adverts on the interval from a thread of its own,
// at SCHED_FIFO priority cfg.Realtime when set, sleeping in the kernel
// to absolute deadlines: neither a busy Go scheduler nor a busy CPU
// holds them back (a late advert is what makes a live peer look dead).
// The thread is never unlocked: it ends with the goroutine, priority
// and all.
func (m *Manager) sendLoop(ctx context.Context) {
	runtime.LockOSThread()
	if p := m.cfg.Realtime; p > 0 {
		err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(p)}, 0)
		if err != nil {
			// Info, not a warning: the packaged unit refuses realtime on
			// purpose (RestrictRealtime=yes, docs/failover.md).
			m.log.Info("advert sender at normal priority (realtime needs CAP_SYS_NICE and RestrictRealtime=no): adverts may be late on a saturated CPU", "err", err)
		}
	}
	next := kclock.Now()
	iv := m.cfg.Interval.Nanoseconds()
	for ctx.Err() == nil {
		next += iv
		if now := kclock.Now(); next < now-iv {
			next = now // far behind (a suspended host): no burst to catch up
		}
		for errors.Is(kclock.SleepUntil(next), unix.EINTR) {
		}
		if ctx.Err() != nil {
			return
		}
		if a := m.tmpl.Load(); a != nil {
			m.send(*a)
		}
		select {
		case m.sentTick <- struct{}{}:
		default:
		}
	}
}

// probeAll probes every address in parallel and listens until deadline
// (a quarter of an advert interval from now, at least 10 ms: probeWait;
// an early probe until the peer's dead interval ends) for answers. It
// says who answered or why a probe failed; "" when nobody holds any
// address.
func (m *Manager) probeAll(deadline time.Time) string {
	res := make([]string, len(m.cfg.Addrs))
	var wg sync.WaitGroup
	for i, a := range m.cfg.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			who, err := m.net.probe(a, deadline)
			res[i] = m.probeVerdict(a, who, err)
		}()
	}
	wg.Wait()
	for _, r := range res {
		if r != "" {
			return r
		}
	}
	return ""
}

// probeVerdict says who answered a's probe or why it failed; "" when
// nobody holds a.
func (m *Manager) probeVerdict(a Addr, who net.HardwareAddr, err error) string {
	switch {
	case err != nil:
		m.log.Warn("probe", "addr", a.String(), "err", err)
		return "probe failed: " + err.Error()
	case who != nil:
		return fmt.Sprintf("%s answered by %s although its daemon is silent", a.Prefix.Addr(), who)
	}
	return ""
}

// probeWait is how long a takeover probe listens for an answer.
func (m *Manager) probeWait() time.Duration { return max(m.cfg.Interval/4, 10*time.Millisecond) }

// takeover: addresses, gate, announcements.
func (m *Manager) takeover(why string, logAttrs ...any) {
	start := m.now()
	if m.cfg.Claim != nil {
		m.cfg.Claim()
	}
	claimed := m.now()
	for _, a := range m.cfg.Addrs {
		if err := m.net.add(a); err != nil {
			m.log.Error("takeover: address", "err", err)
		}
	}
	added := m.now()
	if err := m.cfg.Gate(true); err != nil {
		m.log.Error("takeover: gate", "err", err)
	}
	m.mu.Lock()
	m.owner, m.inherited = true, false
	m.st.Why, m.st.Since, m.st.Takeovers = why, m.now(), m.st.Takeovers+1
	m.mu.Unlock()
	m.announceFrom(start)
	// Where the takeover's time went: the claim (IPsec SAs), adding the
	// addresses (rtnetlink: the kernel's rtnl lock, shared with every
	// link change on the host), the gate and the announcements.
	end := m.now()
	m.log.Info("took the VIPs", append([]any{"event", "takeover", "why", why, "took", end.Sub(start).Round(time.Microsecond),
		"claim", claimed.Sub(start).Round(time.Microsecond), "add", added.Sub(claimed).Round(time.Microsecond)}, logAttrs...)...)
	m.wake() // tell the peer now, not at the next interval
}

// announceFrom announces the addresses now and schedules the rest of the
// takeover's announcements from start.
func (m *Manager) announceFrom(start time.Time) {
	m.announceAll()
	m.mu.Lock()
	m.announces = nil
	for _, d := range m.cfg.Announce[1:] {
		m.announces = append(m.announces, start.Add(d))
	}
	m.mu.Unlock()
}

// release: gate, then addresses.
func (m *Manager) release(why string) {
	if err := m.cfg.Gate(false); err != nil {
		m.log.Error("release: gate", "err", err)
	}
	for _, a := range m.cfg.Addrs {
		if err := m.net.del(a); err != nil {
			m.log.Error("release: address", "err", err)
		}
	}
	m.mu.Lock()
	m.owner, m.inherited = false, false
	m.st.Why, m.st.Since, m.st.Releases = why, m.now(), m.st.Releases+1
	m.announces = nil
	m.mu.Unlock()
	m.log.Info("released the VIPs", "event", "release", "why", why)
	m.wake() // tell the peer now, not at the next interval
}

func (m *Manager) announceAll() {
	for _, a := range m.cfg.Addrs {
		if err := m.net.announce(a); err != nil {
			m.log.Warn("announce", "addr", a.String(), "err", err)
		}
	}
}

func (m *Manager) reannounce(now time.Time) {
	m.mu.Lock()
	if !m.owner || m.yielding {
		// A host handing over must not announce the addresses it gave
		// away: its late announcement would pull clients back to it.
		m.announces = nil
	}
	due := false
	for len(m.announces) > 0 && !now.Before(m.announces[0]) {
		m.announces = m.announces[1:]
		due = true
	}
	m.mu.Unlock()
	if due {
		m.announceAll()
	}
}

// Handover moves the VIPs from this host (the owner) to the peer without
// losing a packet: the sync is flushed and the peer caught up; this host
// removes its addresses but keeps serving what still reaches it; the peer
// takes the addresses and announces them; after a grace period for the
// announcements to land this host closes its gate. progress gets a line
// per step.
func (m *Manager) Handover(ctx context.Context, progress func(string)) error {
	m.mu.Lock()
	if !m.owner || m.inherited {
		m.mu.Unlock()
		return fmt.Errorf("this host does not own the VIPs; run the handover on %s", m.last.Name)
	}
	if m.handing {
		m.mu.Unlock()
		return errors.New("a handover is already running")
	}
	if !m.peerAlive(m.now()) || !m.last.Healthy {
		m.mu.Unlock()
		return errors.New("the peer is silent or unhealthy: nobody to hand over to")
	}
	peerName := m.last.Name
	m.handing = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.handing, m.yielding = false, false
		m.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	progress("flushing the state sync")
	if err := m.cfg.Flush(ctx); err != nil {
		return fmt.Errorf("flush the sync: %w", err)
	}
	progress("waiting for " + peerName + " to catch up")
	if err := m.waitPeer(ctx, func(a Advert) bool { return a.CaughtUp }); err != nil {
		return fmt.Errorf("%s did not catch up: %w", peerName, err)
	}
	progress("removing the addresses here (the datapath keeps serving)")
	m.mu.Lock()
	m.announces = nil // no more announcements from here
	m.mu.Unlock()
	for _, a := range m.cfg.Addrs {
		if err := m.net.del(a); err != nil {
			return err
		}
	}
	m.mu.Lock()
	m.yielding = true
	m.mu.Unlock()
	m.wake() // advertise the yield now
	progress("waiting for " + peerName + " to take the addresses")
	err := m.waitPeer(ctx, func(a Advert) bool { return a.Owner })
	if err != nil {
		// Take everything back: the peer never took over.
		for _, a := range m.cfg.Addrs {
			m.net.add(a)
		}
		m.announceAll()
		return fmt.Errorf("%s did not take the VIPs (kept them here): %w", peerName, err)
	}
	grace := max(4*m.cfg.Interval, 200*time.Millisecond)
	progress(fmt.Sprintf("%s owns the VIPs; serving stragglers here for %s", peerName, grace))
	select {
	case <-time.After(grace):
	case <-ctx.Done():
	}
	// The gate closes first; what the datapath changed until then is
	// flushed to the peer before this host says it let go, which is
	// what makes the peer's sync the primary.
	progress("closing the gate here and flushing the last changes")
	if err := m.cfg.Gate(false); err != nil {
		m.log.Error("handover: gate", "err", err)
	}
	if err := m.cfg.Flush(ctx); err != nil {
		m.log.Warn("handover: final flush", "err", err)
	}
	m.release("handed over to " + peerName)
	progress("done: " + peerName + " owns the VIPs")
	return nil
}

func (m *Manager) isHanding() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.handing
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Manager) waitPeer(ctx context.Context, ok func(Advert) bool) error {
	for {
		m.mu.Lock()
		a, alive := m.last, m.peerAlive(m.now())
		m.mu.Unlock()
		if alive && ok(a) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(m.cfg.Interval / 4):
		}
	}
}
