package syncer_test

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifyListener is a service manager's end of $NOTIFY_SOCKET: every
// datagram the daemon sends, in order.
type notifyListener struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyListener{path: path, msgs: make(chan string, 256)}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// next waits for a datagram that contains want; it fails the test on one
// that contains refuse first (or on none in time).
func (n *notifyListener) next(t *testing.T, want, refuse string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed before %q", want)
			}
			t.Logf("sd_notify: %q", m)
			if refuse != "" && strings.Contains(m, refuse) {
				t.Fatalf("got %q before %q", m, want)
			}
			if strings.Contains(m, want) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %q on the notify socket within %s", want, timeout)
		}
	}
}

// events parses a --log-format json log: every line is a JSON object;
// those with an "event" key are returned in order.
func events(t *testing.T, host, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue // up's table of attachments on stdout
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("%s: a log line that is not JSON: %q: %v", host, line, err)
			continue
		}
		if _, ok := m["event"]; ok {
			out = append(out, m)
		}
	}
	return out
}

// find is the first event named ev whose keys all have the wanted values
// ("*": present and not empty).
func find(evs []map[string]any, ev string, keys map[string]string) map[string]any {
	for _, e := range evs {
		if e["event"] != ev || e["level"] != "INFO" {
			continue
		}
		ok := true
		for k, want := range keys {
			got, has := e[k]
			switch s, _ := got.(string); {
			case !has:
				ok = false
			case want == "*" && s == "" && got == nil:
				ok = false
			case want != "*" && s != want:
				ok = false
			}
		}
		if ok {
			return e
		}
	}
	return nil
}

// TestDaemonsReadyAndEventLog: a standby tells its service manager
// READY=1 only once the primary has connected and its resync is applied
// (STATUS= says what it waits for meanwhile), and both daemons' json logs
// carry the events an operator watches: attach, resync with its mode and
// why, the standby's readiness, and an overflow rescan naming the map.
func TestDaemonsReadyAndEventLog(t *testing.T) {
	p := newDaemonPair(t)
	n := listenNotify(t)
	p.env = map[string][]string{"b": {"NOTIFY_SOCKET=" + n.path}}
	p.start("b", "--log-format", "json")
	// No primary yet: the standby waits, and says so, not ready.
	n.next(t, "waiting for the primary to connect", "READY=1", 30*time.Second)
	select {
	case m := <-n.msgs:
		if strings.Contains(m, "READY=1") {
			t.Fatalf("READY=1 with no primary: %q", m)
		}
	case <-time.After(time.Second):
	}
	p.start("a", "--log-format", "json", "--sync-ring-bytes", "4096", "--sync-interval", "300ms")
	n.next(t, "READY=1", "", 60*time.Second)
	p.waitLog("a", `"event":"resync_done"`, 0, 30*time.Second)
	// A burst into 4 KiB rings overflows them: the map is sent whole.
	p.upsert(0, 20_000, 1)
	p.converge(60 * time.Second)
	p.waitLog("a", `"event":"rescan"`, 0, 30*time.Second)

	a, b := events(t, "a", p.procs["a"].log.String()), events(t, "b", p.procs["b"].log.String())
	for _, c := range []struct {
		host string
		evs  []map[string]any
		ev   string
		keys map[string]string
	}{
		{"a", a, "attach", map[string]string{"iface": "eth0", "hook": "*", "prog_id": "*"}},
		{"a", a, "resync", map[string]string{"mode": "full", "why": "*"}},
		{"a", a, "resync_done", map[string]string{"mode": "full", "why": "*"}},
		{"a", a, "rescan", map[string]string{"maps": "*"}},
		{"b", b, "attach", map[string]string{"iface": "eth0"}},
		{"b", b, "session_open", nil},
		{"b", b, "ready", map[string]string{"status": "*"}},
	} {
		if find(c.evs, c.ev, c.keys) == nil {
			t.Errorf("%s's json log has no info line with event=%s and keys %v; its events: %v", c.host, c.ev, c.keys, c.evs)
		}
	}
	if e := find(a, "rescan", nil); e != nil {
		if maps, _ := e["maps"].([]any); len(maps) == 0 || maps[0] != "sync_test" {
			t.Errorf("the rescan event names maps %v, want [sync_test]", e["maps"])
		}
	}
}
