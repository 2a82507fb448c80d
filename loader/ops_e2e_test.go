package loader_test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/tools/testenv"
)

// jsonEvents parses a --log-format json log: every line that starts like
// a JSON object must be one; those with an "event" key are returned.
func jsonEvents(t *testing.T, who, log string) []map[string]any {
	t.Helper()
	return jsonEventsAt(t, who, log, "INFO")
}

// jsonEventsAt is jsonEvents for the lines of one level.
func jsonEventsAt(t *testing.T, who, log, level string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(log, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue // up's table of attachments goes to stdout
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("%s: a log line that is not JSON: %q", who, line)
			continue
		}
		if m["event"] != nil && m["level"] == level {
			out = append(out, m)
		}
	}
	return out
}

func hasEvent(evs []map[string]any, ev string, keys ...string) bool {
	for _, e := range evs {
		if e["event"] != ev {
			continue
		}
		ok := true
		for _, k := range keys {
			if v, has := e[k]; !has || v == "" {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// TestEventLogFailover: the json logs of a gateway pair carry the
// election's state changes with stable keys: the first owner's takeover,
// the handover's release on one host and takeover on the other, and,
// after a restarted daemon adopts its datapath, the replace of each
// attachment (a fresh one is an attach).
func TestEventLogFailover(t *testing.T) {
	p := newPairLab(t)
	p.start(t, "a", "--log-format", "json")
	p.start(t, "b", "--log-format", "json")
	p.settled(t, "a", 30*time.Second)
	if r := tandem(t, p.gw["a"], "vip", "handover", "--state-dir", p.state["a"]); r.code != 0 {
		t.Fatalf("tandem vip handover: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	p.settled(t, "b", 10*time.Second)
	logA := p.daemons["a"].Log()
	p.daemons["a"].Kill()
	p.start(t, "a", "--log-format", "json") // adopts the pinned datapath
	logA2 := p.daemons["a"].Log()

	a, a2, b := jsonEvents(t, "gwa", logA), jsonEvents(t, "gwa restarted", logA2), jsonEvents(t, "gwb", p.daemons["b"].Log())
	for _, c := range []struct {
		who  string
		evs  []map[string]any
		ev   string
		keys []string
	}{
		{"gwa", a, "attach", []string{"iface", "hook", "via", "prog_id"}},
		{"gwa", a, "takeover", []string{"why", "took"}},
		{"gwa", a, "release", []string{"why"}},
		{"gwa", a, "role", []string{"primary"}},
		{"gwb", b, "takeover", []string{"why"}},
		{"gwa restarted", a2, "replace", []string{"iface", "hook", "prog_id"}},
	} {
		if !hasEvent(c.evs, c.ev, c.keys...) {
			t.Errorf("%s's json log has no info line with event=%s and keys %v; its events: %v", c.who, c.ev, c.keys, c.evs)
		}
	}
	if hasEvent(a2, "attach") {
		t.Errorf("the restarted daemon logged event=attach for an adopted attachment (want replace): %v", a2)
	}
}

// TestReadyAfterAttach: under a service manager (Type=notify) a daemon
// without state sync says READY=1 once its datapath is attached: when
// the datagram arrives, tandem status already shows the XDP attachment.
func TestReadyAfterAttach(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	sock := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cmd := gw.Cmd(testenv.Tandem(t), "up", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--state-dir", stateDir(t))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var log lockedLog
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var got []string
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no READY=1 (got %q): %v\ndaemon log:\n%s", got, err, log.String())
		}
		got = append(got, string(buf[:n]))
		if strings.Contains(string(buf[:n]), "READY=1") {
			break
		}
	}
	st := status(t, gw)
	attached := false
	for _, a := range st.Attachments {
		attached = attached || (a.Iface == "eth0" && a.Hook == "xdp" && a.Problem == "")
	}
	if !attached {
		t.Errorf("READY=1 before eth0's XDP attachment is in place: %+v", st.Attachments)
	}
	if !strings.Contains(got[len(got)-1], "STATUS=serving") {
		t.Errorf("READY=1 without a STATUS= saying it serves: %q", got)
	}
	// SIGHUP (systemctl reload): RELOADING=1 with the monotonic time the
	// reload began, then READY=1 once it is done.
	var before unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &before)
	cmd.Process.Signal(syscall.SIGHUP)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var reloading string
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after SIGHUP, no RELOADING=1 then READY=1 (got %q): %v\ndaemon log:\n%s", reloading, err, log.String())
		}
		m := string(buf[:n])
		if strings.Contains(m, "RELOADING=1") {
			reloading = m
			continue
		}
		if strings.Contains(m, "READY=1") {
			if reloading == "" {
				t.Fatalf("READY=1 after SIGHUP without RELOADING=1 first: %q", m)
			}
			break
		}
	}
	var usec int64
	for _, l := range strings.Split(reloading, "\n") {
		if v, ok := strings.CutPrefix(l, "MONOTONIC_USEC="); ok {
			usec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if from := before.Nano() / 1000; usec < from || usec > from+30_000_000 {
		t.Errorf("RELOADING=1's MONOTONIC_USEC=%d is not the monotonic time after the SIGHUP (%d): %q", usec, from, reloading)
	}
	// SIGTERM: STOPPING=1, and the datapath stays.
	cmd.Process.Signal(os.Interrupt)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no STOPPING=1 after SIGINT: %v", err)
		}
		if strings.Contains(string(buf[:n]), "STOPPING=1") {
			break
		}
	}
	cmd.Wait()
	stopped = true
}

// lockedLog is a daemon's output, written by its pipes' goroutines.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
