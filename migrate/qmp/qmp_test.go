package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func ev(s string) Event {
	name, status, _ := strings.Cut(s, ":")
	e := Event{Event: name}
	e.Data.Status = status
	return e
}

func TestMapper(t *testing.T) {
	for _, tc := range []struct {
		name   string
		role   string
		events string
		want   string
		dst    bool // DestinationSwitches
	}{
		{"source, the destination switches", RoleSource, "MIGRATION:active STOP MIGRATION:pre-switchover MIGRATION:device MIGRATION:completed MIGRATION:completed", "start blackout", true},
		{"source, the destination switches, two moves", RoleSource, "MIGRATION:active STOP MIGRATION:completed MIGRATION:active STOP MIGRATION:completed", "start blackout start blackout", true},
		{"source, the destination switches, failed", RoleSource, "MIGRATION:active STOP MIGRATION:failed", "start blackout abort", true},
		{"source, the usual move", RoleSource, "MIGRATION:setup MIGRATION:active STOP MIGRATION:completed", "start blackout switch done", false},
		{"source, every event twice", RoleSource, "MIGRATION:setup MIGRATION:active MIGRATION:active STOP STOP MIGRATION:completed MIGRATION:completed", "start blackout switch done", false},
		{"source, device state after STOP", RoleSource, "MIGRATION:active STOP MIGRATION:device MIGRATION:completed", "start blackout switch done", false},
		{"source, STOP missed (reconnect), device seen", RoleSource, "MIGRATION:active MIGRATION:device MIGRATION:completed", "start blackout switch done", false},
		{"source, pre-switchover", RoleSource, "MIGRATION:active STOP MIGRATION:pre-switchover MIGRATION:device MIGRATION:completed", "start blackout switch done", false},
		{"source, joined during the blackout", RoleSource, "MIGRATION:active STOP MIGRATION:completed", "start blackout switch done", false},
		{"source, failed in pre-copy", RoleSource, "MIGRATION:active MIGRATION:failed RESUME", "start abort", false},
		{"source, cancelled in the blackout", RoleSource, "MIGRATION:active STOP MIGRATION:cancelled RESUME", "start blackout abort", false},
		{"source, failed twice", RoleSource, "MIGRATION:active MIGRATION:failed MIGRATION:failed", "start abort", false},
		{"source, a pause that is no move", RoleSource, "STOP RESUME STOP", "", false},
		{"source, completed with nothing seen", RoleSource, "MIGRATION:completed", "", false},
		{"source, two moves in a row", RoleSource, "MIGRATION:active STOP MIGRATION:completed MIGRATION:active STOP MIGRATION:completed", "start blackout switch done start blackout switch done", false},
		{"source, postcopy", RoleSource, "MIGRATION:active STOP MIGRATION:postcopy-active MIGRATION:completed", "start blackout switch done", false},
		{"destination, the usual move", RoleDestination, "MIGRATION:setup MIGRATION:active MIGRATION:completed RESUME", "start switch done", false},
		{"destination, RESUME twice", RoleDestination, "MIGRATION:active MIGRATION:completed RESUME RESUME", "start switch done", false},
		{"destination, failed", RoleDestination, "MIGRATION:active MIGRATION:failed", "start abort", false},
		{"destination, a plain cont", RoleDestination, "RESUME", "", false},
		// A QEMU that reports no move (or a new one's setup) while one was
		// followed is a new QEMU process: the old move is gone, and
		// without an abort the gateway would hold the endpoint forever.
		{"source, QEMU restarted in the blackout", RoleSource, "MIGRATION:active STOP MIGRATION:none", "start blackout abort", false},
		{"source, QEMU restarted in the pre-copy, a new move", RoleSource, "MIGRATION:active MIGRATION:setup MIGRATION:active", "start abort start", false},
		{"source, no move and nothing followed", RoleSource, "MIGRATION:none MIGRATION:setup", "", false},
		{"destination, QEMU restarted", RoleDestination, "MIGRATION:active MIGRATION:none", "start abort", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := Mapper{Role: tc.role, DestinationSwitches: tc.dst}
			var got []string
			for _, e := range strings.Fields(tc.events) {
				got = append(got, m.Map(ev(e))...)
			}
			if strings.Join(got, " ") != tc.want {
				t.Fatalf("%s:\n got %q\nwant %q", tc.events, strings.Join(got, " "), tc.want)
			}
		})
	}
}

// fakeQEMU is a QMP server on a unix socket: it greets, answers the
// commands the follower sends, and sends the events a test pushes.
type fakeQEMU struct {
	t      *testing.T
	path   string
	ln     net.Listener
	mu     sync.Mutex
	mig    string // query-migrate's status
	run    bool   // query-status's running
	events chan string
	conns  chan net.Conn
	cmds   []string
	// refuseCaps: migrate-set-capabilities fails, as in QEMU while a
	// migration runs.
	refuseCaps bool
}

func newFakeQEMU(t *testing.T) *fakeQEMU {
	q := &fakeQEMU{t: t, path: filepath.Join(t.TempDir(), "qmp.sock"), mig: "none", run: true,
		events: make(chan string, 64), conns: make(chan net.Conn, 4)}
	var err error
	if q.ln, err = net.Listen("unix", q.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.ln.Close() })
	go q.serve()
	return q
}

func (q *fakeQEMU) serve() {
	for {
		c, err := q.ln.Accept()
		if err != nil {
			return
		}
		q.conns <- c
		go q.handle(c)
	}
}

func (q *fakeQEMU) handle(c net.Conn) {
	defer c.Close()
	var wmu sync.Mutex
	write := func(s string) {
		wmu.Lock()
		defer wmu.Unlock()
		io.WriteString(c, s+"\n")
	}
	write(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}`)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case e := <-q.events:
				n, s, _ := strings.Cut(e, ":")
				if s != "" {
					write(`{"event": "` + n + `", "data": {"status": "` + s + `"}, "timestamp": {"seconds": 1, "microseconds": 2}}`)
				} else {
					write(`{"event": "` + n + `", "timestamp": {"seconds": 1, "microseconds": 2}}`)
				}
			}
		}
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var cmd struct {
			Execute string `json:"execute"`
		}
		json.Unmarshal(line, &cmd)
		q.mu.Lock()
		q.cmds = append(q.cmds, cmd.Execute)
		mig, run := q.mig, q.run
		q.mu.Unlock()
		switch cmd.Execute {
		case "query-migrate":
			write(`{"return": {"status": "` + mig + `"}}`)
		case "migrate-set-capabilities":
			q.mu.Lock()
			refuse := q.refuseCaps
			q.mu.Unlock()
			if refuse {
				write(`{"error": {"class": "GenericError", "desc": "There's a migration process in progress"}}`)
			} else {
				write(`{"return": {}}`)
			}
		case "query-status":
			status := "running"
			if !run {
				status = "paused"
			}
			b, _ := json.Marshal(map[string]any{"running": run, "status": status})
			write(`{"return": ` + string(b) + `}`)
		default:
			write(`{"return": {}}`)
		}
	}
}

func (q *fakeQEMU) set(mig string, run bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.mig, q.run = mig, run
}

// recorder is a Stepper that records steps; fail makes the next n steps
// fail as an unreachable gateway would.
type recorder struct {
	mu    sync.Mutex
	ops   []string
	fail  int
	tries int
	seen  chan string
}

func (r *recorder) Step(ctx context.Context, op string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	if r.fail > 0 {
		r.fail--
		return errors.New("dial: connection refused")
	}
	r.ops = append(r.ops, op)
	r.seen <- op
	return nil
}

func (r *recorder) wait(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-r.seen:
			if got != w {
				t.Fatalf("step %q, want %q", got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no step %q", w)
		}
	}
}

func TestFollowerReconnects(t *testing.T) {
	q := newFakeQEMU(t)
	rec := &recorder{seen: make(chan string, 64), fail: 2}
	f := &Follower{QMP: q.path, Steps: rec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c := <-q.conns
	// The gateway is unreachable for the first two tries: start is sent
	// again, and blackout waits behind it.
	q.events <- "MIGRATION:setup"
	q.events <- "MIGRATION:active"
	q.events <- "MIGRATION:active"
	rec.wait(t, "start")
	// QEMU's socket closes in the pre-copy; meanwhile the source stops.
	q.set("active", false)
	c.Close()
	<-q.conns
	// Caught up from query-migrate/query-status: blackout, once.
	rec.wait(t, "blackout")
	q.events <- "STOP"
	q.set("completed", false)
	q.events <- "MIGRATION:completed"
	q.events <- "MIGRATION:completed"
	rec.wait(t, "switch", "done")
	// Nothing more: the repeats sent nothing.
	time.Sleep(100 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if want := []string{"start", "blackout", "switch", "done"}; !slices.Equal(rec.ops, want) {
		t.Fatalf("steps %v, want %v", rec.ops, want)
	}
	if rec.tries != 6 {
		t.Fatalf("%d tries, want 6 (two failed starts, then one per step)", rec.tries)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !slices.Contains(q.cmds, "migrate-set-capabilities") || q.cmds[0] != "qmp_capabilities" {
		t.Fatalf("commands %v: want qmp_capabilities first and migration events turned on", q.cmds)
	}
}

// TestFollowerAbortsAfterQEMURestart: QEMU dies in the blackout and a new
// QEMU (no migration) answers on the socket: the follower aborts the move
// it followed, so the gateway does not hold the endpoint's packets
// forever (before, it sent nothing: its phase stayed blackout).
func TestFollowerAbortsAfterQEMURestart(t *testing.T) {
	q := newFakeQEMU(t)
	rec := &recorder{seen: make(chan string, 64)}
	f := &Follower{QMP: q.path, Steps: rec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := <-q.conns
	q.events <- "MIGRATION:active"
	q.events <- "STOP"
	rec.wait(t, "start", "blackout")
	// QEMU dies; a new one, with no migration, takes the socket.
	q.set("none", true)
	c.Close()
	<-q.conns
	rec.wait(t, "abort")
	// A plain pause of the new QEMU is no move.
	q.events <- "STOP"
	q.events <- "RESUME"
	time.Sleep(100 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if want := []string{"start", "blackout", "abort"}; !slices.Equal(rec.ops, want) {
		t.Fatalf("steps %v, want %v", rec.ops, want)
	}
}

func (q *fakeQEMU) commands() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.cmds...)
}

// waitCmd waits for the follower to send cmd to QEMU n times in all.
func (q *fakeQEMU) waitCmd(t *testing.T, cmd string, n int) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		c := 0
		for _, x := range q.commands() {
			if x == cmd {
				c++
			}
		}
		if c >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the follower sent %s fewer than %d times: %v", cmd, n, q.commands())
}

// TestFollowerPausesBeforeSwitchover: with pause-before-switchover the
// source waits, stopped, in pre-switchover; the follower sends
// migrate-continue only once the blackout went through, or, when the
// gateway cannot be reached, after ContinueAfter (the guest is never left
// paused). A follower reconnecting mid-move, when QEMU refuses to set
// capabilities, carries on.
func TestFollowerPausesBeforeSwitchover(t *testing.T) {
	q := newFakeQEMU(t)
	rec := &recorder{seen: make(chan string, 64)}
	f := &Follower{QMP: q.path, Steps: rec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond,
		PauseBeforeSwitchover: true, ContinueAfter: 300 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := <-q.conns
	q.events <- "MIGRATION:active"
	rec.wait(t, "start")
	q.events <- "STOP"
	rec.wait(t, "blackout")
	if slices.Contains(q.commands(), "migrate-continue") {
		t.Fatal("migrate-continue before pre-switchover")
	}
	q.events <- "MIGRATION:pre-switchover"
	q.waitCmd(t, "migrate-continue", 1)
	q.events <- "MIGRATION:device"
	q.events <- "MIGRATION:completed"
	rec.wait(t, "switch", "done")

	// A second move; the gateway is down when the source pauses, and the
	// follower reconnects to QEMU mid-move (capabilities refused).
	q.events <- "MIGRATION:active"
	rec.wait(t, "start")
	q.mu.Lock()
	q.refuseCaps = true
	q.mig, q.run = "pre-switchover", false
	q.mu.Unlock()
	rec.mu.Lock()
	rec.fail = 1 << 30
	rec.mu.Unlock()
	c.Close()
	<-q.conns
	// Caught up from query-migrate: blackout tried until ContinueAfter,
	// then the source is let go on.
	q.waitCmd(t, "migrate-continue", 2)
	rec.mu.Lock()
	ops := append([]string(nil), rec.ops...)
	rec.mu.Unlock()
	if want := []string{"start", "blackout", "switch", "done", "start"}; !slices.Equal(ops, want) {
		t.Fatalf("steps %v, want %v", ops, want)
	}
}

// TestFollowerHoldsBeforeStop: with HoldBeforeStop the source's follower
// holds while the guest still runs, and only then (after the drain) stops
// the guest; a move that fails after that resumes the guest it stopped.
// The destination's follower with StartGuest resumes a guest whose move
// completed paused.
func TestFollowerHoldsBeforeStop(t *testing.T) {
	q := newFakeQEMU(t)
	q.set("active", true)
	rec := &recorder{seen: make(chan string, 64)}
	f := &Follower{QMP: q.path, Steps: rec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond,
		PauseBeforeSwitchover: true, DestinationSwitches: true, HoldBeforeStop: true, Drain: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-q.conns
	q.events <- "MIGRATION:active"
	rec.wait(t, "start", "blackout")
	q.waitCmd(t, "stop", 1)
	// stop only after the blackout went through.
	cmds := q.commands()
	if i := slices.Index(cmds, "stop"); i < 0 || len(rec.ops) < 2 {
		t.Fatalf("commands %v, steps %v", cmds, rec.ops)
	}
	q.set("active", false)
	q.events <- "STOP"
	q.events <- "MIGRATION:pre-switchover"
	q.waitCmd(t, "migrate-continue", 1)
	q.events <- "MIGRATION:completed"
	// A second move fails after the follower stopped the guest: abort,
	// and the guest runs again.
	q.set("active", true)
	q.events <- "MIGRATION:active"
	rec.wait(t, "start", "blackout")
	q.waitCmd(t, "stop", 2)
	q.events <- "MIGRATION:failed"
	rec.wait(t, "abort")
	q.waitCmd(t, "cont", 1)
	rec.mu.Lock()
	ops := append([]string(nil), rec.ops...)
	rec.mu.Unlock()
	if want := []string{"start", "blackout", "start", "blackout", "abort"}; !slices.Equal(ops, want) {
		t.Fatalf("steps %v, want %v", ops, want)
	}

	// The destination: the move completes with the guest paused; the
	// follower resumes it, and RESUME is the switch.
	d := newFakeQEMU(t)
	drec := &recorder{seen: make(chan string, 64)}
	df := &Follower{QMP: d.path, Role: RoleDestination, Steps: drec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond, StartGuest: true}
	dctx, dcancel := context.WithCancel(context.Background())
	ddone := make(chan struct{})
	go func() { defer close(ddone); df.Run(dctx) }()
	defer func() { dcancel(); <-ddone }()
	<-d.conns
	d.events <- "MIGRATION:active"
	drec.wait(t, "start")
	d.set("completed", false)
	d.events <- "MIGRATION:completed"
	d.waitCmd(t, "cont", 1)
	d.events <- "RESUME"
	drec.wait(t, "switch", "done")
}

// TestFollowerReadsQEMUWhileGatewayDown: the gateway cannot be reached
// from the move's start. The follower keeps reading QEMU's events while
// it retries, so the source paused in pre-switchover is let go on after
// ContinueAfter (it used to retry the start forever without reading a
// line: the guest stayed paused until the gateway came back), and the
// steps it could not send stay queued: once the gateway is back they go
// in order, and the move ends at the destination (the bounded wait used
// to drop start and blackout, so switch and done were refused and the
// gateway kept forwarding to the source).
func TestFollowerReadsQEMUWhileGatewayDown(t *testing.T) {
	for _, live := range []bool{true, false} {
		name := "events read live"
		if !live {
			name = "caught up at connect"
		}
		t.Run(name, func(t *testing.T) {
			q := newFakeQEMU(t)
			rec := &recorder{seen: make(chan string, 64), fail: 1 << 30}
			f := &Follower{QMP: q.path, Steps: rec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond,
				PauseBeforeSwitchover: true, ContinueAfter: 300 * time.Millisecond}
			if !live {
				q.set("pre-switchover", false)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); f.Run(ctx) }()
			defer func() { cancel(); <-done }()
			<-q.conns
			if live {
				// Past the catch-up: what follows is read as events.
				q.waitCmd(t, "query-status", 1)
				q.events <- "MIGRATION:active"
				q.events <- "STOP"
				q.set("pre-switchover", false)
				q.events <- "MIGRATION:pre-switchover"
			}
			q.waitCmd(t, "migrate-continue", 1)
			q.set("completed", false)
			q.events <- "MIGRATION:device"
			q.events <- "MIGRATION:completed"
			// The gateway comes back: every step, once, in order.
			rec.mu.Lock()
			rec.fail = 0
			rec.mu.Unlock()
			rec.wait(t, "start", "blackout", "switch", "done")
			time.Sleep(100 * time.Millisecond)
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if want := []string{"start", "blackout", "switch", "done"}; !slices.Equal(rec.ops, want) {
				t.Fatalf("steps %v, want %v", rec.ops, want)
			}
		})
	}
}

// TestFollowerRetriesUnderAnEventStream: QEMU reports events more often
// than the retry interval (MIGRATION_PASS in a long pre-copy) while a
// step waits for the gateway: the step is still sent again every Retry
// (a wait that began anew at each event never ended), and not at each
// event either (a retry storm against the gateway).
func TestFollowerRetriesUnderAnEventStream(t *testing.T) {
	q := newFakeQEMU(t)
	rec := &recorder{seen: make(chan string, 64), fail: 1 << 30}
	f := &Follower{QMP: q.path, Steps: rec, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-q.conns
	q.waitCmd(t, "query-status", 1)
	q.events <- "MIGRATION:active"
	stop := make(chan struct{})
	var sent atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			case q.events <- "MIGRATION_PASS":
				sent.Add(1)
				time.Sleep(time.Millisecond)
			}
		}
	}()
	tries := func() int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.tries
	}
	// 300 events, at least 1ms apart: 15 retry intervals or more.
	for i := 0; i < 3000 && sent.Load() < 300; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	n, events := tries(), sent.Load()
	if n < 2 {
		t.Fatalf("%d tries of the start while QEMU sent %d events: the retries starved", n, events)
	}
	if int64(n) > events/2 {
		t.Fatalf("%d tries for %d events: a retry at each event", n, events)
	}
}
