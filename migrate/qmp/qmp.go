// Package qmp follows a QEMU process's live migration through its QMP
// socket and drives the gateway's migration control (package
// migrate/remote) from it, so nobody times a move by hand:
//
//	MIGRATION "active"                 -> start (the pre-copy runs on the source)
//	STOP while the migration is active -> blackout (the source paused for the stop-and-copy)
//	MIGRATION "completed" (source)     -> switch, then done
//	RESUME (destination)               -> switch, then done
//	MIGRATION "postcopy-active"        -> switch (the destination runs the guest)
//	MIGRATION "failed" / "cancelled"   -> abort
//	no migration ("none", "setup") while a move was followed (a new
//	QEMU answers after a reconnect)   -> abort
//
// docs/migration.md (## Drivers) explains the mapping. The follower keeps
// its own phase so a repeated event sends nothing twice, and the gateway
// answers a repeated step as a no-op, so a reconnect (to QEMU, which it
// resumes from query-migrate and query-status, or to the gateway) never
// breaks the move.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Roles: which side of the move the followed QEMU is.
const (
	RoleSource      = "source"
	RoleDestination = "destination"
)

// Event is one QMP event, as much of it as the follower reads.
type Event struct {
	Event string `json:"event"`
	Data  struct {
		Status string `json:"status"`
	} `json:"data"`
	// Timestamp is when QEMU emitted the event (its host's clock).
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Time is when QEMU emitted the event; zero for a synthesized one.
func (e Event) Time() time.Time {
	if e.Timestamp.Seconds == 0 {
		return time.Time{}
	}
	return time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)
}

// Phases of the follower's view of the move.
const (
	phaseIdle     = iota // no move seen (or the last one is over)
	phaseStarted         // start sent
	phaseBlackout        // blackout sent
	phaseSwitched        // switch sent
)

// Mapper turns QMP events into migration steps; it keeps the phase so a
// repeated event yields nothing.
type Mapper struct {
	Role string // RoleSource (default) or RoleDestination
	// DestinationSwitches (source role): the source's completed is not
	// the switch; a follower on the destination (RoleDestination)
	// switches when the guest runs there (RESUME). The source's completed
	// comes before that, and what a switch then sends waits for a QEMU
	// that does not read its tap yet.
	DestinationSwitches bool
	phase               int
}

// Map is the steps (remote.Op*) ev calls for, in order.
func (m *Mapper) Map(ev Event) []string {
	var out []string
	start := func() {
		if m.phase == phaseIdle {
			out = append(out, "start")
			m.phase = phaseStarted
		}
	}
	finish := func() {
		start()
		if m.phase < phaseSwitched {
			out = append(out, "switch")
		}
		out = append(out, "done")
		m.phase = phaseIdle
	}
	switch ev.Event {
	case "MIGRATION":
		switch ev.Data.Status {
		case "active", "pre-switchover", "device":
			// device and pre-switchover come with the source paused: a
			// follower that missed STOP (a reconnect) still holds.
			start()
			if ev.Data.Status != "active" && m.Role != RoleDestination && m.phase == phaseStarted {
				out = append(out, "blackout")
				m.phase = phaseBlackout
			}
		case "postcopy-active":
			// The destination runs the guest from here; pages it lacks
			// come from the source on demand.
			start()
			if m.phase < phaseSwitched {
				out = append(out, "switch")
				m.phase = phaseSwitched
			}
		case "completed":
			// On the destination, completed comes before the guest runs
			// (RESUME); on the source it is the end of the copy.
			if m.Role != RoleDestination && m.phase != phaseIdle {
				if m.DestinationSwitches {
					m.phase = phaseIdle // this side's part is over
				} else {
					finish()
				}
			}
		case "failed", "cancelled":
			if m.phase != phaseIdle {
				out = append(out, "abort")
				m.phase = phaseIdle
			}
		case "none", "setup":
			// QEMU never goes back to these within a move: a QEMU that
			// reports them (query-migrate after a reconnect) while a move
			// was followed is a new process, and the move died with the
			// old one. Without the abort the gateway would hold the
			// endpoint's packets until someone noticed.
			if m.phase != phaseIdle {
				out = append(out, "abort")
				m.phase = phaseIdle
			}
		}
	case "STOP":
		if m.Role != RoleDestination && m.phase == phaseStarted {
			out = append(out, "blackout")
			m.phase = phaseBlackout
		}
	case "RESUME":
		// On the source a RESUME during a move means the move failed (a
		// failed event follows, or preceded it): nothing here. On the
		// destination it is the guest running there.
		if m.Role == RoleDestination && m.phase != phaseIdle {
			finish()
		}
	}
	return out
}

// Conn is a QMP connection past its capabilities negotiation.
type Conn struct {
	c      net.Conn
	r      *bufio.Reader
	events []Event // events read while waiting for a command's answer
	// partial: the start of a line a read deadline cut (NextBefore);
	// the next read goes on from it.
	partial []byte
	// CapsErr: the migration capabilities could not be set (QEMU refuses
	// while a migration runs: a follower that reconnects mid-move finds
	// them set by its previous connection).
	CapsErr error
}

// Dial connects to the QMP socket at path (unix), negotiates
// capabilities and turns on migration events (the "events" migration
// capability: without it QEMU sends no MIGRATION event), and with
// pauseBeforeSwitchover the "pause-before-switchover" capability: the
// source then waits, stopped, in status pre-switchover until the follower
// sends migrate-continue.
func Dial(ctx context.Context, path string, pauseBeforeSwitchover bool) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w (is QEMU running with -qmp unix:%s,server=on,wait=off?)", path, err, path)
	}
	q := &Conn{c: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := q.readLine()
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err == nil && greeting.QMP == nil {
		err = fmt.Errorf("no QMP greeting: %q", line)
	}
	if err == nil {
		_, err = q.Execute("qmp_capabilities", nil)
	}
	if err == nil {
		caps := []map[string]any{{"capability": "events", "state": true}}
		if pauseBeforeSwitchover {
			caps = append(caps, map[string]any{"capability": "pause-before-switchover", "state": true})
		}
		// A QMP error here is not the connection's: keep it for the caller.
		var cerr error
		_, cerr = q.Execute("migrate-set-capabilities", map[string]any{"capabilities": caps})
		var qe *QMPError
		if errors.As(cerr, &qe) {
			q.CapsErr = cerr
		} else {
			err = cerr
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	c.SetDeadline(time.Time{})
	return q, nil
}

// Close closes the connection.
func (q *Conn) Close() error { return q.c.Close() }

// Execute runs one command and returns its "return" value; events that
// arrive meanwhile are kept for Next.
func (q *Conn) Execute(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := q.readLine()
		if err != nil {
			return nil, err
		}
		var m struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class, Desc string
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("%s: answer %q: %w", cmd, line, err)
		}
		switch {
		case m.Event != "":
			var ev Event
			json.Unmarshal(line, &ev)
			q.events = append(q.events, ev)
		case m.Error != nil:
			return nil, &QMPError{Cmd: cmd, Class: m.Error.Class, Desc: m.Error.Desc}
		case m.Return != nil:
			return m.Return, nil
		}
	}
}

// QMPError is a command QEMU answered with an error.
type QMPError struct{ Cmd, Class, Desc string }

func (e *QMPError) Error() string { return fmt.Sprintf("%s: %s: %s", e.Cmd, e.Class, e.Desc) }

// Buffered takes the events read so far while waiting for answers,
// without reading more: a lab that only executes commands collects its
// events here.
func (q *Conn) Buffered() []Event {
	ev := q.events
	q.events = nil
	return ev
}

// readLine reads one line, going on from what a read deadline cut.
func (q *Conn) readLine() ([]byte, error) {
	line, err := q.r.ReadBytes('\n')
	if len(q.partial) > 0 {
		line = append(q.partial, line...)
		q.partial = nil
	}
	if err != nil {
		q.partial = line
		return nil, err
	}
	return line, nil
}

// Next is the next event.
func (q *Conn) Next() (Event, error) { return q.NextBefore(time.Time{}) }

// NextBefore is Next with a deadline (zero: none): past it, a timeout
// error (net.Error), and the connection stays usable.
func (q *Conn) NextBefore(deadline time.Time) (Event, error) {
	if len(q.events) > 0 {
		ev := q.events[0]
		q.events = q.events[1:]
		return ev, nil
	}
	q.c.SetReadDeadline(deadline)
	defer q.c.SetReadDeadline(time.Time{})
	for {
		line, err := q.readLine()
		if err != nil {
			return Event{}, err
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return Event{}, fmt.Errorf("qmp line %q: %w", line, err)
		}
		if ev.Event != "" {
			return ev, nil
		}
	}
}

// Current is the state of the migration and the guest now, as events:
// the follower feeds them to its Mapper after a (re)connect, so it
// catches up with what happened while it was away.
func (q *Conn) Current() ([]Event, error) {
	raw, err := q.Execute("query-migrate", nil)
	if err != nil {
		return nil, err
	}
	var mig struct {
		Status string `json:"status"`
	}
	json.Unmarshal(raw, &mig)
	raw, err = q.Execute("query-status", nil)
	if err != nil {
		return nil, err
	}
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	json.Unmarshal(raw, &st)
	var out []Event
	if mig.Status != "" {
		// "none" and "setup" too: after a reconnect they say the QEMU is
		// not the one whose move the follower was in (Mapper aborts it).
		ev := Event{Event: "MIGRATION"}
		ev.Data.Status = mig.Status
		out = append(out, ev)
		if !st.Running && mig.Status == "active" {
			out = append(out, Event{Event: "STOP"})
		}
	}
	if st.Running && mig.Status == "completed" {
		out = append(out, Event{Event: "RESUME"})
	}
	return out, nil
}

// Stepper carries out a step for the followed endpoint (a client of the
// gateway's migration control). An error that retrying cannot fix
// (the gateway refused the step) is Permanent.
type Stepper interface {
	Step(ctx context.Context, op string) error
}

// Permanent marks a step error that a retry cannot fix.
type Permanent struct{ Err error }

func (p *Permanent) Error() string { return p.Err.Error() }
func (p *Permanent) Unwrap() error { return p.Err }

// Follower follows one QEMU and drives one endpoint's moves.
type Follower struct {
	QMP   string // the QMP socket
	Role  string
	Steps Stepper
	Log   *slog.Logger
	// Retry is how long to wait before dialling QMP again, or resending
	// a step the gateway could not be reached for.
	Retry time.Duration // default 500ms
	// PauseBeforeSwitchover (source only) makes QEMU wait, with the
	// guest stopped, until the gateway holds (blackout acknowledged); then
	// the follower sends migrate-continue. Without it QEMU reports STOP
	// only once its stop-and-copy is over (it holds its main lock
	// meanwhile), so the hold starts late and what reached the source in
	// between is lost. ContinueAfter bounds the wait for the gateway.
	PauseBeforeSwitchover bool
	ContinueAfter         time.Duration // default 2s
	// DestinationSwitches: see Mapper.
	DestinationSwitches bool
	// HoldBeforeStop (source only): the follower, not QEMU, stops the
	// guest, after the hold: once the pre-copy has at most HoldRemaining
	// bytes of RAM left it sends blackout, waits Drain for the running
	// guest to read what reached its tap before the hold, then sends QEMU
	// stop; the stop-and-copy then runs with the guest already paused.
	// Nothing is in flight to a stopped guest, so nothing is lost there.
	// QEMU keeps the guest paused on the destination (it was paused when
	// the move completed): a destination follower with StartGuest
	// resumes it. If QEMU reaches its own stop first (it converged before
	// the follower's poll saw the threshold), the follower goes on as
	// without this option (and logs it).
	HoldBeforeStop bool
	HoldRemaining  uint64        // 0: at once, when the move is active (the pre-copy then runs with the guest paused)
	Drain          time.Duration // default 20ms
	Poll           time.Duration // query-migrate every Poll in the pre-copy; default 5ms
	// StartGuest (destination only): when the incoming move completed
	// with the guest paused (the source's follower stopped it), send
	// cont; its RESUME is the switch.
	StartGuest bool

	mapper  Mapper
	stopped bool // this follower stopped the source guest (HoldBeforeStop): cont it if the move fails
	// queue: steps mapped from events, not yet through to the gateway,
	// oldest first. They go in this order, and the follower keeps reading
	// QEMU's events while the gateway cannot be reached (send).
	queue []queuedStep
}

type queuedStep struct {
	op string
	ev Event
}

// Run follows until ctx ends. It dials QEMU again whenever the socket
// closes (QEMU restarted, or the follower started first).
func (f *Follower) Run(ctx context.Context) error {
	if f.Retry <= 0 {
		f.Retry = 500 * time.Millisecond
	}
	if f.ContinueAfter <= 0 {
		f.ContinueAfter = 2 * time.Second
	}
	if f.Drain <= 0 {
		f.Drain = 20 * time.Millisecond
	}
	if f.Poll <= 0 {
		f.Poll = 5 * time.Millisecond
	}
	f.mapper.Role, f.mapper.DestinationSwitches = f.Role, f.DestinationSwitches
	for ctx.Err() == nil {
		err := f.session(ctx)
		if ctx.Err() != nil {
			break
		}
		f.Log.Warn("qmp: connection lost; dialling again", "socket", f.QMP, "err", err, "in", f.Retry)
		// Steps not yet through go on meanwhile (QEMU may be gone for good
		// after its last events).
		f.send(ctx, false)
		select {
		case <-ctx.Done():
		case <-time.After(f.Retry):
		}
	}
	return nil
}

func (f *Follower) session(ctx context.Context) error {
	pause := f.PauseBeforeSwitchover && f.Role != RoleDestination
	q, err := Dial(ctx, f.QMP, pause)
	if err != nil {
		return err
	}
	if q.CapsErr != nil {
		f.Log.Warn("qmp: migration capabilities not set (a move in progress has them from the previous connection)", "err", q.CapsErr)
	}
	defer q.Close()
	stop := context.AfterFunc(ctx, func() { q.Close() })
	defer stop()
	cur, err := q.Current()
	if err != nil {
		return err
	}
	f.Log.Info("qmp: following", "socket", f.QMP, "role", f.mapper.Role)
	holdFirst := f.HoldBeforeStop && f.Role != RoleDestination
	handle := func(ev Event) error {
		if ev.Event == "MIGRATION" {
			switch st := ev.Data.Status; {
			case holdFirst && st == "active":
				f.apply(ctx, ev, false)
				return f.holdThenStop(ctx, q)
			case f.StartGuest && f.Role == RoleDestination && st == "completed" && f.mapper.phase != phaseIdle:
				f.apply(ctx, ev, false)
				return f.startGuest(q)
			case f.stopped && (st == "failed" || st == "cancelled"):
				// The follower paused the guest; QEMU resumes only a
				// guest that ran when the move began.
				f.apply(ctx, ev, false)
				f.stopped = false
				if _, err := q.Execute("cont", nil); err != nil {
					f.Log.Error("qmp: the move failed and the source guest stays paused: cont it by hand", "err", err)
				} else {
					f.Log.Info("qmp: the move failed; source guest resumed")
				}
				return nil
			case st == "completed" || st == "none" || st == "setup":
				// none, setup: a new QEMU (or a new move): the guest this
				// follower stopped is not there to resume.
				f.stopped = false
			}
		}
		if !pause || ev.Event != "MIGRATION" || ev.Data.Status != "pre-switchover" {
			f.apply(ctx, ev, false)
			return nil
		}
		// The source waits, stopped: hold first, then let it go on. A
		// gateway that cannot be reached within ContinueAfter does not
		// keep the guest paused: the move goes on unheld.
		actx, cancel := context.WithTimeout(ctx, f.ContinueAfter)
		f.apply(actx, ev, true)
		cancel()
		_, err := q.Execute("migrate-continue", map[string]any{"state": "pre-switchover"})
		if err != nil {
			var qe *QMPError
			if errors.As(err, &qe) {
				// Someone else continued it already.
				f.Log.Warn("qmp: migrate-continue", "err", err)
				return nil
			}
			return err
		}
		f.Log.Info("qmp: source continues to the switchover")
		return nil
	}
	for _, ev := range cur {
		if err := handle(ev); err != nil {
			return err
		}
	}
	// With steps waiting for the gateway, they are sent again every
	// Retry; QEMU's events are read meanwhile (a source paused in
	// pre-switchover must be let go on). The time is kept across events:
	// a wait begun anew at each would never end in a stream of them.
	var retryAt time.Time
	for {
		var deadline time.Time
		if len(f.queue) > 0 {
			now := time.Now()
			if retryAt.IsZero() {
				retryAt = now.Add(f.Retry)
			}
			if !now.Before(retryAt) {
				f.send(ctx, false)
				retryAt = time.Now().Add(f.Retry)
				continue
			}
			deadline = retryAt
		} else {
			retryAt = time.Time{}
		}
		ev, err := q.NextBefore(deadline)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
				continue
			}
			return err
		}
		if err := handle(ev); err != nil {
			return err
		}
	}
}

// migrateInfo is what holdThenStop reads of query-migrate.
type migrateInfo struct {
	Status string `json:"status"`
	RAM    struct {
		Remaining uint64 `json:"remaining"`
	} `json:"ram"`
}

// holdThenStop (source, HoldBeforeStop) polls the pre-copy until at most
// HoldRemaining bytes are left, then holds, lets the running guest drain
// its tap, and stops the guest. It returns nil, doing nothing more, when
// QEMU got to its own stop first: the events that follow carry on.
func (f *Follower) holdThenStop(ctx context.Context, q *Conn) error {
	if f.mapper.phase != phaseStarted {
		return nil
	}
	for {
		raw, err := q.Execute("query-migrate", nil)
		if err != nil {
			return err
		}
		var m migrateInfo
		json.Unmarshal(raw, &m)
		if m.Status != "active" {
			f.Log.Warn("qmp: QEMU left the pre-copy before the hold (it converged between two polls); holding at its stop", "status", m.Status)
			return nil
		}
		// Events that arrive meanwhile wait in q for the session loop.
		if f.HoldRemaining == 0 || m.RAM.Remaining <= f.HoldRemaining {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(f.Poll):
		}
	}
	raw, err := q.Execute("query-status", nil)
	if err != nil {
		return err
	}
	var st struct {
		Running bool `json:"running"`
	}
	json.Unmarshal(raw, &st)
	if !st.Running {
		f.Log.Warn("qmp: the guest stopped before the hold; holding at its stop")
		return nil
	}
	// Hold, bounded as the pause before the switchover is: a gateway
	// that cannot be reached does not keep the move from going on.
	actx, cancel := context.WithTimeout(ctx, f.ContinueAfter)
	f.apply(actx, Event{Event: "STOP"}, true)
	cancel()
	if len(f.queue) > 0 {
		f.Log.Error("qmp: the gateway did not acknowledge the hold; QEMU stops the guest itself", "waiting", f.queue[0].op)
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.Drain):
	}
	if _, err := q.Execute("stop", nil); err != nil {
		var qe *QMPError
		if errors.As(err, &qe) {
			f.Log.Warn("qmp: stop", "err", err)
			return nil
		}
		return err
	}
	f.stopped = true
	f.Log.Info("qmp: guest stopped after the hold", "drain", f.Drain)
	return nil
}

// startGuest (destination, StartGuest) resumes a guest whose incoming
// move completed with it paused.
func (f *Follower) startGuest(q *Conn) error {
	raw, err := q.Execute("query-status", nil)
	if err != nil {
		return err
	}
	var st struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	json.Unmarshal(raw, &st)
	if st.Running || st.Status != "paused" {
		return nil
	}
	if _, err := q.Execute("cont", nil); err != nil {
		var qe *QMPError
		if errors.As(err, &qe) {
			f.Log.Warn("qmp: cont", "err", err)
			return nil
		}
		return err
	}
	f.Log.Info("qmp: guest started on the destination")
	return nil
}

// apply maps ev, queues its steps behind those not yet through, and
// sends the queue (send).
func (f *Follower) apply(ctx context.Context, ev Event, wait bool) {
	ops := f.mapper.Map(ev)
	for _, op := range ops {
		f.queue = append(f.queue, queuedStep{op, ev})
	}
	// An event with no step of its own (MIGRATION_PASS, many a second
	// in a pre-copy) leaves the retries to their interval: sending at
	// each would dial a gateway that is down hundreds of times a second.
	if len(ops) > 0 || wait {
		f.send(ctx, wait)
	}
}

// send sends the queued steps in order. A step the gateway could not be
// reached for stays first in the queue (each step is idempotent there,
// and a later step must not overtake it): with wait, it is sent again
// every Retry until it goes through or ctx ends; without, send returns
// and the session sends it again every Retry while it reads QEMU's
// events. A step the gateway refused is logged and dropped.
func (f *Follower) send(ctx context.Context, wait bool) {
	for len(f.queue) > 0 {
		s := f.queue[0]
		err := f.Steps.Step(ctx, s.op)
		var p *Permanent
		switch {
		case err == nil:
			f.Log.Info("migration step", "op", s.op, "event", s.ev.Event, "status", s.ev.Data.Status)
		case errors.As(err, &p):
			f.Log.Error("migration step refused by the gateway; going on with the next event", "op", s.op, "err", err)
		default:
			f.Log.Warn("migration step: gateway unreachable; retrying", "op", s.op, "err", err, "in", f.Retry, "queued", len(f.queue))
			if !wait {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(f.Retry):
			}
			continue
		}
		f.queue = f.queue[1:]
	}
}
