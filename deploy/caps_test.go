package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestUnitCapabilities: the daemon runs with exactly the unit's
// CapabilityBoundingSet and NoNewPrivileges (setpriv does what systemd
// would): it attaches, takes the VIPs, announces them and keeps its
// datapath checked without a warning. Each capability the unit's
// comments justify by a failure is needed: without it, that failure.
func TestUnitCapabilities(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.RequireCommand(t, "setpriv")
	testenv.RequireCommand(t, "nsenter")
	unit, err := os.ReadFile("tandem.service")
	if err != nil {
		t.Fatal(err)
	}
	var set []string
	for _, c := range strings.Fields(unitDirectives(t, unit)["CapabilityBoundingSet"]) {
		set = append(set, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	l, err := lab.New(lab.Spec{
		Hosts: []lab.HostSpec{{Name: "gw"}, {Name: "peer"}},
		Links: []lab.LinkSpec{{A: lab.End{Host: "gw", Iface: "eth0", Addrs: []string{"10.78.0.1/24"}}, B: lab.End{Host: "peer", Iface: "eth0", Addrs: []string{"10.78.0.2/24"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := l.Host("gw")
	bin := testenv.Tandem(t)
	t.Cleanup(func() {
		exec.Command("nsenter", "--net=/run/netns/"+gw.NS, bin, "down", "--bpffs", gw.BPFFS()).Run()
		l.Close()
	})
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		drop string // a capability left out; "": the unit's set
		want string // what the daemon then logs
	}{
		{"", ""},
		{"sys_admin", "get program by id: operation not permitted"},
		{"net_raw", "packet socket on eth0: operation not permitted"},
	} {
		name := "the unit's set"
		if tc.drop != "" {
			name = "without " + tc.drop
		}
		t.Run(name, func(t *testing.T) {
			caps := "-all"
			for _, c := range set {
				if c != tc.drop {
					caps += ",+" + c
				}
			}
			state := filepath.Join(t.TempDir(), "state")
			cmd := exec.Command("nsenter", "--net=/run/netns/"+gw.NS, setpriv, "--bounding-set", caps, "--inh-caps=-all", "--no-new-privs",
				bin, "up", "-i", "eth0", "--vip", "10.78.0.100", "--bpffs", gw.BPFFS(), "--state-dir", state, "--check-interval", "100ms",
				"--vip-addr", "10.78.0.5/32@eth0", "--vip-peer", "10.78.0.2:17401", "--vip-peer-name", "peer", "--vip-listen", "10.78.0.1:17401",
				"--vip-secret", secret, "--vip-interval", "50ms", "--control-group", "root")
			var log syncLog
			cmd.Stdout, cmd.Stderr = &log, &log
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			defer func() {
				cmd.Process.Signal(os.Interrupt)
				<-done
				exec.Command("nsenter", "--net=/run/netns/"+gw.NS, bin, "down", "--bpffs", gw.BPFFS()).Run()
				exec.Command("ip", "-n", gw.NS, "addr", "del", "10.78.0.5/32", "dev", "eth0").Run()
				if t.Failed() {
					t.Logf("daemon log:\n%s", log.String())
				}
			}()
			wait := func(what string) {
				t.Helper()
				deadline := time.Now().Add(30 * time.Second)
				for !strings.Contains(log.String(), what) {
					select {
					case <-done:
						t.Fatalf("the daemon exited before logging %q", what)
					default:
					}
					if time.Now().After(deadline) {
						t.Fatalf("no %q in the daemon's log", what)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			if tc.want != "" {
				wait(tc.want)
				return
			}
			wait("took the VIPs")
			// The log has no line per check: give the datapath check
			// (every 100 ms) and the takeover's announces (the first
			// within 300 ms) a second to fail, as they do at once
			// without sys_admin or net_raw (the cases below).
			time.Sleep(time.Second)
			for _, line := range strings.Split(log.String(), "\n") {
				if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
					t.Errorf("with the unit's capabilities: %s", line)
				}
			}
		})
	}
}
