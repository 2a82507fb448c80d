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
	"sync"
	"sync/atomic"
	"time"
)

const handshakeTimeout = 10 * time.Second

// Receiver is the standby's end of the sync channel: it accepts the
// primary, applies its deltas in sequence order and acknowledges them.
type Receiver struct {
	TLS     *tls.Config
	Hello   Hello // this host's; LastApplied is kept current
	Applier *Applier
	Log     *slog.Logger

	mu          sync.Mutex
	lastApplied uint64
	peerGen     uint64 // generation of the applied state; 0 while a resync is incomplete
	refused     atomic.Uint64
	closed      atomic.Uint64
	applied     atomic.Uint64 // deltas applied (markers included)
	sessions    atomic.Uint64
	peer        atomic.Pointer[string] // the primary's address while a session is open
	conn        atomic.Pointer[net.Conn]
	stopping    atomic.Bool
}

// Stop ends the open session, if any, and makes Serve return once ln is
// closed (the caller closes it).
func (r *Receiver) Stop() {
	r.stopping.Store(true)
	if c := r.conn.Load(); c != nil {
		(*c).Close()
	}
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

// Refused counts peers refused at the handshake or hello; Closed counts
// sessions closed for a bad frame or delta.
func (r *Receiver) Refused() uint64 { return r.refused.Load() }
func (r *Receiver) Closed() uint64  { return r.closed.Load() }

// Serve accepts peers until ln closes, one session at a time.
func (r *Receiver) Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		r.handle(c)
	}
}

func (r *Receiver) handle(c net.Conn) {
	defer c.Close()
	r.conn.Store(&c)
	defer r.conn.Store(nil)
	if r.stopping.Load() {
		return
	}
	log := r.Log.With("peer", c.RemoteAddr().String())
	tc := tls.Server(c, r.TLS)
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		r.refused.Add(1)
		log.Warn("sync peer refused: TLS handshake failed", "err", err)
		return
	}
	fr := NewReader(tc)
	m, err := fr.Next()
	if err != nil || m.Hello == nil || m.Hello.Version != ProtocolVersion {
		r.refused.Add(1)
		log.Warn("sync peer refused: no valid hello", "err", err, "hello", m.Hello)
		return
	}
	c.SetDeadline(time.Time{})
	hello := r.Hello
	hello.LastApplied, hello.PeerGeneration = r.State()
	if r.Applier.Empty() {
		hello.Flags |= HelloMapsEmpty
	}
	w := bufio.NewWriter(tc)
	w.Write(AppendHello(nil, hello))
	if err := w.Flush(); err != nil {
		log.Warn("sync session: send hello", "err", err)
		return
	}
	log.Info("sync session open", "peer_last_sent", m.Hello.LastSent, "last_applied", hello.LastApplied)
	r.sessions.Add(1)
	addr := c.RemoteAddr().String()
	r.peer.Store(&addr)
	defer r.peer.Store(nil)
	var batch []Delta
	for {
		m, err := fr.Next()
		if err == nil && m.Delta == nil {
			err = errors.New("a frame other than a delta after hello")
		}
		if err == nil {
			batch = append(batch, *m.Delta)
			// Keep collecting while more has arrived: one apply, one ack.
			if fr.r.Buffered() > 0 && len(batch) < 4096 {
				continue
			}
			err = r.apply(batch)
			batch = batch[:0]
			if err == nil {
				w.Write(AppendAck(nil, r.LastApplied()))
				if ferr := w.Flush(); ferr != nil {
					log.Warn("sync session: send ack", "err", ferr)
					return
				}
				continue
			}
		} else if len(batch) > 0 {
			// What arrived intact before the bad frame is applied.
			if aerr := r.apply(batch); aerr != nil {
				err = aerr
			}
		}
		if errors.Is(err, io.EOF) {
			log.Info("sync session closed by the peer")
			return
		}
		if r.stopping.Load() {
			log.Info("sync session closed: this daemon is stopping")
			return
		}
		r.closed.Add(1)
		log.Warn("sync session closed", "reason", err)
		return
	}
}

// apply applies ds in sequence order: repeats are skipped, markers move
// the sequence and generation, and a gap ends the session (the sender
// resyncs). On an error, what came before the bad delta stays applied.
func (r *Receiver) apply(ds []Delta) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var run []Delta
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

// Sender is the primary's end: it streams deltas and keeps those not yet
// acknowledged in a bounded journal.
type Sender struct {
	conn    *tls.Conn
	w       *bufio.Writer
	Peer    Hello
	acked   atomic.Uint64
	mu      sync.Mutex
	journal []Delta
	limit   int
	done    chan struct{}
	acks    chan struct{} // a token after each ack: the lag clock reads it
	err     error
}

// ErrJournalFull means the peer acknowledges too slowly: more deltas are
// unacknowledged than the journal holds.
var ErrJournalFull = errors.New("sync journal full: the peer is not acknowledging")

// Dial opens a session to the standby at addr.
func Dial(ctx context.Context, addr string, cfg *tls.Config, hello Hello, journal int) (*Sender, error) {
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: handshakeTimeout}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial sync peer %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
	s := &Sender{conn: tc, w: bufio.NewWriterSize(tc, 256<<10), limit: journal, done: make(chan struct{}), acks: make(chan struct{}, 1)}
	hello.Version = ProtocolVersion
	s.w.Write(AppendHello(nil, hello))
	if err := s.w.Flush(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("sync hello to %s: %w", addr, err)
	}
	fr := NewReader(tc)
	tc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	m, err := fr.Next()
	if err != nil || m.Hello == nil {
		tc.Close()
		return nil, fmt.Errorf("sync hello from %s: %v", addr, err)
	}
	tc.SetReadDeadline(time.Time{})
	s.Peer = *m.Hello
	go s.readAcks(fr)
	return s, nil
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
		for i < len(s.journal) && s.journal[i].Seq <= *m.Ack {
			i++
		}
		s.journal = s.journal[i:]
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
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Send queues d (flushed by Flush) and keeps it until acknowledged.
func (s *Sender) Send(d Delta) error {
	s.mu.Lock()
	if len(s.journal) >= s.limit {
		s.mu.Unlock()
		return ErrJournalFull
	}
	s.journal = append(s.journal, d)
	s.mu.Unlock()
	// Encoded straight into the writer's free space: no allocation.
	_, err := s.w.Write(AppendDelta(s.w.AvailableBuffer(), d))
	return err
}

// Flush sends what Send queued.
func (s *Sender) Flush() error { return s.w.Flush() }

// Acked is the highest sequence number the peer acknowledged.
func (s *Sender) Acked() uint64 { return s.acked.Load() }

// Unacked is how many deltas wait for an acknowledgement.
func (s *Sender) Unacked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.journal)
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
	err := s.conn.Close()
	<-s.done
	return err
}
