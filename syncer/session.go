package syncer

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// dialTimeout bounds the primary's dial, handshake and hello exchange.
const dialTimeout = 10 * time.Second

// Defaults of the Receiver's zero fields.
const (
	// DefaultHelloTimeout: a connection has this long for its TLS
	// handshake and hello, then it is refused and closed.
	DefaultHelloTimeout = 3 * time.Second
	// DefaultKeepalive is how often a primary with nothing to send tells
	// the standby it is alive.
	DefaultKeepalive = time.Second
	// DefaultIdleTimeout: a session that sends nothing this long (a few
	// keepalives) is closed.
	DefaultIdleTimeout = 5 * DefaultKeepalive
	// DefaultMaxPending bounds the connections in their handshake or
	// hello at once; more are refused at once (reason busy).
	DefaultMaxPending = 64
)

// Reasons a connection is refused, the label of the refused counter.
const (
	RefuseHandshake = "handshake" // the TLS handshake failed or timed out (wrong CA, not TLS)
	RefuseName      = "name"      // a certificate of the pair's CA, for another name than the peer's
	RefuseHello     = "hello"     // no valid hello in time
	RefuseBusy      = "busy"      // too many connections in their handshake
)

// RefuseReasons lists the refusal reasons.
var RefuseReasons = []string{RefuseHandshake, RefuseName, RefuseHello, RefuseBusy}

// Receiver is the standby's end of the sync channel: it accepts the
// primary, applies its deltas in sequence order and acknowledges them.
//
// Connections are served concurrently: one that never finishes its
// handshake or hello is closed after HelloTimeout and delays nobody.
// TLS admits only the configured peer's certificate (see TLSConfig). A
// new session from the peer replaces the open one (a primary that
// reconnects while its old session is half-dead gets in at once).
type Receiver struct {
	TLS     *tls.Config
	Hello   Hello // this host's; LastApplied is kept current
	Applier *Applier
	Log     *slog.Logger

	HelloTimeout time.Duration // default DefaultHelloTimeout
	IdleTimeout  time.Duration // default DefaultIdleTimeout
	MaxPending   int           // default DefaultMaxPending

	mu          sync.Mutex
	lastApplied uint64
	peerGen     uint64           // generation of the applied state; 0 while a resync is incomplete
	refused     [4]atomic.Uint64 // by RefuseReasons
	closed      atomic.Uint64
	applied     atomic.Uint64 // deltas applied (markers included)
	sessions    atomic.Uint64
	peer        atomic.Pointer[string] // the primary's address while a session is open

	adm    Admission // the accept loop, the pending bound, Stop
	cmu    sync.Mutex
	active *rsession // the session that applies
	run    []Delta   // apply's run of deltas, reused (under mu)
	once   sync.Once
}

// rsession is one session past its hello.
type rsession struct {
	c        net.Conn
	done     chan struct{}
	replaced atomic.Bool
}

// Stop ends every open connection and makes Serve return once ln is
// closed (the caller closes it).
func (r *Receiver) Stop() {
	r.init()
	r.adm.Stop()
}

// Applied counts deltas applied; Sessions counts sessions opened.
func (r *Receiver) Applied() uint64  { return r.applied.Load() }
func (r *Receiver) Sessions() uint64 { return r.sessions.Load() }

// Peer is the address of the primary of the open session, "" when none.
func (r *Receiver) Peer() string {
	if p := r.peer.Load(); p != nil {
		return *p
	}
	return ""
}

// Restore starts the receiver from its saved metadata.
func (r *Receiver) Restore(m Meta) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastApplied, r.peerGen = m.LastApplied, m.PeerGeneration
}

// State is what the receiver would save in its metadata.
func (r *Receiver) State() (lastApplied, peerGeneration uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastApplied, r.peerGen
}

// LastApplied is the sequence number of the last delta applied.
func (r *Receiver) LastApplied() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastApplied
}

// Refused counts connections refused at the handshake or hello;
// RefusedFor counts those of one reason (RefuseReasons). Closed counts
// sessions closed for a bad frame or delta, or silence.
func (r *Receiver) Refused() uint64 {
	var n uint64
	for i := range r.refused {
		n += r.refused[i].Load()
	}
	return n
}

func (r *Receiver) RefusedFor(reason string) uint64 {
	if i := slices.Index(RefuseReasons, reason); i >= 0 {
		return r.refused[i].Load()
	}
	return 0
}

func (r *Receiver) Closed() uint64 { return r.closed.Load() }

func (r *Receiver) refuse(log *slog.Logger, reason, msg string, err error) {
	r.refused[slices.Index(RefuseReasons, reason)].Add(1)
	log.Warn("sync peer refused: "+msg, "reason", reason, "err", err)
}

func (r *Receiver) init() {
	r.once.Do(func() {
		if r.HelloTimeout <= 0 {
			r.HelloTimeout = DefaultHelloTimeout
		}
		if r.IdleTimeout <= 0 {
			r.IdleTimeout = DefaultIdleTimeout
		}
		if r.MaxPending <= 0 {
			r.MaxPending = DefaultMaxPending
		}
		r.adm.MaxPending = r.MaxPending
		r.adm.Busy = func(c net.Conn) {
			r.refuse(r.Log.With("peer", c.RemoteAddr().String()), RefuseBusy, "too many connections in their handshake", nil)
		}
	})
}

// Serve accepts peers until ln closes, each connection on its own
// goroutine; it returns when every connection is done.
func (r *Receiver) Serve(ln net.Listener) error {
	r.init()
	return r.adm.Serve(ln, r.handle)
}

func (r *Receiver) handle(c net.Conn, release func()) {
	log := r.Log.With("peer", c.RemoteAddr().String())
	// The handshake and the hello together get one short deadline.
	tc, err := Handshake(c, r.TLS, r.HelloTimeout)
	if err != nil {
		var nameErr *PeerNameError
		if errors.As(err, &nameErr) {
			r.refuse(log, RefuseName, "certificate of another host", err)
		} else {
			r.refuse(log, RefuseHandshake, "TLS handshake failed", err)
		}
		return
	}
	fr := NewReader(tc)
	m, err := fr.Next()
	if err != nil || m.Hello == nil || m.Hello.Version != ProtocolVersion {
		r.refuse(log, RefuseHello, "no valid hello", fmt.Errorf("%v (hello %+v)", err, m.Hello))
		return
	}
	release()
	s := &rsession{c: c, done: make(chan struct{})}
	defer close(s.done)
	// The newest session wins: the old one may be half-dead (its primary
	// gone without a FIN), and the primary that reconnects is the live one.
	r.cmu.Lock()
	old := r.active
	r.active = s
	r.cmu.Unlock()
	defer func() {
		r.cmu.Lock()
		if r.active == s {
			r.active = nil
			r.peer.Store(nil)
		}
		r.cmu.Unlock()
	}()
	if old != nil {
		old.replaced.Store(true)
		old.c.Close()
		<-old.done // its last apply is over: the state below is final
	}
	hello := r.Hello
	hello.LastApplied, hello.PeerGeneration = r.State()
	hello.Flags |= HelloKeepalive
	if r.Applier.Empty() {
		hello.Flags |= HelloMapsEmpty
	}
	w := bufio.NewWriter(tc)
	w.Write(AppendHello(nil, hello))
	c.SetDeadline(time.Now().Add(r.IdleTimeout))
	if err := w.Flush(); err != nil {
		log.Warn("sync session: send hello", "err", err)
		return
	}
	log.Info("sync session open", "event", "session_open", "peer_last_sent", m.Hello.LastSent, "last_applied", hello.LastApplied, "replaced_old_session", old != nil)
	r.sessions.Add(1)
	addr := c.RemoteAddr().String()
	r.cmu.Lock()
	if r.active == s {
		r.peer.Store(&addr)
	}
	r.cmu.Unlock()
	err = r.stream(c, fr, w)
	if errors.Is(err, io.EOF) {
		log.Info("sync session closed by the peer")
		return
	}
	if s.replaced.Load() {
		log.Info("sync session closed: the peer opened a newer one")
		return
	}
	if r.adm.Stopping() {
		log.Info("sync session closed: this daemon is stopping")
		return
	}
	var ae ackError
	if errors.As(err, &ae) {
		log.Warn("sync session: send ack", "err", ae.err)
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = fmt.Errorf("the peer sent nothing for %s", r.IdleTimeout)
	}
	r.closed.Add(1)
	log.Warn("sync session closed", "reason", err)
}

// ackError: an ack could not be sent (the connection is gone).
type ackError struct{ err error }

func (e ackError) Error() string { return "send ack: " + e.err.Error() }

// rbatch is a batch of deltas on its way to the applier, their keys and
// values in its arena.
type rbatch struct {
	ds    []Delta
	arena []byte
}

// stream reads the session's deltas in batches and applies them on
// another goroutine, each batch acknowledged once applied: the next batch
// is read, decrypted and decoded while one is written into the maps
// (half of the standby's time, in the kernel), so the two use two cores.
// It returns why the session ended; what arrived intact before a bad
// frame is applied, nothing after a delta that failed.
func (r *Receiver) stream(c net.Conn, fr *Reader, w *bufio.Writer) error {
	// The reader hands over what it has whenever nothing more is
	// buffered; the applier takes every batch waiting at once, so while
	// it is busy they add up to one large apply (a kernel write is
	// cheaper per entry in runs of 1,024) and one ack.
	work := make(chan *rbatch, 8)
	free := make(chan *rbatch, cap(work)+1)
	for range cap(free) {
		free <- &rbatch{}
	}
	var applyErr error // set by the applier before adone closes
	// failed stops the reader after the applier failed: a deadline in
	// the past wakes a read that waits (the connection stays open until
	// the session is counted and logged, as before).
	var failed atomic.Bool
	fail := func(err error) {
		applyErr = err
		failed.Store(true)
		c.SetReadDeadline(time.Unix(1, 0))
	}
	adone := make(chan struct{})
	go func() {
		defer close(adone)
		var group []*rbatch
		var all []Delta
		for b := range work {
			group = append(group[:0], b)
			ds := b.ds
		more:
			for len(ds) < 16384 {
				select {
				case b2, ok := <-work:
					if !ok {
						break more
					}
					if len(group) == 1 {
						all = append(all[:0], ds...)
					}
					group = append(group, b2)
					all = append(all, b2.ds...)
					ds = all
				default:
					break more
				}
			}
			if applyErr == nil {
				if err := r.apply(ds); err != nil {
					fail(err)
				} else {
					w.Write(AppendAck(nil, r.LastApplied()))
					if err := w.Flush(); err != nil {
						fail(ackError{err})
					}
				}
			}
			clear(all) // applied: nothing keeps them
			for _, g := range group {
				clear(g.ds)
				g.ds, g.arena = g.ds[:0], g.arena[:0]
				free <- g
			}
		}
	}()
	cur := <-free
	var next Delta
	var err error
	for {
		if fr.r.Buffered() == 0 {
			// About to wait for the primary: it sends deltas or keepalives
			// (HelloKeepalive); silence this long is a dead session. Once a
			// batch, not a frame: deadlines cost a timer update.
			c.SetDeadline(time.Now().Add(r.IdleTimeout))
			if failed.Load() {
				break // the applier's deadline may have been overwritten
			}
		}
		var m Message
		m, err = fr.next(&next, &cur.arena)
		if err == nil && m.Keepalive {
			if len(cur.ds) == 0 {
				continue
			}
		} else if err == nil && m.Delta == nil {
			err = errors.New("a frame other than a delta after hello")
		}
		if err != nil {
			break
		}
		if m.Delta != nil {
			cur.ds = append(cur.ds, *m.Delta)
		}
		// Keep collecting while more has arrived: one apply, one ack.
		if fr.r.Buffered() > 0 && len(cur.ds) < 4096 {
			continue
		}
		work <- cur
		cur = <-free
	}
	// What arrived intact before the bad frame is applied.
	if len(cur.ds) > 0 {
		work <- cur
	}
	close(work)
	<-adone
	if applyErr != nil {
		return applyErr // the reader's error is the applier's deadline
	}
	return err
}

// apply applies ds in sequence order: repeats are skipped, markers move
// the sequence and generation, and a gap ends the session (the sender
// resyncs). On an error, what came before the bad delta stays applied.
func (r *Receiver) apply(ds []Delta) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	run := r.run[:0] // reused: a batch of 16k deltas was a large allocation each
	defer func() { clear(run); r.run = run[:0] }()
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		err := r.Applier.ApplyBatch(run)
		if err == nil {
			r.lastApplied = run[len(run)-1].Seq
			r.applied.Add(uint64(len(run)))
		}
		run = run[:0]
		return err
	}
	for _, d := range ds {
		next := r.lastApplied
		if len(run) > 0 {
			next = run[len(run)-1].Seq
		}
		switch {
		case d.Op == OpResync:
			// A resync restarts the sequence; until it is done the applied
			// state belongs to no generation (an interrupted resync means full).
			if err := flush(); err != nil {
				return err
			}
			r.peerGen, r.lastApplied = 0, d.Seq
			r.Applier.resyncing = true
			continue
		case next != 0 && d.Seq <= next:
			continue
		case next != 0 && d.Seq != next+1:
			if err := flush(); err != nil {
				return err
			}
			return fmt.Errorf("delta %d after %d: a gap", d.Seq, next)
		case d.Op == OpResyncDone:
			if err := flush(); err != nil {
				return err
			}
			r.peerGen = binary.BigEndian.Uint64(d.Value)
			r.lastApplied = d.Seq
			r.Applier.resyncing = false
			continue
		}
		run = append(run, d)
	}
	return flush()
}

// Sender is the primary's end: it streams deltas and counts those not yet
// acknowledged, up to a bound (the node's journal keeps the deltas).
//
// Send only encodes into a buffer; a writer goroutine puts it on the
// wire. The primary's ticks never wait for the network: a standby that
// reads slowly (TCP backpressure) used to stall the tick in a write, the
// rings overflowed meanwhile and the whole map went again (a rescan).
// Now the ticks keep draining, and the deltas wait in user space, bounded
// by the unacknowledged limit.
type Sender struct {
	conn  *tls.Conn
	Peer  Hello
	acked atomic.Uint64
	mu    sync.Mutex
	// unacked: the sequence numbers sent and not yet acknowledged, in
	// order. Only how many is ever asked (the limit, Unacked): no Delta
	// is kept, so a million in flight hold no pointers for the GC to scan.
	unacked []uint64
	limit   int
	// out: encoded, not yet taken by the writer, in chunks of about
	// writeChunk (a backlog grows by chunks, never copied into a larger
	// buffer); free: chunks the writer sent, for reuse (all under mu).
	out, free [][]byte
	// backlog: bytes encoded and not yet written; past maxBacklog Send
	// waits for the writer (room), so a standby that stopped reading
	// costs bounded memory, and a resync is paced by what it reads.
	backlog   int
	room      *sync.Cond
	closed    bool
	wake      chan struct{}
	stop      chan struct{}
	wdone     chan struct{}
	closeOnce sync.Once
	werr      atomic.Pointer[error] // why the writer stopped
	done      chan struct{}
	acks      chan struct{} // a token after each ack: the lag clock reads it
	err       error
	wrote     time.Time // the last flush that sent something
}

// writeChunk: Send wakes the writer once this much waits, without a Flush.
const writeChunk = 256 << 10

// writeTimeout: a chunk the standby does not take within this long ends
// the session (the primary redials and resyncs), rather than holding the
// primary in Send for good once the backlog is full. The standby closes a
// session it hears nothing from for DefaultIdleTimeout; this is longer.
var writeTimeout = 2 * DefaultIdleTimeout

// maxBacklog bounds what waits for the writer: a tick or a resync keeps
// going while less waits (about a million small deltas), and then waits.
const maxBacklog = 64 << 20

// ErrJournalFull means the peer acknowledges too slowly: more deltas are
// unacknowledged than the journal holds.
var ErrJournalFull = errors.New("sync journal full: the peer is not acknowledging")

// Dial opens a session to the standby at addr.
func Dial(ctx context.Context, addr string, cfg *tls.Config, hello Hello, journal int) (*Sender, error) {
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: dialTimeout}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial sync peer %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
	s := newSender(tc, journal)
	hello.Version = ProtocolVersion
	if _, err := tc.Write(AppendHello(nil, hello)); err != nil {
		tc.Close()
		return nil, fmt.Errorf("sync hello to %s: %w", addr, err)
	}
	fr := NewReader(tc)
	tc.SetReadDeadline(time.Now().Add(dialTimeout))
	m, err := fr.Next()
	if err != nil || m.Hello == nil {
		tc.Close()
		return nil, fmt.Errorf("sync hello from %s: %v", addr, err)
	}
	tc.SetReadDeadline(time.Time{})
	s.Peer = *m.Hello
	s.wrote = time.Now()
	go s.readAcks(fr)
	go s.write()
	return s, nil
}

func newSender(tc *tls.Conn, limit int) *Sender {
	s := &Sender{conn: tc, limit: limit, done: make(chan struct{}), acks: make(chan struct{}, 1),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), wdone: make(chan struct{})}
	s.room = sync.NewCond(&s.mu)
	return s
}

// write puts what Send encoded on the wire, whenever it is woken, until
// stopped; a failed write closes the connection (readAcks then ends the
// session) and says why in Err.
func (s *Sender) write() {
	defer close(s.wdone)
	for {
		select {
		case <-s.wake:
		case <-s.stop:
			return
		}
		for {
			s.mu.Lock()
			chunks := s.out
			s.out = nil
			s.mu.Unlock()
			if len(chunks) == 0 {
				break
			}
			for _, c := range chunks {
				s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
				_, err := s.conn.Write(c)
				if err != nil {
					err = fmt.Errorf("send: %w", err)
					s.werr.Store(&err)
					s.conn.Close()
				}
				s.mu.Lock()
				s.backlog -= len(c)
				s.room.Broadcast()
				s.mu.Unlock()
				if err != nil {
					return
				}
			}
			s.mu.Lock()
			for _, c := range chunks {
				if len(s.free) < 8 { // a burst's backlog goes to the GC
					s.free = append(s.free, c[:0])
				}
			}
			s.mu.Unlock()
		}
	}
}

// appendOut encodes a frame into the last chunk, starting a new one when
// it is full, and says whether one is (the writer has work). Under mu.
func (s *Sender) appendOut(enc func([]byte) []byte) bool {
	if n := len(s.out); n == 0 || len(s.out[n-1]) >= writeChunk {
		var c []byte
		if k := len(s.free); k > 0 {
			c, s.free = s.free[k-1], s.free[:k-1]
		} else {
			c = make([]byte, 0, writeChunk+512)
		}
		s.out = append(s.out, c)
	}
	last := &s.out[len(s.out)-1]
	n := len(*last)
	*last = enc(*last)
	s.backlog += len(*last) - n
	return len(s.out) > 1 || len(*last) >= writeChunk
}

func (s *Sender) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Sender) writeErr() error {
	if p := s.werr.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Sender) readAcks(fr *Reader) {
	defer close(s.done)
	for {
		m, err := fr.Next()
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		if m.Ack == nil {
			continue
		}
		s.acked.Store(*m.Ack)
		s.mu.Lock()
		i := 0
		for i < len(s.unacked) && s.unacked[i] <= *m.Ack {
			i++
		}
		s.unacked = s.unacked[i:]
		s.mu.Unlock()
		select {
		case s.acks <- struct{}{}:
		default:
		}
	}
}

// AckNotify receives a token when an ack arrives (tokens coalesce).
func (s *Sender) AckNotify() <-chan struct{} { return s.acks }

// Done is closed when the session ends (the peer closed it or a read
// failed); Err then says why.
func (s *Sender) Done() <-chan struct{} { return s.done }

// Err is why the session ended, nil while it runs.
func (s *Sender) Err() error {
	if err := s.writeErr(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Send queues d (sent by Flush, or once enough waits) and keeps it until
// acknowledged. It fails when the journal is full or a write failed.
func (s *Sender) Send(d Delta) error {
	s.mu.Lock()
	if s.closed {
		// Nothing sends it any more: queueing it would only grow the
		// backlog of a session that is gone.
		s.mu.Unlock()
		return net.ErrClosed
	}
	if len(s.unacked) >= s.limit {
		s.mu.Unlock()
		return ErrJournalFull
	}
	s.unacked = append(s.unacked, d.Seq)
	full := s.appendOut(func(b []byte) []byte { return AppendDelta(b, d) })
	over := s.backlog > maxBacklog
	s.mu.Unlock()
	if full {
		s.kick()
	}
	if over {
		s.mu.Lock()
		for s.backlog > maxBacklog && s.writeErr() == nil && !s.closed {
			s.room.Wait()
		}
		closed := s.closed
		s.mu.Unlock()
		if err := s.writeErr(); err != nil || !closed {
			return err
		}
		return net.ErrClosed
	}
	return s.writeErr()
}

// Flush hands what Send queued to the writer; it does not wait for the
// network.
func (s *Sender) Flush() error {
	s.mu.Lock()
	pending := len(s.out) > 0 && len(s.out[0]) > 0
	s.mu.Unlock()
	if pending {
		s.wrote = time.Now()
		s.kick()
	}
	return s.writeErr()
}

// Keepalive sends a keepalive if the standby understands them and
// nothing was sent for every: a standby closes a silent session.
func (s *Sender) Keepalive(every time.Duration) error {
	if s.Peer.Flags&HelloKeepalive == 0 || time.Since(s.wrote) < every {
		return nil
	}
	s.mu.Lock()
	s.appendOut(AppendKeepalive)
	s.mu.Unlock()
	return s.Flush()
}

// Acked is the highest sequence number the peer acknowledged.
func (s *Sender) Acked() uint64 { return s.acked.Load() }

// Unacked is how many deltas wait for an acknowledgement.
func (s *Sender) Unacked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.unacked)
}

// WaitAcked waits until seq is acknowledged.
func (s *Sender) WaitAcked(seq uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for s.Acked() < seq {
		select {
		case <-s.done:
			return fmt.Errorf("sync session ended before %d was acknowledged: %v", seq, s.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("delta %d not acknowledged within %s (acked %d)", seq, timeout, s.Acked())
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// Close ends the session.
func (s *Sender) Close() error {
	s.mu.Lock()
	s.closed = true
	s.room.Broadcast()
	s.mu.Unlock()
	err := s.conn.Close()
	<-s.done
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.wdone
	return err
}
