package health

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var (
	svc = netip.MustParseAddrPort("192.0.2.10:80")
	t0  = time.Unix(1_000_000, 0)
)

// TestRiseFall: keepalived's semantics, result by result.
func TestRiseFall(t *testing.T) {
	fail := errors.New("refused")
	for _, tc := range []struct {
		name       string
		rise, fall int
		results    string // p: pass, f: fail
		want       string // the verdict after each result: U or D
	}{
		{"fall 3", 2, 3, "fffp", "UUDD"},
		{"a pass resets the count to fall", 2, 3, "ffpfff", "UUUUUD"},
		{"rise 2", 2, 3, "fffpp", "UUDDU"},
		{"a failure resets the count to rise", 2, 3, "fffpfpp", "UUDDDDU"},
		{"fall 1, rise 1 follow each result", 1, 1, "fpfp", "DUDU"},
		{"passes keep it up", 3, 3, "pppp", "UUUU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewState(t0)
			var got strings.Builder
			changes := 0
			for i, r := range tc.results {
				var err error
				if r == 'f' {
					err = fail
				}
				if s.Observe(err, tc.rise, tc.fall, t0.Add(time.Duration(i)*time.Second)) {
					changes++
				}
				if s.Up {
					got.WriteByte('U')
				} else {
					got.WriteByte('D')
				}
			}
			if got.String() != tc.want {
				t.Errorf("verdicts %s, want %s", got.String(), tc.want)
			}
			wantChanges := 0
			for i := range tc.want {
				prev := byte('U')
				if i > 0 {
					prev = tc.want[i-1]
				}
				if tc.want[i] != prev {
					wantChanges++
				}
			}
			if changes != wantChanges {
				t.Errorf("%d changes reported, want %d", changes, wantChanges)
			}
			if s.Checks != uint64(len(tc.results)) {
				t.Errorf("checks %d, want %d", s.Checks, len(tc.results))
			}
		})
	}
}

func TestParseCheck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // Check.String(), or the error's start
		err  bool
	}{
		{in: "tcp", want: "tcp,interval=2s,timeout=1s,rise=2,fall=3"},
		{in: "http,path=/healthz,status=204,interval=500ms,timeout=200ms,rise=1,fall=2", want: "http,interval=500ms,timeout=200ms,rise=1,fall=2,path=/healthz,status=204"},
		{in: "https,insecure,host=svc.example", want: "https,interval=2s,timeout=1s,rise=2,fall=3,path=/,status=200,host=svc.example,insecure"},
		{in: "command,timeout=1s,cmd=/bin/check --port 80", want: "command,interval=2s,timeout=1s,rise=2,fall=3,cmd=/bin/check --port 80"},
		{in: "udp", err: true, want: `check type "udp"`},
		{in: "tcp,timeout=3s", err: true, want: "check timeout 3s"},
		{in: "tcp,rise=0", err: false, want: "tcp,interval=2s,timeout=1s,rise=2,fall=3"}, // 0 is the default
		{in: "tcp,fall=101", err: true, want: "check rise 2, fall 101"},
		{in: "http,status=700", err: true, want: "check status 700"},
		{in: "http,path=healthz", err: true, want: `check path "healthz"`},
		{in: "tcp,insecure", err: true, want: "check insecure"},
		{in: "command", err: true, want: "check command"},
		{in: "tcp,colour=blue", err: true, want: `check "tcp,colour=blue": unknown setting`},
		{in: "tcp,interval=fast", err: true, want: `check "tcp,interval=fast": interval`},
	} {
		c, err := ParseCheck(tc.in)
		if tc.err {
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("ParseCheck(%q): err %v, want one starting %q", tc.in, err, tc.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCheck(%q): %v", tc.in, err)
			continue
		}
		if c.String() != tc.want {
			t.Errorf("ParseCheck(%q) = %s, want %s", tc.in, c, tc.want)
		}
	}
}

// listenAddr is a listener's address as an AddrPort.
func listenAddr(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// TestCheckers: each kind of check against a backend that is up, one that
// is down, and one that hangs (bounded by the timeout).
func TestCheckers(t *testing.T) {
	status := func(code int) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				w.WriteHeader(404)
				return
			}
			w.WriteHeader(code)
		}))
		t.Cleanup(s.Close)
		return s
	}
	ok, five := status(200), status(500)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(tlsSrv.Close)
	// A listener that accepts and never answers: an HTTP check hangs on
	// it until its timeout.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hang.Close() })
	var held sync.WaitGroup
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			held.Add(1)
			go func() { defer held.Done(); defer c.Close(); time.Sleep(5 * time.Second) }()
		}
	}()
	// A closed port: refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := listenAddr(t, l.Addr())
	l.Close()

	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	upCmd := script("up.sh", `[ "$TANDEM_BACKEND_PORT" = 8080 ] && [ "$TANDEM_SERVICE" = 192.0.2.10:80 ]`)
	exit1 := script("exit1.sh", "echo not serving >&2; exit 1")
	crash := script("crash.sh", "kill -SEGV $$")
	sleeper := script("sleep.sh", "sleep 30 & wait") // a child too: killed with its group

	for _, tc := range []struct {
		name    string
		check   string
		backend netip.AddrPort
		errHas  string // "": up
	}{
		{"tcp up", "tcp", listenAddr(t, ok.Listener.Addr()), ""},
		{"tcp refused", "tcp", closed, "refused"},
		{"http 200", "http,path=/healthz", listenAddr(t, ok.Listener.Addr()), ""},
		{"http 500 is down", "http,path=/healthz", listenAddr(t, five.Listener.Addr()), "status 500, want 200"},
		{"http expected 500", "http,path=/healthz,status=500", listenAddr(t, five.Listener.Addr()), ""},
		{"http wrong path", "http,path=/other", listenAddr(t, ok.Listener.Addr()), "status 404"},
		{"http hangs", "http,timeout=200ms,interval=1s", listenAddr(t, hang.Addr()), "deadline"},
		{"https unverified cert refused", "https", listenAddr(t, tlsSrv.Listener.Addr()), "certificate"},
		{"https insecure", "https,insecure", listenAddr(t, tlsSrv.Listener.Addr()), ""},
		{"command exit 0", "command,cmd=" + upCmd, netip.MustParseAddrPort("10.0.0.1:8080"), ""},
		{"command exit 1", "command,cmd=" + exit1, netip.MustParseAddrPort("10.0.0.1:8080"), "exit status 1: not serving"},
		{"command crashes", "command,cmd=" + crash, netip.MustParseAddrPort("10.0.0.1:8080"), "segmentation fault"},
		{"command hangs", "command,timeout=200ms,interval=1s,cmd=" + sleeper, netip.MustParseAddrPort("10.0.0.1:8080"), "killed at the timeout"},
		{"command missing", "command,cmd=" + filepath.Join(dir, "nothing"), netip.MustParseAddrPort("10.0.0.1:8080"), "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.check
			if !strings.Contains(spec, "timeout=") {
				// Generous where the check is not about its timeout: a
				// TLS handshake takes over a second in the TCG VM.
				spec = strings.Replace(spec+",", ",", ",interval=30s,timeout=20s,", 1)
				spec = strings.TrimSuffix(spec, ",")
			}
			c, err := ParseCheck(spec)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
			defer cancel()
			err = NewChecker(c).Check(ctx, svc, tc.backend)
			switch {
			case tc.errHas == "" && err != nil:
				t.Errorf("down: %v", err)
			case tc.errHas != "" && err == nil:
				t.Errorf("up, want an error with %q", tc.errHas)
			case tc.errHas != "" && !strings.Contains(err.Error(), tc.errHas):
				t.Errorf("err %v, want one with %q", err, tc.errHas)
			}
		})
	}
}

// fakeChecks are checkers driven by the test: per backend, a function
// that gives the next result; each call is counted.
type fakeChecks struct {
	mu    sync.Mutex
	calls map[netip.AddrPort]int
	fn    map[netip.AddrPort]func(ctx context.Context, n int) error
}

func (f *fakeChecks) newChecker(Check) Checker {
	return CheckerFunc(func(ctx context.Context, _, b netip.AddrPort) error {
		f.mu.Lock()
		f.calls[b]++
		n := f.calls[b]
		fn := f.fn[b]
		f.mu.Unlock()
		return fn(ctx, n)
	})
}

func (f *fakeChecks) count(b netip.AddrPort) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[b]
}

// waitFor polls cond; the bound is generous (the machine is shared), and
// nothing asserts how long it took.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestRunnerNoneBlocks: a backend whose check hangs (and ignores its
// context until released) and one whose checks are slow do not hold up a
// healthy backend's checks, nor Set, Status or the observer. Counted:
// the healthy backend completes many checks while the hanging one is in
// its first.
func TestRunnerNoneBlocks(t *testing.T) {
	hung, slow, fine := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80"), netip.MustParseAddrPort("10.0.0.3:80")
	release := make(chan struct{})
	f := &fakeChecks{calls: map[netip.AddrPort]int{}, fn: map[netip.AddrPort]func(context.Context, int) error{
		hung: func(ctx context.Context, n int) error { <-release; return nil },
		slow: func(ctx context.Context, n int) error { <-ctx.Done(); return ctx.Err() },
		fine: func(ctx context.Context, n int) error { return nil },
	}}
	var events atomic.Int64
	r := New(Options{NewChecker: f.newChecker, OnHealth: ObserverFunc(func(s, b netip.AddrPort, up bool) { events.Add(1) })})
	defer func() { close(release); r.Close() }()
	c := Check{Kind: TCP, Interval: 10 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 1, Fall: 1}
	r.Set([]Target{{Service: svc, Backend: hung, Check: c}, {Service: svc, Backend: slow, Check: c}, {Service: svc, Backend: fine, Check: c}})
	waitFor(t, "50 checks of the healthy backend", func() bool { return f.count(fine) >= 50 })
	if n := f.count(hung); n != 1 {
		t.Errorf("the hanging backend was checked %d times, want 1 (still in its first)", n)
	}
	waitFor(t, "the slow backend marked down", func() bool {
		for _, s := range r.Status() {
			if s.Backend == slow {
				return !s.Up && strings.Contains(s.LastErr, "timed out")
			}
		}
		return false
	})
	// The runner's own calls return while the hanging check holds.
	r.Set([]Target{{Service: svc, Backend: hung, Check: c}, {Service: svc, Backend: slow, Check: c}, {Service: svc, Backend: fine, Check: c}})
	if st := r.Status(); len(st) != 3 {
		t.Errorf("status lists %d backends, want 3", len(st))
	}
}

// TestRunnerEvents: a backend that fails is reported down once after
// fall checks, up once after rise passes; the log says each once.
func TestRunnerEvents(t *testing.T) {
	b := netip.MustParseAddrPort("10.0.0.1:80")
	var failing atomic.Bool
	f := &fakeChecks{calls: map[netip.AddrPort]int{}, fn: map[netip.AddrPort]func(context.Context, int) error{
		b: func(ctx context.Context, n int) error {
			if failing.Load() {
				return errors.New("connection refused")
			}
			return nil
		},
	}}
	type ev struct{ up bool }
	var mu sync.Mutex
	var got []ev
	var logs syncBuf
	r := New(Options{NewChecker: f.newChecker, Log: newTextLogger(&logs), OnHealth: ObserverFunc(func(s, bk netip.AddrPort, up bool) {
		mu.Lock()
		got = append(got, ev{up})
		mu.Unlock()
	})})
	defer r.Close()
	c := Check{Kind: TCP, Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond, Rise: 2, Fall: 3}
	r.Set([]Target{{Service: svc, Backend: b, Check: c}})
	events := func() []ev { mu.Lock(); defer mu.Unlock(); return append([]ev(nil), got...) }
	waitFor(t, "5 passing checks", func() bool { return f.count(b) >= 5 })
	failing.Store(true)
	start := f.count(b)
	waitFor(t, "down", func() bool { e := events(); return len(e) == 2 })
	failing.Store(false)
	waitFor(t, "up", func() bool { e := events(); return len(e) == 3 })
	waitFor(t, "10 more checks", func() bool { return f.count(b) >= start+20 })
	e := events()
	if len(e) != 3 || !e[0].up || e[1].up || !e[2].up {
		t.Fatalf("events %+v, want up (added), down, up", e)
	}
	// Counted from the log, which the check's own goroutine writes: every
	// check before failing was set passed, so down came at exactly the
	// fall-th failure, and up at exactly the rise-th pass after it.
	downC, downF := logCounts(t, logs.String(), "down")
	upC, upF := logCounts(t, logs.String(), "up")
	if downF != 3 {
		t.Errorf("down after %d failures, want fall = 3", downF)
	}
	if passes := (upC - downC) - (upF - downF); passes != 2 {
		t.Errorf("up after %d passes, want rise = 2", passes)
	}
	if n := strings.Count(logs.String(), "msg=\"backend down\""); n != 1 {
		t.Errorf("%d 'backend down' log lines, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "msg=\"backend up\""); n != 1 {
		t.Errorf("%d 'backend up' log lines, want 1:\n%s", n, logs.String())
	}
	for _, key := range []string{"service=192.0.2.10:80", "backend=10.0.0.1:80", "check=tcp", "err=\"connection refused\""} {
		if !strings.Contains(logs.String(), key) {
			t.Errorf("log lacks %s:\n%s", key, logs.String())
		}
	}
}

// TestRunnerSet: Set adds, removes and restarts targets; a removed
// backend's checks stop: at most the one its goroutine was starting, and
// that one with its context already cancelled.
func TestRunnerSet(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")
	var removed atomic.Bool
	var live atomic.Int64 // checks of b after its removal with a live context
	f := &fakeChecks{calls: map[netip.AddrPort]int{}, fn: map[netip.AddrPort]func(context.Context, int) error{
		a: func(context.Context, int) error { return nil },
		b: func(ctx context.Context, _ int) error {
			if removed.Load() && ctx.Err() == nil {
				live.Add(1)
			}
			return nil
		},
	}}
	r := New(Options{NewChecker: f.newChecker})
	defer r.Close()
	c := Check{Kind: TCP, Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond, Rise: 1, Fall: 1}
	r.Set([]Target{{Service: svc, Backend: a, Check: c}, {Service: svc, Backend: b, Check: c}})
	waitFor(t, "both checked", func() bool { return f.count(a) > 2 && f.count(b) > 2 })
	r.Set([]Target{{Service: svc, Backend: a, Check: c}})
	removed.Store(true)
	nb := f.count(b)
	if st := r.Status(); len(st) != 1 || st[0].Backend != a {
		t.Fatalf("status %+v, want only %s", st, a)
	}
	na := f.count(a)
	waitFor(t, "a checked 20 more times", func() bool { return f.count(a) >= na+20 })
	if d := f.count(b) - nb; d > 1 {
		t.Errorf("removed backend checked %d more times, want at most the one in flight", d)
	}
	if n := live.Load(); n != 0 {
		t.Errorf("%d checks of the removed backend with a live context", n)
	}
	// A changed check restarts the target: a fresh state.
	c2 := c
	c2.Rise = 2
	r.Set([]Target{{Service: svc, Backend: a, Check: c2}})
	if st := r.Status(); len(st) != 1 || st[0].Checks > 1 {
		t.Errorf("status after a changed check %+v, want a fresh state", st)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTextLogger(w *syncBuf) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// TestRunnerStartDown: a target added down is reported down first and
// comes up after rise passes, not before.
func TestRunnerStartDown(t *testing.T) {
	b := netip.MustParseAddrPort("10.0.0.1:80")
	f := &fakeChecks{calls: map[netip.AddrPort]int{}, fn: map[netip.AddrPort]func(context.Context, int) error{
		b: func(context.Context, int) error { return nil },
	}}
	var mu sync.Mutex
	var got []bool
	var logs syncBuf
	r := New(Options{NewChecker: f.newChecker, Log: newTextLogger(&logs), OnHealth: ObserverFunc(func(_, _ netip.AddrPort, up bool) {
		mu.Lock()
		got = append(got, up)
		mu.Unlock()
	})})
	defer r.Close()
	r.Set([]Target{{Service: svc, Backend: b, Check: Check{Kind: TCP, Interval: 5 * time.Millisecond, Timeout: 5 * time.Millisecond, Rise: 3, Fall: 1}, StartDown: true}})
	waitFor(t, "up", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 })
	mu.Lock()
	defer mu.Unlock()
	if got[0] || !got[1] {
		t.Errorf("events %v, want down (added), then up", got)
	}
	if c, _ := logCounts(t, logs.String(), "up"); c != 3 {
		t.Errorf("up at check %d, want the 3rd (rise)", c)
	}
}

var countsRE = regexp.MustCompile(`msg="backend (down|up)".* checks=(\d+) failed=(\d+)`)

// logCounts are the checks and failed counts of the one log line of the
// event (down or up).
func logCounts(t *testing.T, log, event string) (checks, failed int) {
	t.Helper()
	n := 0
	for _, m := range countsRE.FindAllStringSubmatch(log, -1) {
		if m[1] == event {
			checks, _ = strconv.Atoi(m[2])
			failed, _ = strconv.Atoi(m[3])
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d %q lines in the log, want 1:\n%s", n, event, log)
	}
	return checks, failed
}

// TestCommandLeavesNothing: a check command's exit status is its verdict,
// and nothing it started outlives the check. A command that backgrounds a
// child (which inherits its output pipe, or not) and exits 0 is up, and
// the child is gone once the check returns; the daemon's NOTIFY_SOCKET
// (the service manager's readiness socket) is not the command's to use.
// Repeated, the checks leave no file descriptor and no child behind.
func TestCommandLeavesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	dir := t.TempDir()
	script := func(name, body string) []string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return []string{p}
	}
	pidFile := filepath.Join(dir, "child.pid")
	for _, tc := range []struct {
		name string
		argv []string
	}{
		{"child holds the output pipe", script("pipe.sh", "sleep 300 & echo $! >"+pidFile+"; exit 0")},
		{"child detached from the output", script("quiet.sh", "sleep 300 >/dev/null 2>&1 & echo $! >"+pidFile+"; exit 0")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(pidFile)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := (commandChecker{argv: tc.argv}).Check(ctx, svc, netip.MustParseAddrPort("10.0.0.1:80")); err != nil {
				t.Errorf("down: %v (the command exited 0)", err)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid := strings.TrimSpace(string(b))
			// Killed, the orphan is reaped by init: poll (bounded
			// generously; nothing asserts how long it took). A zombie is
			// dead too: the VM's init (tools/vmtest) reaps no orphans.
			for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				st, err := os.ReadFile("/proc/" + pid + "/stat")
				if err != nil {
					return
				}
				if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && (st[i+2] == 'Z' || st[i+2] == 'X') {
					return
				}
			}
			n, _ := strconv.Atoi(pid)
			syscall.Kill(n, syscall.SIGKILL)
			t.Errorf("the command's child %s still runs after the check", pid)
		})
	}
	t.Run("no NOTIFY_SOCKET", func(t *testing.T) {
		err := (commandChecker{argv: script("env.sh", `[ -z "$NOTIFY_SOCKET" ] || { echo "NOTIFY_SOCKET=$NOTIFY_SOCKET"; exit 1; }`)}).Check(
			context.Background(), svc, netip.MustParseAddrPort("10.0.0.1:80"))
		if err != nil {
			t.Errorf("the command saw the daemon's readiness socket: %v", err)
		}
	})
	t.Run("repeated", func(t *testing.T) {
		fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
		before := fds()
		argv := script("ok.sh", "echo ok")
		for i := 0; i < 200; i++ {
			if err := (commandChecker{argv: argv}).Check(context.Background(), svc, netip.MustParseAddrPort("10.0.0.1:80")); err != nil {
				t.Fatal(err)
			}
		}
		if after := fds(); after > before+2 {
			t.Errorf("%d file descriptors open after 200 checks, %d before", after, before)
		}
		// No zombie children: wait4 on any child finds none.
		if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); err != syscall.ECHILD {
			t.Errorf("wait4: pid %d, err %v: a child left unreaped", pid, err)
		}
	})
}

// TestHTTPCheckBoundsTheAnswer: what a backend answers a check is read
// only as far as the verdict needs. A response header block of 1 MiB (a
// hostile or broken backend; Go's client default allows 10 MiB per
// check, per backend, at once) fails the check at MaxResponseHeader; a
// body that never ends does not hold the check past the first 4 KiB.
func TestHTTPCheckBoundsTheAnswer(t *testing.T) {
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 256; i++ {
			w.Header().Set("X-Pad-"+strconv.Itoa(i), strings.Repeat("p", 4096))
		}
		w.WriteHeader(200)
	}))
	defer big.Close()
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		buf := make([]byte, 64<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer endless.Close()
	for _, tc := range []struct {
		name   string
		srv    *httptest.Server
		errHas string
	}{
		{"1 MiB of headers", big, "header"},
		{"endless body", endless, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseCheck("http,interval=30s,timeout=20s")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
			defer cancel()
			err = NewChecker(c).Check(ctx, svc, listenAddr(t, tc.srv.Listener.Addr()))
			switch {
			case tc.errHas == "" && err != nil:
				t.Errorf("down: %v", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Errorf("err %v, want one with %q", err, tc.errHas)
			}
		})
	}
}

// TestRunnerSpreadsChecks: backends added together are not checked in
// lockstep forever. Their first checks run at once (a new backend's
// verdict comes quickly); after that each backend keeps its own phase in
// the interval, from its key, so 200 command checks are not 200 forks in
// the same instant every interval. Measured: the steady-state check
// times of 40 backends, modulo the interval, cover most of it (in
// lockstep they fall within the scheduling noise of one instant).
func TestRunnerSpreadsChecks(t *testing.T) {
	const n = 40
	interval := 400 * time.Millisecond
	var mu sync.Mutex
	second := map[netip.AddrPort]time.Time{} // each backend's 2nd check
	calls := map[netip.AddrPort]int{}
	r := New(Options{NewChecker: func(Check) Checker {
		return CheckerFunc(func(_ context.Context, _, b netip.AddrPort) error {
			mu.Lock()
			defer mu.Unlock()
			calls[b]++
			if calls[b] == 2 {
				second[b] = time.Now()
			}
			return nil
		})
	}})
	defer r.Close()
	var ts []Target
	for i := range n {
		b := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 80)
		ts = append(ts, Target{Service: svc, Backend: b, Check: Check{Kind: TCP, Interval: interval, Timeout: 10 * time.Millisecond, Rise: 1, Fall: 1}})
	}
	start := time.Now()
	r.Set(ts)
	waitFor(t, "every backend checked twice", func() bool { mu.Lock(); defer mu.Unlock(); return len(second) == n })
	mu.Lock()
	defer mu.Unlock()
	// Phases in tenths of the interval: how many tenths hold a check.
	var tenths [10]bool
	for _, at := range second {
		tenths[int(at.Sub(start)%interval*10/interval)] = true
	}
	used := 0
	for _, u := range tenths {
		if u {
			used++
		}
	}
	if used < 5 {
		t.Errorf("the second checks of %d backends fall in %d tenths of the interval, want them spread (at least 5)", n, used)
	}
	if want := phase(Key{svc, ts[0].Backend}, interval); want != phase(Key{svc, ts[0].Backend}, interval) || want >= interval {
		t.Errorf("phase %v: want a fixed offset below the interval", want)
	}
}
