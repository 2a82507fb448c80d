package loader_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

// healthDaemon runs tandem up in h and returns its log (read it under
// the returned function, which copies it).
func healthDaemon(t *testing.T, h *lab.Host, args ...string) func() string {
	t.Helper()
	_, read := healthDaemonCmd(t, h, args...)
	return read
}

// healthDaemonCmd is healthDaemon that also returns the daemon's command,
// for a test that stops it.
func healthDaemonCmd(t *testing.T, h *lab.Host, args ...string) (*exec.Cmd, func() string) {
	t.Helper()
	var log bytes.Buffer
	var mu sync.Mutex
	cmd := h.Cmd(testenv.Tandem(t), append([]string{"up", "--bpffs", h.BPFFS()}, args...)...)
	w := writerFunc(func(b []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return log.Write(b) })
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	read := func() string { mu.Lock(); defer mu.Unlock(); return log.String() }
	// Loading the SYN proxy alone takes about 20 s in the TCG VM, and
	// over 30 s on the shared 2-core host when others' builds run.
	bound := min(max(60, 30*time.Duration(scaleOf())), 180) * time.Second
	for deadline := time.Now().Add(bound); !strings.Contains(read(), "daemon running"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon on %s not running after %s:\n%s", h.Name, bound, read())
		}
	}
	return cmd, read
}

// healthOf reads service list --json on h: the backends' health by
// backend address.
func healthOf(t *testing.T, h *lab.Host, stateDir string) map[string]health.BackendStatus {
	t.Helper()
	r := mustTandem(t, h, "service", "list", "--json", "--bpffs", h.BPFFS(), "--state-dir", stateDir)
	var svcs []struct {
		Health []health.BackendStatus `json:"health"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &svcs); err != nil {
		t.Fatalf("service list --json: %v\n%s", err, r.stdout)
	}
	out := map[string]health.BackendStatus{}
	for _, s := range svcs {
		for _, b := range s.Health {
			out[b.Backend.Addr().String()] = b
		}
	}
	return out
}

// httpBackend serves GET /healthz (200) on h's 8080 until stop.
func httpBackend(t *testing.T, h *lab.Host) (stop func()) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(ln)
	var once sync.Once
	stop = func() { once.Do(func() { srv.Close() }) }
	t.Cleanup(stop)
	return stop
}

// scaleOf is TANDEM_TEST_SCALE (testScale without its log line).
func scaleOf() int {
	if s, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE")); err == nil && s > 1 {
		return s
	}
	return 1
}

var healthEventRE = regexp.MustCompile(`msg="backend (down|up)".*backend=(\S+).*checks=(\d+) failed=(\d+)`)

type healthEvent struct {
	up             bool
	backend        string
	checks, failed int
}

func healthEvents(log string) []healthEvent {
	var out []healthEvent
	for _, m := range healthEventRE.FindAllStringSubmatch(log, -1) {
		c, _ := strconv.Atoi(m[3])
		f, _ := strconv.Atoi(m[4])
		out = append(out, healthEvent{up: m[1] == "up", backend: m[2], checks: c, failed: f})
	}
	return out
}

// TestHealthChecksPair: three backends behind a service with an HTTP
// check (fall 3, rise 2) on a gateway pair. One backend's server is
// killed: the owner marks it down at the fall-th failed check, no sooner
// and no later (so within fall x interval of the kill, plus the check in
// flight), logs it once, and the standby (which cannot reach any backend:
// its own checks all fail) uses the owner's replicated verdicts: that
// backend down, the others up. The server comes back: up after rise
// passes, logged once, replicated.
func TestHealthChecksPair(t *testing.T) {
	testenv.RequireRoot(t)
	be := func(n int) lab.HostSpec {
		return lab.HostSpec{Name: fmt.Sprintf("be%d", n), Routes: []string{fmt.Sprintf("default via 10.79.%d.1", n+1)}}
	}
	link := func(n int) lab.LinkSpec {
		return lab.LinkSpec{
			A: lab.End{Host: "gw", Iface: fmt.Sprintf("be%d", n), Addrs: []string{fmt.Sprintf("10.79.%d.1/24", n+1)}},
			B: lab.End{Host: fmt.Sprintf("be%d", n), Iface: "eth0", Addrs: []string{fmt.Sprintf("10.79.%d.2/24", n+1)}}}
	}
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "gw", Forward: true}, {Name: "gw2"}, be(1), be(2), be(3)},
		Links: []lab.LinkSpec{link(1), link(2), link(3),
			{A: lab.End{Host: "gw", Iface: "sync0", Addrs: []string{"10.79.9.1/24"}}, B: lab.End{Host: "gw2", Iface: "sync0", Addrs: []string{"10.79.9.2/24"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	gw, gw2 := l.Host("gw"), l.Host("gw2")
	t.Cleanup(func() {
		tandem(t, gw, "down", "--bpffs", gw.BPFFS())
		tandem(t, gw2, "down", "--bpffs", gw2.BPFFS())
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	stops := []func(){httpBackend(t, l.Host("be1")), httpBackend(t, l.Host("be2")), httpBackend(t, l.Host("be3"))}
	certs := t.TempDir()
	if err := syncer.MakeCerts(certs, map[string][]net.IP{"a": {net.IPv4(10, 79, 9, 1)}, "b": {net.IPv4(10, 79, 9, 2)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "cookie.key")
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	const fall, rise = 3, 2
	// The interval is short for the test's sake (the bounds are counted
	// in checks, never timed), the timeout long enough that a healthy
	// backend never fails a check on a loaded machine (an HTTP GET takes
	// over 150 ms in the TCG VM): a flapping verdict fails the test.
	scale := time.Duration(testScale(t))
	common := []string{"--proxy-secret", secret, "--sync-certs", certs,
		"--service", "10.79.0.100:80=10.79.2.2:8080,10.79.3.2:8080,10.79.4.2:8080",
		"--health-check", fmt.Sprintf("10.79.0.100:80=http,path=/healthz,interval=%s,timeout=%s,fall=%d,rise=%d",
			500*time.Millisecond*scale, 400*time.Millisecond*scale, fall, rise)}
	dir, dir2 := t.TempDir(), t.TempDir()
	healthDaemon(t, gw2, append([]string{"--proxy-iface", "sync0", "--sync-role", "standby", "--sync-listen", "10.79.9.2:7400",
		"--sync-name", "b", "--state-dir", dir2}, common...)...)
	log := healthDaemon(t, gw, append([]string{"--proxy-iface", "be1,be2,be3", "--sync-role", "primary", "--sync-peer", "10.79.9.2:7400",
		"--sync-name", "a", "--state-dir", dir}, common...)...)

	wait := func(what string, h *lab.Host, stateDir string, want func(map[string]health.BackendStatus) bool) map[string]health.BackendStatus {
		t.Helper()
		var got map[string]health.BackendStatus
		for deadline := time.Now().Add(min(20*scale, 120) * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got = healthOf(t, h, stateDir)
			if want(got) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v\nowner's log:\n%s", what, got, log())
			}
		}
	}
	verdicts := func(want string, source string) func(map[string]health.BackendStatus) bool {
		return func(m map[string]health.BackendStatus) bool {
			for i, a := range []string{"10.79.2.2", "10.79.3.2", "10.79.4.2"} {
				b, ok := m[a]
				if !ok || b.Up != (want[i] == 'U') || b.Source != source || b.Checks == 0 {
					return false
				}
			}
			return true
		}
	}
	wait("owner: all up from its checks", gw, dir, verdicts("UUU", health.SourceOwn))
	// The standby's own checks all fail (it has no route to the
	// backends), yet it uses the owner's verdicts.
	wait("standby: all up from the owner, all down by its own checks", gw2, dir2, func(m map[string]health.BackendStatus) bool {
		for _, b := range m {
			if b.OwnUp {
				return false
			}
		}
		return verdicts("UUU", health.SourceOwner)(m)
	})

	stops[1]() // be2's server goes
	st := wait("owner: be2 down", gw, dir, verdicts("UDU", health.SourceOwn))
	if !strings.Contains(st["10.79.3.2"].LastError, "refused") {
		t.Errorf("be2's last error %q, want a refused connection", st["10.79.3.2"].LastError)
	}
	wait("standby: be2 down from the owner", gw2, dir2, verdicts("UDU", health.SourceOwner))
	ev := healthEvents(log())
	if len(ev) != 1 || ev[0].up || ev[0].backend != "10.79.3.2:8080" {
		t.Fatalf("events %+v, want one: be2 down", ev)
	}
	// Every check before the kill passed, so the failures the event
	// counts are all since the kill: down came at the fall-th.
	if ev[0].failed != fall {
		t.Errorf("down after %d failed checks, want fall = %d", ev[0].failed, fall)
	}

	// be2 comes back.
	stops[1] = httpBackend(t, l.Host("be2"))
	wait("owner: be2 up again", gw, dir, verdicts("UUU", health.SourceOwn))
	wait("standby: be2 up from the owner", gw2, dir2, verdicts("UUU", health.SourceOwner))
	ev = healthEvents(log())
	if len(ev) != 2 || !ev[1].up || ev[1].backend != "10.79.3.2:8080" {
		t.Fatalf("events %+v, want be2 down then up", ev)
	}
	// Checks while down: the failures, then rise passes.
	if passes := (ev[1].checks - ev[0].checks) - (ev[1].failed - ev[0].failed); passes != rise {
		t.Errorf("up after %d passes, want rise = %d", passes, rise)
	}
	if n := strings.Count(log(), `msg="backend down"`); n != 1 {
		t.Errorf("%d 'backend down' lines, want 1", n)
	}
	t.Logf("standby's service list:\n%s", mustTandem(t, gw2, "service", "list", "--bpffs", gw2.BPFFS(), "--state-dir", dir2).stdout)
}
