package migrate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
)

// FlushTimeout bounds how long a flush waits for held packets that took a
// ticket but never reached the ring; past it they are counted lost.
var FlushTimeout = 2 * time.Second

type heldFrame struct {
	ifindex uint32
	data    []byte
}

// Local is the Controller over this host's pinned migrate maps: the
// daemon's. It reads the hold ring and re-injects held packets through
// xdp_mig_flush.
type Local struct {
	mu   sync.Mutex
	m    *maps.MigrateMaps
	rd   *ringbuf.Reader
	pend map[netip.Addr][]heldFrame // read from the ring while their endpoint is still held
	log  *slog.Logger
	rec  ringbuf.Record
	out  []byte
	pkt  int             // AF_PACKET socket the flush sends on
	ifs  map[[6]byte]int // egress interface by its MAC
	tmpl hopTemplate     // the current flush's hop
	out2 batch
	// sendFull counts ENOBUFS/EAGAIN answers to the flush's sendmmsg (the
	// egress was full); BenchmarkHold reports it.
	sendFull uint64
	// active: this gateway owns the state (primary, or no sync). A
	// standby's replicated maps are written by the state sync only: a
	// write of its own would bump versions the primary's next change
	// must beat, so a passive controller refuses changes.
	active  bool
	adopted bool // the restart's losses are counted
	// touched: each holding migration's tickets when last marked for
	// the sync (touchLoop); stop ends the loop, at Close.
	touched map[netip.Addr]uint64
	stop    chan struct{}
	stopped sync.WaitGroup
	// res has the kernel resolve the hops the stage forwards to
	// (resolve.go); resolveLoop's, and the setters'.
	res resolver
}

// TouchInterval is how often the owner marks a migration that holds
// packets for the sync: the datapath's hold tickets change without a
// mark of their own (one per held packet would put the sync's version
// bump on the hold's path), so this is what brings the peer the owner's
// counts. A failover loses at most this interval's (and one sync
// round's) share of the count.
var TouchInterval = 10 * time.Millisecond

var _ Controller = (*Local)(nil)

// ErrStandby: the controller runs on the standby gateway of a pair; the
// owner's daemon takes migration commands.
var ErrStandby = errors.New("this gateway is the standby (its state comes from the owner through the sync): drive the owner's daemon")

// NewLocal takes over m (closed by Close) as the owner of the state. It
// adopts what a previous daemon left: held packets still in the ring stay
// held; held packets the previous daemon had read but not re-injected are
// gone and counted (Migration.Lost, mig_stats hold_lost, and the log).
func NewLocal(m *maps.MigrateMaps, log *slog.Logger) (*Local, error) {
	return NewLocalRole(m, log, true)
}

// NewLocalRole is NewLocal for a daemon that may be a standby (active
// false): it reads the hold ring but changes nothing until SetActive.
func NewLocalRole(m *maps.MigrateMaps, log *slog.Logger, active bool) (*Local, error) {
	if log == nil {
		log = slog.Default()
	}
	rd, err := ringbuf.NewReader(m.Hold)
	if err != nil {
		return nil, fmt.Errorf("read hold ring: %w", err)
	}
	l := &Local{m: m, rd: rd, pend: map[netip.Addr][]heldFrame{}, log: log, out: make([]byte, 4096), ifs: map[[6]byte]int{}, active: active,
		touched: map[netip.Addr]uint64{}, stop: make(chan struct{}), res: newResolver()}
	// Protocol 0: the socket only sends. It bypasses the qdisc, as the
	// datapath's redirects do, so a flushed frame is not queued behind
	// (or overtaken by) anything.
	if l.pkt, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		l.res.close()
		rd.Close()
		return nil, fmt.Errorf("packet socket for the flush: %w", err)
	}
	unix.SetsockoptInt(l.pkt, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
	// Room for several batches in flight (the default 208 KiB holds
	// about one batch of small frames): the flush then waits on the
	// socket less often. FORCE needs CAP_NET_ADMIN, which the daemon has.
	if unix.SetsockoptInt(l.pkt, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBufBytes) != nil {
		unix.SetsockoptInt(l.pkt, unix.SOL_SOCKET, unix.SO_SNDBUF, sendBufBytes)
	}
	if err := l.m.SetRole(!active); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.adopt(); err != nil {
		l.Close()
		return nil, err
	}
	l.stopped.Add(2)
	go l.touchLoop()
	go l.resolveLoop()
	return l, nil
}

// touchLoop marks, every TouchInterval, each migration whose hold
// tickets moved since its last mark, while this controller is the owner.
func (l *Local) touchLoop() {
	defer l.stopped.Done()
	t := time.NewTicker(TouchInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.mu.Lock()
		if l.active {
			l.touch()
		}
		l.mu.Unlock()
	}
}

func (l *Local) touch() {
	migs, err := l.m.Migrations()
	if err != nil {
		return
	}
	for ep := range l.touched {
		if _, ok := migs[ep]; !ok {
			delete(l.touched, ep)
		}
	}
	for ep, v := range migs {
		if last, ok := l.touched[ep]; ok && last == v.Hold {
			continue
		}
		if v.Hold&^maps.MigFlushing == 0 {
			continue
		}
		if err := l.m.Touch(ep); err != nil {
			continue
		}
		l.touched[ep] = v.Hold
	}
}

// SetActive makes the controller the owner of the state (the election
// made this gateway the owner) or a standby. Becoming the owner counts
// what the old owner held as lost (it was in the old owner's ring; the
// replicated counters still say it is held) and finishes a flush the old
// owner left running.
func (l *Local) SetActive(active bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.active = active
	// The datapath first: from now on it counts what it holds where
	// the new role says.
	if err := l.m.SetRole(!active); err != nil {
		return err
	}
	if !active {
		return nil
	}
	l.adopted = false
	return l.adopt()
}

// afterAdoptDrain, when set (tests), runs between adopt's drain of the
// ring and its second reading of the tickets: where a packet held
// meanwhile used to be counted lost.
var afterAdoptDrain func()

// adoptTries bounds adopt's search for a quiet moment (see adopt).
const adoptTries = 8

// adopt reads every record in the ring into pend, then (as the owner)
// counts what each migration's tickets say is held beyond that as lost.
//
// The tickets are read before the drain and again after it: this host's
// datapath goes on holding meanwhile (it is the owner now, or frames
// reach it anyway), and a ticket taken after the drain has its frame
// still on the way into the ring. Counting it lost would let the flush
// end that many frames early and strand the last held packets in the
// ring (TestMigrateFailover lost the last 11 held datagrams so). Tickets
// unchanged across the drain: the count is exact. Still moving after
// adoptTries: the first reading, which counts too few at worst; the
// flush then waits FlushTimeout for frames that never come and counts
// them lost, holding new packets behind meanwhile, never losing them.
func (l *Local) adopt() error {
	if !l.active || l.adopted {
		_, err := l.drain(netip.Addr{})
		return err
	}
	// What this host held as the standby joins the record's tickets
	// (its frames are in this host's ring): the totals are the old
	// owner's (as last replicated) plus this host's.
	cur, err := l.m.Migrations()
	if err != nil {
		return err
	}
	for ep := range cur {
		n, err := l.m.AdoptStandby(ep)
		if err != nil {
			return err
		}
		if n > 0 {
			l.log.Info("migration: packets held as the standby join the count", "endpoint", ep, "held", n)
		}
	}
	var migs map[netip.Addr]maps.MigVal
	for try := 0; ; try++ {
		var err error
		if migs, err = l.m.Migrations(); err != nil {
			return err
		}
		if _, err := l.drain(netip.Addr{}); err != nil {
			return err
		}
		if afterAdoptDrain != nil {
			afterAdoptDrain()
		}
		again, err := l.m.Migrations()
		if err != nil {
			return err
		}
		if try == adoptTries-1 || sameTickets(migs, again) {
			break
		}
	}
	l.adopted = true
	for ep, v := range migs {
		p := maps.Pending(&v)
		have := uint64(len(l.pend[ep]))
		if p > have {
			l.log.Warn("migration: held packets lost with the previous daemon", "endpoint", ep, "lost", p-have)
			if _, err := l.m.Lost(ep, p-have); err != nil {
				return err
			}
		}
		if st := State(v.State); (st == StateSwitched || st == StateAborted) && v.Hold&maps.MigFlushing != 0 {
			// The previous daemon stopped mid-flush: finish it.
			if err := l.flush(ep); err != nil {
				return err
			}
		}
	}
	return nil
}

// sameTickets: no migration took a ticket (or came or went) between a
// and b.
func sameTickets(a, b map[netip.Addr]maps.MigVal) bool {
	if len(a) != len(b) {
		return false
	}
	for ep, v := range a {
		w, ok := b[ep]
		if !ok || v.Hold&^maps.MigFlushing != w.Hold&^maps.MigFlushing {
			return false
		}
	}
	return true
}

// Close releases the maps. Packets still held stay in the ring for the
// next daemon.
func (l *Local) Close() error {
	close(l.stop)
	l.stopped.Wait()
	l.res.close()
	unix.Close(l.pkt)
	l.rd.Close()
	l.m.Close()
	return nil
}

func (l *Local) owner() error {
	if !l.active {
		return ErrStandby
	}
	return nil
}

func (l *Local) get(ep netip.Addr) (maps.MigLoc, *maps.MigVal, error) {
	if err := l.owner(); err != nil {
		return maps.MigLoc{}, nil, err
	}
	hop, ok, err := l.m.EndpointLoc(ep)
	if err != nil {
		return maps.MigLoc{}, nil, err
	}
	if !ok {
		return maps.MigLoc{}, nil, fmt.Errorf("endpoint %s: %w", ep, ErrNoEndpoint)
	}
	v, err := l.m.Migration(ep)
	return hop, v, err
}

func stateErr(ep netip.Addr, step string, v *maps.MigVal) error {
	st := StateNone
	if v != nil {
		st = State(v.State)
	}
	return fmt.Errorf("%s %s: migration is %s: %w", step, ep, st, ErrState)
}

func (l *Local) Start(ep netip.Addr, to Location) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	from, v, err := l.get(ep)
	if err != nil {
		return err
	}
	if v != nil {
		return stateErr(ep, "start", v)
	}
	if !to.Hop.IsValid() {
		return fmt.Errorf("start %s: no destination (--to HOST)", ep)
	}
	if err := to.Validate(); err != nil {
		return fmt.Errorf("start %s: %w", ep, err)
	}
	if err := l.res.routable(to); err != nil {
		return fmt.Errorf("start %s: to %s: %w", ep, to, err)
	}
	// Resolved by the switch, not at its first packet's no_route.
	l.res.ensure(to.Hop)
	return l.m.PutMigration(ep, &maps.MigVal{State: uint32(bpf.MigrateMigStateIdMIG_MIGRATING), From: from, To: to.rec()}, false)
}

func (l *Local) Blackout(ep netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, v, err := l.get(ep)
	if err != nil {
		return err
	}
	if v == nil || State(v.State) != StateMigrating {
		return stateErr(ep, "blackout", v)
	}
	v.State = uint32(bpf.MigrateMigStateIdMIG_BLACKOUT)
	return l.m.PutMigration(ep, v, true)
}

func (l *Local) Switch(ep netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, v, err := l.get(ep)
	if err != nil {
		return err
	}
	if v == nil || (State(v.State) != StateMigrating && State(v.State) != StateBlackout) {
		return stateErr(ep, "switch", v)
	}
	v.State = uint32(bpf.MigrateMigStateIdMIG_SWITCHED)
	if err := l.m.PutMigration(ep, v, false); err != nil {
		return err
	}
	return l.flush(ep)
}

func (l *Local) Done(ep netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, v, err := l.get(ep)
	if err != nil {
		return err
	}
	if v == nil || State(v.State) != StateSwitched {
		return stateErr(ep, "done", v)
	}
	if v.Hold&maps.MigFlushing != 0 {
		if err := l.flush(ep); err != nil {
			return err
		}
	}
	// The destination, then every queued update in order; the record
	// goes last, so a failover in between still knows the move.
	if err := l.m.SetEndpointLoc(ep, v.To); err != nil {
		return err
	}
	for i := 0; i < int(v.Nqueued) && i < maps.MigQueueMax; i++ {
		if err := l.m.SetEndpointLoc(ep, v.Queued[i]); err != nil {
			return err
		}
	}
	return l.m.DelMigration(ep)
}

func (l *Local) Abort(ep netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, v, err := l.get(ep)
	if err != nil {
		return err
	}
	if v == nil {
		return stateErr(ep, "abort", v)
	}
	if v.Hold&maps.MigFlushing != 0 {
		// Held packets go to the source first, new ones behind them.
		v.State = uint32(bpf.MigrateMigStateIdMIG_ABORTED)
		if err := l.m.PutMigration(ep, v, false); err != nil {
			return err
		}
		if err := l.flush(ep); err != nil {
			return err
		}
	}
	// The endpoint's location is still the source: dropping the record
	// sends its packets there; queued updates go with it.
	return l.m.DelMigration(ep)
}

func (l *Local) SetLocation(ep netip.Addr, loc Location) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.owner(); err != nil {
		return false, err
	}
	if err := ValidateEndpoint(ep); err != nil {
		return false, fmt.Errorf("set: %w", err)
	}
	if err := loc.Validate(); err != nil {
		return false, fmt.Errorf("set %s: %w", ep, err)
	}
	if err := l.res.routable(loc); err != nil {
		return false, fmt.Errorf("set %s: %w", ep, err)
	}
	l.res.ensure(loc.Hop)
	v, err := l.m.Migration(ep)
	if err != nil {
		return false, err
	}
	if v == nil {
		return false, l.m.SetEndpointLoc(ep, loc.rec())
	}
	if int(v.Nqueued) >= maps.MigQueueMax {
		return false, fmt.Errorf("set %s: %d updates queued already: %w", ep, v.Nqueued, ErrQueueFull)
	}
	v.Queued[v.Nqueued] = loc.rec()
	v.Nqueued++
	return true, l.m.PutMigration(ep, v, false)
}

func (l *Local) Delete(ep netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, v, err := l.get(ep)
	if err != nil {
		return err
	}
	if v != nil {
		return fmt.Errorf("delete %s: it is migrating (abort first): %w", ep, ErrState)
	}
	return l.m.DelEndpoint(ep)
}

func (l *Local) List() ([]Endpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	eps, err := l.m.EndpointList()
	if err != nil {
		return nil, err
	}
	migs, err := l.m.Migrations()
	if err != nil {
		return nil, err
	}
	var out []Endpoint
	for a, hop := range eps {
		e := Endpoint{Addr: a, Location: locOf(hop)}
		if v, ok := migs[a]; ok {
			e.Migration = MigrationOf(&v)
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// MigrationOf converts a mig_state value.
func MigrationOf(v *maps.MigVal) *Migration {
	m := &Migration{
		State: State(v.State), From: locOf(v.From), To: locOf(v.To),
		Held: v.Hold &^ maps.MigFlushing, Flushed: v.Flushed, Overflow: v.Overflow, Lost: v.Lost,
		Flushing: v.Hold&maps.MigFlushing != 0,
	}
	for i := 0; i < int(v.Nqueued) && i < maps.MigQueueMax; i++ {
		m.Queued = append(m.Queued, locOf(v.Queued[i]))
	}
	return m
}

// flush re-injects ep's held packets in order until the hold has caught
// up (every ticket flushed, dropped or lost); packets that arrive
// meanwhile are held behind them and flushed in the same loop.
func (l *Local) flush(ep netip.Addr) error {
	deadline := time.Now().Add(FlushTimeout)
	l.tmpl = hopTemplate{}
	for {
		n, err := l.injectPending(ep)
		if err != nil {
			return err
		}
		d, err := l.drain(ep)
		if err != nil {
			return fmt.Errorf("after %d: %w", n+d, err)
		}
		n += d
		// Everything re-injected must be sent before the hold may end.
		if err := l.sendBatch(); err != nil {
			return err
		}
		done, err := l.m.Flushed(ep, n)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			v, err := l.m.Migration(ep)
			if err != nil || v == nil {
				return err
			}
			lost := maps.Pending(v)
			l.log.Warn("migration: held packets never reached the hold ring", "endpoint", ep, "lost", lost)
			if _, err := l.m.Lost(ep, lost); err != nil {
				return err
			}
			deadline = time.Now().Add(FlushTimeout)
		}
		if n == 0 {
			// A packet took its ticket and is on its way into the ring.
			time.Sleep(100 * time.Microsecond)
		}
	}
}

func (l *Local) injectPending(ep netip.Addr) (uint64, error) {
	frames := l.pend[ep]
	delete(l.pend, ep)
	for i, f := range frames {
		if err := l.inject(f.ifindex, f.data); err != nil {
			l.pend[ep] = frames[i:]
			return uint64(i), err
		}
	}
	return uint64(len(frames)), nil
}

// drain reads the ring until it is empty: ep's records are re-injected at
// once (counted), others are kept for their own switch. The zero ep keeps
// everything.
func (l *Local) drain(ep netip.Addr) (uint64, error) {
	var n uint64
	l.rd.SetDeadline(time.Now())
	for {
		if err := l.rd.ReadInto(&l.rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return n, nil
			}
			return n, fmt.Errorf("read hold ring: %w", err)
		}
		raw := l.rec.RawSample
		if len(raw) < maps.MigHoldHeader {
			continue
		}
		var k [16]byte
		copy(k[:], raw)
		owner := netip.AddrFrom16(k).Unmap()
		ifindex := binary.LittleEndian.Uint32(raw[16:])
		size := int(binary.LittleEndian.Uint32(raw[20:]))
		if size > len(raw)-maps.MigHoldHeader {
			size = len(raw) - maps.MigHoldHeader
		}
		data := raw[maps.MigHoldHeader : maps.MigHoldHeader+size]
		if owner == ep && len(l.pend[ep]) == 0 {
			if err := l.inject(ifindex, data); err != nil {
				return n, err
			}
			n++
			continue
		}
		l.pend[owner] = append(l.pend[owner], heldFrame{ifindex, slices.Clone(data)})
	}
}

// inject sends one held frame on. xdp_mig_flush decides where, as the
// stage would (FIB and neighbour lookup, TTL, MACs), in a test run that
// returns the rewritten frame; the frame then leaves through a packet
// socket on the interface whose MAC it now carries as its source.
// (Running xdp_mig_flush with live frames, which sends by itself, failed
// with ENOSPC after ~28,000 frames: each live run registers a page pool,
// and their ids run out while frames are in flight; docs/migration.md.)
func (l *Local) inject(ifindex uint32, data []byte) error {
	// The frame is the ring's (or pend's): rewritten in place, then
	// copied into the batch.
	if l.tmpl.rewrite(data) {
		if l.tmpl.outer != nil {
			return l.addEncap(&l.tmpl, data)
		}
		return l.add(&l.tmpl, data)
	}
	opts := &ebpf.RunOptions{Data: data, DataOut: l.out, Repeat: 1}
	ret, err := l.m.Flush.Run(opts)
	if err != nil {
		return fmt.Errorf("re-inject held packet (%d bytes): %w", len(data), err)
	}
	if ret != xdpRedirect {
		// No route or neighbour, TTL expired, not IP: counted by the
		// program; the frame goes no further.
		return nil
	}
	frame := opts.DataOut
	var src [6]byte
	copy(src[:], frame[6:12])
	idx, ok := l.ifs[src]
	if !ok {
		if idx, err = ifindexOf(src); err != nil {
			return err
		}
		l.ifs[src] = idx
	}
	proto := uint16(frame[12])<<8 | uint16(frame[13])
	t := hopTemplate{ok: true, ether: proto}
	if n := len(frame) - len(data); n != 0 {
		// A routed location: the program pushed an outer header; the
		// template keeps it for the endpoint's other frames (the
		// inner packet is rewritten as for a segment hop).
		t.ether = uint16(data[12])<<8 | uint16(data[13])
		t.outerEther = proto
		t.ok = (n == 20 && proto == unix.ETH_P_IP) || (n == 40 && proto == unix.ETH_P_IPV6)
		t.outer = slices.Clone(frame[14 : 14+n])
	}
	copy(t.macs[:], frame[0:12])
	t.to = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Ifindex: int32(idx), Protocol: proto<<8 | proto>>8, Halen: 6}
	copy(t.to.Addr[:], frame[0:6])
	l.tmpl = t
	return l.add(&l.tmpl, frame)
}

const xdpRedirect = 4

func ifindexOf(mac [6]byte) (int, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return 0, fmt.Errorf("list interfaces: %w", err)
	}
	for _, i := range ifs {
		if bytes.Equal(i.HardwareAddr, mac[:]) {
			return i.Index, nil
		}
	}
	return 0, fmt.Errorf("re-inject held packet: no interface has MAC %s", net.HardwareAddr(mac[:]))
}
