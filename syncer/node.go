package syncer

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-net/tandem/internal/kclock"
	"github.com/tandem-net/tandem/maps"
)

// Role is a node's part in the pair.
type Role string

const (
	RolePrimary Role = "primary" // drains its rings and streams deltas to the standby
	RoleStandby Role = "standby" // accepts the primary and applies its deltas
)

// Defaults of NodeConfig's zero fields.
const (
	DefaultInterval       = 10 * time.Millisecond
	DefaultJournalEntries = 1 << 18
	DefaultJournalBytes   = 64 << 20
	DefaultUnacked        = 1 << 20
)

// NodeConfig is one host's side of the pair.
type NodeConfig struct {
	Role       Role
	Listen     string // standby: where the primary connects
	Peer       string // primary: the standby's address
	PeerName   string // the peer's certificate name, the only one TLS admits (for the status)
	TLS        *tls.Config
	Pins       maps.Pins
	RingBytes  uint32 // a ring a CPU, for rings that do not exist yet
	StateDir   string // metadata and status files
	Interval   time.Duration
	Journal    int // deltas kept for a reconnecting standby
	JournalMiB int // and at most this many MiB of them
	Unacked    int // deltas in flight before a silent peer's session is dropped
	Log        *slog.Logger
	// When this host's certificate and the pair's CA expire (see
	// CertExpiry): the node warns ExpiryWarning ahead, at start and daily,
	// and exports the time left. Zero: unknown, no warning.
	CertNotAfter, CANotAfter time.Time
}

// MetaFile and StatusFile are the node's files in its state directory.
func MetaFile(stateDir string) string   { return filepath.Join(stateDir, "sync-meta.json") }
func StatusFile(stateDir string) string { return filepath.Join(stateDir, "sync-status.json") }

// Node is the state sync of one daemon: the engine on a timer and the
// session with the peer.
type Node struct {
	cfg     NodeConfig
	log     *slog.Logger
	sync    *maps.SyncMaps
	regs    []Map
	engine  *Engine
	meta    Meta
	metrics *Metrics
	lags    []time.Duration // recent lag samples, for status percentiles

	mu      sync.Mutex
	status  NodeStatus
	ackWake chan struct{} // closed (and replaced) when Acked or Session change
	certAt  time.Time     // the last certificate check

	flushc chan chan uint64 // Flush asks the primary's loop for a tick now

	// The status file last written (its content but the tick count and
	// the time) and when: the node's loop only (writeStatusIf).
	statusLast NodeStatus
	statusAt   time.Time
}

// OpenNode opens the pinned sync maps and the registered maps under
// cfg.Pins and reads the node's metadata. A corrupt metadata file is
// logged and treated as unknown: the pair then resyncs in full.
func OpenNode(cfg NodeConfig) (*Node, error) {
	if cfg.Role != RolePrimary && cfg.Role != RoleStandby {
		return nil, fmt.Errorf("sync role %q: choose primary or standby", cfg.Role)
	}
	if cfg.Role == RolePrimary && cfg.Peer == "" {
		return nil, errors.New("sync role primary needs the standby's address (--sync-peer HOST:PORT)")
	}
	if cfg.Role == RoleStandby && cfg.Listen == "" {
		return nil, errors.New("sync role standby needs an address to accept the primary on (--sync-listen ADDR:PORT)")
	}
	if cfg.TLS == nil {
		return nil, errors.New("sync needs TLS certificates (--sync-certs DIR, see tandem certs)")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Journal <= 0 {
		cfg.Journal = DefaultJournalEntries
	}
	if cfg.JournalMiB <= 0 {
		cfg.JournalMiB = DefaultJournalBytes >> 20
	}
	if cfg.Unacked <= 0 {
		cfg.Unacked = DefaultUnacked
	}
	if cfg.RingBytes == 0 {
		cfg.RingBytes = maps.DefaultRingBytes
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n := &Node{cfg: cfg, log: cfg.Log.With("sync", cfg.Role), metrics: NewMetrics(cfg.Interval),
		ackWake: make(chan struct{}), flushc: make(chan chan uint64)}
	var err error
	if n.sync, err = maps.OpenSyncMaps(cfg.Pins); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("sync: no program that replicates state is loaded under %s: %w", cfg.Pins.Root, err)
		}
		return nil, fmt.Errorf("sync: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	inner, err := maps.RingSpec(cfg.RingBytes)
	if err != nil {
		return nil, err
	}
	if err := n.sync.SetupRings(inner); err != nil {
		return nil, fmt.Errorf("sync: %w", err)
	}
	opened, err := maps.OpenSynced(cfg.Pins)
	if err != nil {
		return nil, fmt.Errorf("sync: %w", err)
	}
	for r, o := range opened {
		n.regs = append(n.regs, Map{ID: r.ID, Name: r.Name, M: o.Map, IO: o.IO, Read: o.Read, Write: o.Write, Deleted: o.Deleted})
	}
	slices.SortFunc(n.regs, func(a, b Map) int { return int(a.ID) - int(b.ID) })
	if len(n.regs) == 0 {
		return nil, fmt.Errorf("sync: no registered map is pinned under %s", cfg.Pins.MapsDir())
	}
	if n.engine, err = NewEngine(n.sync, n.regs...); err != nil {
		return nil, fmt.Errorf("sync: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("sync: state directory: %w", err)
	}
	// Overflows before this node are the datapath's past; the ones from
	// here on are counted (the engine rescans for them).
	n.status.overflowSeen = slices.Clone(n.engine.Overflows())
	n.meta, err = LoadMeta(MetaFile(cfg.StateDir))
	if err != nil {
		n.log.Warn("sync metadata unusable; the peer will resync in full", "err", err)
	}
	n.status = NodeStatus{overflowSeen: n.status.overflowSeen, Role: cfg.Role, Node: hex.EncodeToString(n.meta.Node[:]), PID: os.Getpid(), Generation: n.meta.Generation,
		Listen: cfg.Listen, Peer: cfg.Peer, Session: "down", Since: time.Now(), Interval: cfg.Interval.String(),
		PeerName: cfg.PeerName, CertNotAfter: cfg.CertNotAfter, CANotAfter: cfg.CANotAfter}
	for _, m := range n.regs {
		n.status.Maps = append(n.status.Maps, m.Name)
	}
	ok = true
	return n, nil
}

// Metrics are the node's Prometheus metrics.
func (n *Node) Metrics() *Metrics { return n.metrics }

// Close releases the maps; the datapath keeps running.
func (n *Node) Close() {
	if n.sync != nil {
		n.sync.Close()
	}
	for _, m := range n.regs {
		(&maps.SyncedObjects{Map: m.M, IO: m.IO, Read: m.Read, Write: m.Write, Deleted: m.Deleted}).Close()
	}
}

// checkCerts exports the certificates' time left and, at start and then
// once a day, warns about those that expire within ExpiryWarning.
func (n *Node) checkCerts(now time.Time) {
	for _, c := range []struct {
		label string
		at    time.Time
	}{{"host", n.cfg.CertNotAfter}, {"ca", n.cfg.CANotAfter}} {
		if !c.at.IsZero() {
			n.metrics.CertExpiry.WithLabelValues(c.label).Set(c.at.Sub(now).Seconds())
		}
	}
	if !n.certAt.IsZero() && now.Sub(n.certAt) < 24*time.Hour {
		return
	}
	n.certAt = now
	for _, w := range ExpiryWarnings(now, n.cfg.CertNotAfter, n.cfg.CANotAfter) {
		n.log.Warn("sync certificate: " + w)
	}
}

// Run runs the node's role until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	n.checkCerts(time.Now())
	if n.cfg.Role == RolePrimary {
		return n.runPrimary(ctx)
	}
	return n.runStandby(ctx)
}

type tickMark struct {
	seq uint64
	at  time.Time
}

func (n *Node) runPrimary(ctx context.Context) error {
	cfg, e, m := n.cfg, n.engine, n.metrics
	// A new primary serves a new generation, restarted ones included: the
	// journal and the record of what was sent lived in the old process, so
	// the standby's state is resynced rather than trusted.
	n.meta.Generation = max(n.meta.Generation, n.meta.PeerGeneration) + 1
	if err := n.meta.Save(MetaFile(cfg.StateDir)); err != nil {
		return fmt.Errorf("sync: save metadata: %w", err)
	}
	e.SetSeq(n.meta.LastSent)
	n.update(func(st *NodeStatus) { st.Generation = n.meta.Generation })
	n.log.Info("primary: serving a new generation", "generation", n.meta.Generation, "peer", cfg.Peer, "maps", n.status.Maps)

	j := NewJournal(cfg.Journal, cfg.JournalMiB<<20)
	var (
		s        *Sender
		pending  []tickMark // ticks whose deltas wait for an ack
		dialing  bool
		dialc    = make(chan dialResult, 1)
		nextDial time.Time
		backoff  = 100 * time.Millisecond
		failures int
	)
	drop := func(why string) {
		if s == nil {
			return
		}
		s.Close()
		s, pending = nil, nil
		m.SessionUp.Set(0)
		n.update(func(st *NodeStatus) { st.Session, st.SessionPeer, st.Since, st.Unacked = "down", "", time.Now(), 0 })
		n.wakeAcks()
		n.log.Warn("sync session dropped; reconnecting", "reason", why)
		nextDial = time.Now().Add(backoff)
		n.writeStatus()
	}
	emit := func(d Delta) error {
		j.Add(d)
		if s != nil {
			if err := s.Send(d); err != nil {
				drop(err.Error())
			}
		}
		return nil // the journal holds it: a session problem never stops the ticks
	}
	observe := func() {
		if s == nil {
			return
		}
		acked, now := s.Acked(), time.Now()
		i := 0
		for i < len(pending) && pending[i].seq <= acked {
			n.lag(now.Sub(pending[i].at))
			n.log.Debug("acked", "seq", pending[i].seq, "lag", now.Sub(pending[i].at))
			i++
		}
		pending = pending[i:]
		m.Acked.Set(float64(acked))
		n.update(func(st *NodeStatus) { st.Acked = acked })
		n.wakeAcks()
	}
	runTick := func() {
		start := time.Now()
		before, recs := e.Seq(), e.Stats.Records
		rescans := e.Stats.OverflowRescans
		if err := e.Tick(emit); err != nil {
			n.log.Error("sync tick", "err", err)
		}
		if s != nil {
			if err := s.Flush(); err != nil {
				drop("send: " + err.Error())
			}
		}
		if s != nil {
			if err := s.Keepalive(DefaultKeepalive); err != nil {
				drop("send keepalive: " + err.Error())
			}
		}
		if s != nil && e.Seq() > before {
			n.log.Debug("tick sent", "from", before+1, "to", e.Seq(), "took", time.Since(start))
			pending = append(pending, tickMark{e.Seq(), start})
		}
		m.Ticks.Inc()
		m.RingRecords.Add(float64(e.Stats.Records - recs))
		m.RingDepth.Set(float64(e.Stats.Records - recs))
		if d := e.Stats.OverflowRescans - rescans; d > 0 {
			m.Rescans.Add(float64(d))
			n.log.Info("dirty ring overflowed: maps sent whole", "event", "rescan", "maps", e.Rescanned(), "rescans_total", e.Stats.OverflowRescans)
		}
		m.DeltasSent.Add(float64(e.Seq() - before))
		m.LastSent.Set(float64(e.Seq()))
		m.JournalEntries.Set(float64(j.Len()))
		m.JournalBytes.Set(float64(j.Bytes()))
		n.countOverflows()
		unacked := 0
		if s != nil {
			unacked = s.Unacked()
		}
		m.Unacked.Set(float64(unacked))
		n.update(func(st *NodeStatus) {
			st.LastSent, st.Unacked, st.JournalEntries, st.JournalBytes = e.Seq(), unacked, j.Len(), j.Bytes()
			if s != nil {
				st.Acked = s.Acked()
			}
			st.Ticks, st.RingRecords, st.Rescans, st.DeltasSent = e.Stats.Ticks, e.Stats.Records, e.Stats.OverflowRescans, e.Seq()
		})
	}
	tickc, stopTicks := n.ticks(cfg.Interval)
	defer stopTicks()
	lastSave := time.Now()
	saver := n.newSaver()
	saved := n.meta // what the file holds: an unchanged meta is not written (an fsync) again
	defer saver.stop()
	for {
		if s == nil && !dialing && !time.Now().Before(nextDial) {
			dialing = true
			hello := Hello{Node: n.meta.Node, Generation: n.meta.Generation, LastSent: e.Seq()}
			go func() {
				s, err := Dial(ctx, cfg.Peer, cfg.TLS, hello, cfg.Unacked)
				dialc <- dialResult{s, err}
			}()
		}
		var ackc, donec <-chan struct{}
		if s != nil {
			ackc, donec = s.AckNotify(), s.Done()
		}
		select {
		case <-ctx.Done():
			if s != nil {
				s.Flush()
				s.WaitAcked(e.Seq(), time.Second)
				s.Close()
			}
			if dialing {
				if r := <-dialc; r.s != nil {
					r.s.Close()
				}
			}
			n.meta.LastSent = e.Seq()
			n.writeStatus()
			saver.stop()
			return n.meta.Save(MetaFile(cfg.StateDir))
		case r := <-dialc:
			dialing = false
			if r.err != nil {
				if failures++; failures == 1 || failures%50 == 0 {
					n.log.Warn("sync peer unreachable; retrying", "peer", cfg.Peer, "attempts", failures, "err", r.err)
				}
				nextDial = time.Now().Add(backoff)
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			failures, backoff, s = 0, 100*time.Millisecond, r.s
			m.SessionUp.Set(1)
			n.update(func(st *NodeStatus) {
				st.Session, st.SessionPeer, st.Since = "up", hex.EncodeToString(s.Peer.Node[:]), time.Now()
			})
			n.wakeAcks()
			n.meta.LastSent = e.Seq()
			start, before := time.Now(), e.Seq()
			mode, why, err := ResyncProgress(n.meta, j, e, s, func(mode Mode, why string, sent int) {
				if sent == 0 {
					n.log.Info("resync starting", "event", "resync", "mode", mode, "why", why, "standby_applied", s.Peer.LastApplied, "last_sent", n.meta.LastSent)
				} else {
					n.log.Info("resync in progress", "mode", mode, "deltas_sent", sent, "elapsed", time.Since(start).Round(time.Millisecond))
				}
			})
			if err != nil {
				drop("resync: " + err.Error())
				continue
			}
			m.Resyncs.WithLabelValues(string(mode)).Inc()
			m.DeltasSent.Add(float64(e.Seq() - before))
			n.log.Info("resync sent", "event", "resync_done", "mode", mode, "why", why, "deltas", e.Seq()-before, "took", time.Since(start).Round(time.Millisecond))
			n.update(func(st *NodeStatus) {
				st.LastResync = &ResyncInfo{Mode: mode, Why: why, At: time.Now(), Deltas: e.Seq() - before}
			})
			if e.Seq() > before || mode == ModeJournal {
				pending = append(pending, tickMark{e.Seq(), start})
			}
			n.writeStatus()
		case <-ackc:
			observe()
		case <-donec:
			err := s.Err()
			if errors.Is(err, io.EOF) {
				err = errors.New("closed by the peer")
			}
			drop(fmt.Sprint(err))
		case reply := <-n.flushc:
			// A handover's barrier: drain and send now (a change a full
			// ring refused included: rescanned now), and say up to which
			// sequence.
			e.CheckOverflows()
			runTick()
			reply <- e.Seq()
		case <-tickc:
			if time.Since(lastSave) >= time.Second {
				e.CheckOverflows() // the backstop, now that idle ticks are skipped
			}
			runTick()
			if time.Since(lastSave) >= time.Second {
				lastSave = time.Now()
				n.checkCerts(lastSave)
				n.meta.LastSent = e.Seq()
				if n.meta != saved {
					saved = n.meta
					saver.put(n.meta)
				}
				n.refreshStatus()
			}
		}
	}
}

// idleTickEvery is how often an idle primary ticks all the same: the
// keepalive, the status and the metrics move on.
const idleTickEvery = 100 * time.Millisecond

// ticks are the primary's ticks: every interval while the dirty rings
// hold records, and at least every idleTickEvery (or interval) while
// they are empty. The ticks of an idle primary would drain nothing and
// send nothing; they are waited out on a thread of its own, which looks
// at the rings' positions after each interval and wakes the Go side only
// for a tick with work (kclock.SleepIdle). stop ends the thread and
// returns once it no longer reads the rings.
func (n *Node) ticks(interval time.Duration) (tickc <-chan struct{}, stop func()) {
	c := make(chan struct{}, 1)
	var quit atomic.Bool
	done := make(chan struct{})
	rings := n.sync.RingPositions()
	steps := max(1, int(idleTickEvery/interval))
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		iv := interval.Nanoseconds()
		next := kclock.Now() + iv
		for !quit.Load() {
			last, err := kclock.SleepIdle(next, iv, steps, rings)
			if err != nil {
				n.log.Error("sync tick", "err", err)
				time.Sleep(interval)
				last = kclock.Now()
			}
			next = last + iv
			if now := kclock.Now(); next < now-iv {
				next = now + iv // far behind (a suspended host): no burst to catch up
			}
			select {
			case c <- struct{}{}:
			default: // the last tick is still running: this one is merged into it
			}
		}
	}()
	return c, func() {
		quit.Store(true)
		<-done
	}
}

type dialResult struct {
	s   *Sender
	err error
}

// standbyTick is the standby's drain interval at the shortest.
const standbyTick = 100 * time.Millisecond

func (n *Node) runStandby(ctx context.Context) error {
	cfg, m := n.cfg, n.metrics
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("sync: listen on %s: %w (is another daemon there?)", cfg.Listen, err)
	}
	rcv := &Receiver{TLS: cfg.TLS, Hello: Hello{Node: n.meta.Node, Generation: n.meta.Generation}, Applier: NewApplier(n.regs...), Log: n.log}
	rcv.Restore(n.meta)
	served := make(chan error, 1)
	go func() { served <- rcv.Serve(ln) }()
	n.log.Info("standby: accepting the primary", "listen", ln.Addr().String(), "last_applied", n.meta.LastApplied, "peer_generation", n.meta.PeerGeneration, "maps", n.status.Maps)
	n.update(func(st *NodeStatus) { st.Listen = ln.Addr().String() })

	// The standby sends nothing: it drains its own rings only so they
	// never fill (its programs mark entries; the applier's writes do not),
	// and counts. A tenth of a second is plenty for both, and an idle
	// standby wakes ten times a second, not a hundred.
	tick := time.NewTicker(max(cfg.Interval, standbyTick))
	defer tick.Stop()
	var applied, closed uint64
	refused := make([]uint64, len(RefuseReasons))
	lastSave := time.Now()
	saver := n.newSaver()
	defer saver.stop()
	save := func() bool {
		la, pg := rcv.State()
		if la == n.meta.LastApplied && pg == n.meta.PeerGeneration {
			return false
		}
		n.meta.LastApplied, n.meta.PeerGeneration = la, pg
		return true
	}
	for {
		select {
		case <-ctx.Done():
			ln.Close()
			rcv.Stop()
			<-served
			saver.stop()
			n.writeStatus()
			if save() {
				return n.meta.Save(MetaFile(cfg.StateDir))
			}
			return nil
		case err := <-served:
			return fmt.Errorf("sync: accepting the primary: %w", err)
		case <-tick.C:
			recs, err := n.engine.Discard()
			if err != nil {
				n.log.Error("sync: drain the standby's rings", "err", err)
			}
			n.countOverflows()
			m.Ticks.Inc()
			m.RingRecords.Add(float64(recs))
			m.RingDepth.Set(float64(recs))
			m.DeltasApplied.Add(float64(rcv.Applied() - applied))
			for i, reason := range RefuseReasons {
				now := rcv.RefusedFor(reason)
				m.Refused.WithLabelValues(reason).Add(float64(now - refused[i]))
				refused[i] = now
			}
			m.Closed.Add(float64(rcv.Closed() - closed))
			applied, closed = rcv.Applied(), rcv.Closed()
			la, pg := rcv.State()
			m.LastApplied.Set(float64(la))
			peer := rcv.Peer()
			if peer != "" {
				m.SessionUp.Set(1)
			} else {
				m.SessionUp.Set(0)
			}
			n.update(func(st *NodeStatus) {
				session := "down"
				if peer != "" {
					session = "up"
				}
				if session != st.Session {
					st.Session, st.Since = session, time.Now()
				}
				st.SessionPeer, st.LastApplied, st.PeerGeneration = peer, la, pg
				st.DeltasApplied, st.Refused, st.Closed, st.Ticks = applied, rcv.Refused(), closed, st.Ticks+1
				if st.Refused > 0 && st.RefusedBy == nil {
					st.RefusedBy = map[string]uint64{}
				}
				for i, reason := range RefuseReasons {
					if refused[i] > 0 {
						st.RefusedBy[reason] = refused[i]
					}
				}
			})
			// The applied state is saved often: a restarted standby that
			// says where it stands gets the journal, not a scan. Saving
			// late is safe (a replay applies what is newer, nothing older).
			// A finished resync (a new generation applied) is saved at
			// once: a crash right after it must not cost another full one.
			if time.Since(lastSave) >= 250*time.Millisecond || pg != n.meta.PeerGeneration {
				lastSave = time.Now()
				n.checkCerts(lastSave)
				if save() {
					saver.put(n.meta)
				}
				n.refreshStatus()
			}
		}
	}
}

// saver writes metadata off the node's loop: an fsync can take long on
// a busy disk, and the loop's ticks and acks must not wait for it.
type saver struct {
	ch   chan Meta
	done chan struct{}
	once sync.Once
}

func (n *Node) newSaver() *saver {
	s := &saver{ch: make(chan Meta, 1), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for m := range s.ch {
			if err := m.Save(MetaFile(n.cfg.StateDir)); err != nil {
				n.log.Error("save sync metadata", "err", err)
			}
		}
	}()
	return s
}

// put queues m, replacing a queued older one.
func (s *saver) put(m Meta) {
	select {
	case <-s.ch:
	default:
	}
	s.ch <- m
}

// stop waits for the last write.
func (s *saver) stop() {
	s.once.Do(func() { close(s.ch) })
	<-s.done
}

// countOverflows moves the overflow counters on by what the engine saw.
func (n *Node) countOverflows() {
	over := n.engine.Overflows()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range n.regs {
		if int(r.ID) < len(over) && over[r.ID] > n.status.overflowSeen[r.ID] {
			d := over[r.ID] - n.status.overflowSeen[r.ID]
			n.metrics.Overflows.WithLabelValues(r.Name).Add(float64(d))
			n.status.Overflows += d
		}
	}
	copy(n.status.overflowSeen, over)
}

func (n *Node) lag(d time.Duration) {
	n.metrics.Lag.Observe(d.Seconds())
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lags = append(n.lags, d)
	if len(n.lags) > 4096 {
		n.lags = append(n.lags[:0], n.lags[len(n.lags)-2048:]...)
	}
}

func (n *Node) update(f func(*NodeStatus)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(&n.status)
}

// wakeAcks tells the waiters of Flush that the session or the peer's
// acknowledgements changed.
func (n *Node) wakeAcks() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ackWake)
	n.ackWake = make(chan struct{})
}

// Flush is the barrier of a planned handover: the primary drains its
// rings now, sends what they held, and Flush returns once the peer has
// acknowledged every delta sent up to then, so whatever the datapath
// changed before the call is applied on the standby. A session that
// drops meanwhile is no failure in itself: the reconnect's resync
// delivers the rest (from the journal). When ctx ends first, the error
// says how far the peer got and what to check. A standby has nothing to
// flush.
func (n *Node) Flush(ctx context.Context) error {
	if n.cfg.Role != RolePrimary {
		return nil
	}
	reply := make(chan uint64, 1)
	var want uint64
	select {
	case n.flushc <- reply:
		select {
		case want = <-reply:
		case <-ctx.Done():
			return n.flushErr(ctx, 0)
		}
	case <-ctx.Done():
		return n.flushErr(ctx, 0)
	}
	for {
		n.mu.Lock()
		up, acked, wake := n.status.Session == "up", n.status.Acked, n.ackWake
		n.mu.Unlock()
		if up && acked >= want {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return n.flushErr(ctx, want)
		}
	}
}

func (n *Node) flushErr(ctx context.Context, want uint64) error {
	st := n.Status()
	if want == 0 {
		return fmt.Errorf("the sync did not take the flush (session %s): %w; is the daemon's sync running? (tandem status)", st.Session, ctx.Err())
	}
	return fmt.Errorf("the peer %s acknowledged %d of the %d deltas sent before the flush (session %s): %w; check that its daemon runs and the sync link between the hosts (tandem status on both), then try again",
		n.cfg.Peer, st.Acked, want, st.Session, ctx.Err())
}

// Status is a copy of the node's status now.
func (n *Node) Status() NodeStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.status
	st.overflowSeen = nil
	if n.status.RefusedBy != nil {
		// A copy: the caller marshals it outside the lock.
		st.RefusedBy = make(map[string]uint64, len(n.status.RefusedBy))
		for k, v := range n.status.RefusedBy {
			st.RefusedBy[k] = v
		}
	}
	if len(n.lags) > 0 {
		l := slices.Clone(n.lags)
		slices.Sort(l)
		st.LagSamples = len(l)
		st.LagP50ms = float64(l[len(l)/2].Microseconds()) / 1000
		st.LagP99ms = float64(l[(len(l)*99)/100].Microseconds()) / 1000
	}
	st.Updated = time.Now()
	return st
}

// statusHeartbeat is how often an unchanged status file is written all
// the same: readers take a file not updated for 5 s for a dead daemon's.
const statusHeartbeat = 2 * time.Second

// writeStatus writes the status file now.
func (n *Node) writeStatus() { n.writeStatusIf(true) }

// refreshStatus writes the status file when something in it changed but
// the tick count and the time, or when the heartbeat is due: an idle
// standby rewrote it four times a second (a new file and a rename each,
// a tenth of its CPU time).
func (n *Node) refreshStatus() { n.writeStatusIf(false) }

func (n *Node) writeStatusIf(force bool) {
	st := n.Status()
	// Compared as values, not as JSON: marshalling four times a second
	// only to compare cost the standby more than the write it saved.
	same := st
	same.Ticks, same.Updated = 0, time.Time{}
	if !force && n.statusAt != (time.Time{}) && reflect.DeepEqual(same, n.statusLast) && time.Since(n.statusAt) < statusHeartbeat {
		return
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		err = writeAtomic(StatusFile(n.cfg.StateDir), data, false)
	}
	if err != nil {
		n.log.Warn("write sync status", "err", err)
		return
	}
	n.statusLast, n.statusAt = same, time.Now()
}

// NodeStatus is what a node says about itself; the daemon writes it to
// its state directory when it changes and at least every 2 s
// (statusHeartbeat), and `tandem status` shows it.
type NodeStatus struct {
	Role           Role              `json:"role"`
	Node           string            `json:"node"`
	Generation     uint64            `json:"generation,omitempty"`
	PID            int               `json:"pid"`
	Maps           []string          `json:"maps"`
	Listen         string            `json:"listen,omitempty"`
	Peer           string            `json:"peer,omitempty"`
	Session        string            `json:"session"` // up or down
	SessionPeer    string            `json:"session_peer,omitempty"`
	Since          time.Time         `json:"since"`
	Interval       string            `json:"interval"`
	LastSent       uint64            `json:"last_sent,omitempty"`
	Acked          uint64            `json:"acked,omitempty"`
	Unacked        int               `json:"unacked"`
	LastApplied    uint64            `json:"last_applied,omitempty"`
	PeerGeneration uint64            `json:"peer_generation,omitempty"`
	LagP50ms       float64           `json:"lag_p50_ms"`
	LagP99ms       float64           `json:"lag_p99_ms"`
	LagSamples     int               `json:"lag_samples"`
	JournalEntries int               `json:"journal_entries"`
	JournalBytes   int               `json:"journal_bytes"`
	LastResync     *ResyncInfo       `json:"last_resync,omitempty"`
	Ticks          uint64            `json:"ticks"`
	RingRecords    uint64            `json:"ring_records"`
	Overflows      uint64            `json:"ring_overflows"`
	Rescans        uint64            `json:"rescans"`
	DeltasSent     uint64            `json:"deltas_sent"`
	DeltasApplied  uint64            `json:"deltas_applied"`
	Refused        uint64            `json:"peers_refused"`
	RefusedBy      map[string]uint64 `json:"peers_refused_by,omitempty"` // by reason (RefuseReasons)
	PeerName       string            `json:"peer_name,omitempty"`        // the only certificate name admitted
	CertNotAfter   time.Time         `json:"cert_not_after,omitzero"`
	CANotAfter     time.Time         `json:"ca_not_after,omitzero"`
	Closed         uint64            `json:"sessions_closed"`
	Updated        time.Time         `json:"updated"`

	overflowSeen []uint64
}

// ResyncInfo is the last resync a primary ran.
type ResyncInfo struct {
	Mode   Mode      `json:"mode"`
	Why    string    `json:"why"`
	At     time.Time `json:"at"`
	Deltas uint64    `json:"deltas"`
}

// ReadNodeStatus reads the status file a daemon wrote in stateDir.
func ReadNodeStatus(stateDir string) (*NodeStatus, error) {
	data, err := os.ReadFile(StatusFile(stateDir))
	if err != nil {
		return nil, err
	}
	var st NodeStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("sync status %s: %w", StatusFile(stateDir), err)
	}
	return &st, nil
}
