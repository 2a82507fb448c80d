package loader_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/tools/testenv"
)

// TestUpOnceRefusesPrivateMount: ip netns exec gives tandem a mount
// namespace with a /sys of its own, where bpffs is not mounted; up --once
// would mount it there and the pins, and the datapath, would vanish with
// the command. It refuses in one line that names the nsenter form, exits
// 1 and leaves nothing behind; the nsenter form works.
func TestUpOnceRefusesPrivateMount(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	testenv.RequireCommand(t, "ip")
	args := []string{"up", "--once", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--state-dir", stateDir(t)}
	cmd := exec.Command("ip", append([]string{"netns", "exec", gw.NS, testenv.Tandem(t)}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("ip netns exec tandem up --once: %v, want exit 1\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	msg := strings.TrimSuffix(stderr.String(), "\n")
	if strings.Contains(msg, "\n") {
		t.Errorf("the refusal is not one line:\n%s", msg)
	}
	for _, want := range []string{"not the host's", "ip netns exec", "nsenter --net=/run/netns/" + gw.NS + " tandem up", "mount -t bpf bpf /sys/fs/bpf"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, msg)
		}
	}
	// Nothing behind: no program on the interface, no pin root.
	if out, _ := gw.Cmd("ip", "-d", "link", "show", "eth0").CombinedOutput(); bytes.Contains(out, []byte("xdp")) {
		t.Errorf("eth0 carries an XDP program after the refusal:\n%s", out)
	}
	if out, _ := gw.Cmd("tc", "filter", "show", "dev", "eth0", "ingress").CombinedOutput(); len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("eth0 has a TC filter after the refusal:\n%s", out)
	}
	if _, err := os.Stat(gw.BPFFS()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pin root %s exists after the refusal (%v)", gw.BPFFS(), err)
	}

	// The form the refusal names: only the network namespace entered.
	mustTandem(t, gw, args...)
	st := status(t, gw)
	attached := false
	for _, a := range st.Attachments {
		if a.Iface == "eth0" && a.Hook == "xdp" && a.Problem == "" {
			attached = true
		}
	}
	if !attached {
		t.Errorf("after nsenter --net tandem up --once, no working XDP attachment on eth0: %+v", st.Attachments)
	}
}

// TestUpDaemonWarnsPrivateMount: the daemon, run through ip netns exec,
// holds the datapath while it runs (its mount namespace lives as long as
// it does), so it starts, but warns that the datapath goes with it.
func TestUpDaemonWarnsPrivateMount(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	cmd := exec.Command("ip", "netns", "exec", gw.NS, testenv.Tandem(t), "up", "-i", "eth0", "--vip", vip4.String(),
		"--bpffs", gw.BPFFS(), "--state-dir", stateDir(t), "--log-format", "json")
	var log lockedLog
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		<-done
	}()
	for !strings.Contains(log.String(), "daemon running") {
		select {
		case <-done:
			t.Fatalf("the daemon exited:\n%s", log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	warned := false
	for _, e := range jsonEventsAt(t, "daemon", log.String(), "WARN") {
		if e["event"] == "private_mount" && strings.Contains(e["msg"].(string), "the datapath goes with this daemon") &&
			strings.Contains(e["msg"].(string), "nsenter --net=/run/netns/"+gw.NS) {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no private_mount warning naming the nsenter form:\n%s", log.String())
	}
}
