package loader_test

// The daemon's lifecycle: down under a running daemon, maps replaced under
// it, a failed start rolled back, a second up with other daemon options,
// two daemons on one state directory, and who may use the control socket.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	tdaemon "github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

// stateDir is a daemon state directory under a parent every user may
// traverse (t.TempDir's are 0700: an unprivileged caller would be stopped
// there, whatever the daemon does).
func stateDir(t *testing.T) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "tandem-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(parent, "state")
}

func pinsOf(h *lab.Host) maps.Pins { return maps.Pins{Root: h.BPFFS()} }

// exited waits for a daemon started by daemon() to exit; false if it still
// runs after the bound.
func exited(cmd *exec.Cmd, bound time.Duration) bool {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(bound):
		return false
	}
}

// TestDownStopsDaemon: down under a running daemon stops the daemon first
// (says so, the daemon exits), then removes everything: the daemon does not
// put the datapath back.
func TestDownStopsDaemon(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	d := daemon(t, gw, "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--state-dir", stateDir(t))
	last := status(t, gw)
	r := mustTandem(t, gw, "down", "--bpffs", gw.BPFFS())
	if want := fmt.Sprintf("stopping the tandem daemon (pid %d)", d.Process.Pid); !strings.Contains(r.stdout, want) {
		t.Errorf("down does not say %q:\n%s", want, r.stdout)
	}
	if !exited(d, 20*time.Second) {
		t.Fatalf("the daemon still runs after down")
	}
	if !d.ProcessState.Success() {
		t.Errorf("the daemon stopped by down exited with %v", d.ProcessState)
	}
	if _, err := os.Stat(gw.BPFFS()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after down, %s exists (the daemon put the datapath back?)", gw.BPFFS())
	}
	assertClean(t, gw, "eth0", last)
}

// electionArgs runs the election on gw's eth0 with a peer that never
// answers: the daemon becomes the owner on its own.
func electionArgs(t *testing.T, gw *lab.Host, state string) []string {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"-i", "eth0", "--bpffs", gw.BPFFS(), "--state-dir", state,
		"--vip-addr", "10.77.9.1/32@eth0", "--vip-peer", "127.0.0.1:17401", "--vip-peer-name", "peer", "--vip-listen", "127.0.0.1:17402",
		"--vip-secret", secret, "--vip-interval", "50ms"}
}

// waitOwner waits until the daemon's election says it owns the VIPs.
func waitOwner(t *testing.T, gw *lab.Host, state string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := tandem(t, gw, "vip", "--json", "--state-dir", state)
		var st struct{ Owner bool }
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &st) == nil && st.Owner {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not become owner: exit %d %s%s", r.code, r.stdout, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// gateOwned reads the pinned VIP gate's entry for addr: present, owned.
func gateOwned(t *testing.T, gw *lab.Host, addr string) (bool, bool) {
	t.Helper()
	r := mustTandem(t, gw, "dump", "vip_gate", "--json", "--bpffs", gw.BPFFS())
	var recs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil {
		t.Fatalf("dump vip_gate: %v\n%s", err, r.stdout)
	}
	for _, rec := range recs {
		if rec["vip"] == addr {
			return true, rec["owned"] == true || rec["owned"] == float64(1)
		}
	}
	return false, false
}

// TestDaemonFollowsReplacedMaps: the VIP gate is unpinned and a second
// up pins a new one under the running daemon; the daemon moves its handles
// to the pinned map, so its ownership shows there (it never keeps writing
// into a map no program uses).
func TestDaemonFollowsReplacedMaps(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	state := stateDir(t)
	daemon(t, gw, electionArgs(t, gw, state)...)
	waitOwner(t, gw, state)
	if have, owned := gateOwned(t, gw, "10.77.9.1"); !have || !owned {
		t.Fatalf("owner's gate: entry %v owned %v", have, owned)
	}
	before, err := loader.PinnedMapIDs(pinsOf(gw))
	if err != nil {
		t.Fatal(err)
	}
	// Replace the gate map under the daemon: unpin it, and let another up
	// (no election: it writes no entry for the VIP) pin a new one.
	if err := os.Remove(filepath.Join(gw.BPFFS(), "maps", "vip_gate")); err != nil {
		t.Fatal(err)
	}
	mustTandem(t, gw, "up", "--once", "-i", "eth0", "--bpffs", gw.BPFFS())
	after, err := loader.PinnedMapIDs(pinsOf(gw))
	if err != nil {
		t.Fatal(err)
	}
	if before["vip_gate"] == after["vip_gate"] {
		t.Fatalf("vip_gate was not replaced (id %d)", after["vip_gate"])
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		have, owned := gateOwned(t, gw, "10.77.9.1")
		if have && owned {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pinned gate (map %d) never got the owner's entry (entry %v owned %v): the daemon writes into the old map", after["vip_gate"], have, owned)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestUpRollsBack: an up whose daemon cannot start exits 1; on a fresh
// root it leaves nothing attached or pinned; a datapath that ran before
// keeps running with the same links.
func TestUpRollsBack(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	root := gw.BPFFS()
	// A port in use in the gateway's namespace: the metrics endpoint
	// fails after up attached (no preflight can see it).
	var busy net.Listener
	if err := gw.Do(func() (err error) { busy, err = net.Listen("tcp", "127.0.0.1:0"); return }); err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	base := []string{"up", "-i", "eth0", "--bpffs", root, "--check-interval", "100ms"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"standby without certificates", []string{"--sync-role", "standby", "--sync-listen", "127.0.0.1:7400", "--sync-certs", t.TempDir() + "/none", "--sync-name", "gw"}, "tandem certs"},
		{"metrics address in use", []string{"--metrics-addr", busy.Addr().String()}, "address already in use"},
		{"shared state directory", []string{"--state-dir", os.TempDir()}, "shared directory"},
		{"missing election secret", []string{"--vip-addr", "10.77.9.1/32@eth0", "--vip-peer", "127.0.0.1:17401", "--vip-secret", "/nonexistent/secret"}, "secret"},
	}
	for _, before := range []string{"nothing up", "datapath up"} {
		for _, c := range cases {
			t.Run(before+"/"+c.name, func(t *testing.T) {
				var st *loader.Status
				if before == "datapath up" {
					mustTandem(t, gw, "up", "--once", "-i", "eth0", "--bpffs", root)
					st = status(t, gw)
				}
				r := tandemBounded(t, gw, 30*time.Second, append(append(append([]string(nil), base...), "--state-dir", stateDir(t)), c.args...)...)
				if r.code != 1 || !strings.Contains(r.stderr, c.want) {
					t.Fatalf("exit %d, want 1 and an error saying %q\nstdout: %s\nstderr: %s", r.code, c.want, r.stdout, r.stderr)
				}
				if st == nil {
					if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("a failed up left %s behind", root)
					}
					out, _ := gw.Cmd("bpftool", "-j", "net", "show", "dev", "eth0").CombinedOutput()
					if strings.Contains(string(out), "vipgate") {
						t.Errorf("a failed up left a program attached: %s", out)
					}
					return
				}
				now := status(t, gw)
				if !now.Healthy() || len(now.Attachments) != len(st.Attachments) {
					t.Fatalf("the datapath that ran before is gone or broken: %+v", now.Attachments)
				}
				for i, a := range now.Attachments {
					if a.LinkID != st.Attachments[i].LinkID {
						t.Errorf("%s: link %d became %d", a.Pin, st.Attachments[i].LinkID, a.LinkID)
					}
				}
				mustTandem(t, gw, "down", "--bpffs", root)
			})
		}
	}
}

// tandemBounded runs tandem in h and kills it after bound: a command
// that should fail but starts a daemon must not hang the test.
func tandemBounded(t *testing.T, h *lab.Host, bound time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := h.Cmd(testenv.Tandem(t), args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return result{stdout: out.String(), stderr: errb.String() + "\n(still running: killed)", code: -1}
	}
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	}
	return r
}

// TestSecondUpDaemonOptions: a second up whose daemon options differ from
// the running daemon's is refused before it changes anything, naming the
// options; the same options apply the datapath and leave the daemon.
func TestSecondUpDaemonOptions(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	state := stateDir(t)
	args := []string{"up", "-i", "eth0", "--vip", vip4.String(), "--bpffs", gw.BPFFS(), "--state-dir", state}
	d := daemon(t, gw, args[1:]...)
	before := progIDs(status(t, gw))
	cases := []struct {
		name  string
		extra []string
		want  []string
	}{
		{"metrics", []string{"--metrics-addr", "127.0.0.1:19474"}, []string{"--metrics-addr"}},
		{"sync role", []string{"--sync-role", "standby", "--sync-listen", "127.0.0.1:17400"}, []string{"--sync-role", "--sync-listen"}},
		{"state dir", []string{"--state-dir", stateDir(t)}, []string{"--state-dir"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := tandemBounded(t, gw, 30*time.Second, append(append([]string(nil), args...), c.extra...)...)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			for _, w := range append(c.want, "restart", strconv.Itoa(d.Process.Pid)) {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not name %q: %s", w, r.stderr)
				}
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 {
				t.Errorf("error is %d lines, want one: %s", n+1, r.stderr)
			}
			for pin, id := range progIDs(status(t, gw)) {
				if before[pin] != id {
					t.Errorf("%s: program %d replaced by %d: a refused up changed the datapath", pin, before[pin], id)
				}
			}
		})
	}
	r := mustTandem(t, gw, args...)
	if !strings.Contains(r.stdout, "already serves") {
		t.Errorf("same options: %q", r.stdout)
	}
}

// TestStateDirLock: a second daemon with another root but the same state
// directory is refused before it attaches anything, naming the first.
func TestStateDirLock(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	state := stateDir(t)
	// A second interface for the second root (veth: this kernel may lack
	// the dummy driver).
	if err := gw.IP("link", "add", "sd0", "type", "veth", "peer", "name", "sd1"); err != nil {
		t.Fatal(err)
	}
	if err := gw.IP("link", "set", "sd0", "up"); err != nil {
		t.Fatal(err)
	}
	d := daemon(t, gw, "-i", "eth0", "--bpffs", gw.BPFFS(), "--state-dir", state)
	root2 := gw.BPFFS() + "-second"
	t.Cleanup(func() { tandem(t, gw, "down", "--bpffs", root2) })
	r := tandemBounded(t, gw, 30*time.Second, "up", "-i", "sd0", "--bpffs", root2, "--state-dir", state)
	want := fmt.Sprintf("belongs to the tandem daemon pid %d serving %s", d.Process.Pid, gw.BPFFS())
	if r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Fatalf("exit %d, want 1 and %q\nstdout: %s\nstderr: %s", r.code, want, r.stdout, r.stderr)
	}
	if _, err := os.Stat(root2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused daemon pinned under %s", root2)
	}
	info, err := tdaemon.ReadDaemonInfo(state)
	if err != nil || info.PID != d.Process.Pid {
		t.Errorf("the state lock no longer names the first daemon: %+v %v", info, err)
	}
}

// TestControlSocketPermissions: under umask 000 and a 0755 state
// directory, an unprivileged user cannot use tandem vip; root can; with
// --control-group a member can; and a caller that gets past the file
// modes is still refused by its credentials.
func TestControlSocketPermissions(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	group := "tandemtest"
	if _, err := user.LookupGroup(group); err != nil {
		if out, err := exec.Command("groupadd", group).CombinedOutput(); err != nil {
			t.Fatalf("groupadd %s: %v %s", group, err, out)
		}
		t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)

	// vip runs tandem vip as uid/gid 65534 (nobody) with extra groups, in
	// the root namespace: the socket is a path, reachable from anywhere.
	vip := func(state string, groups []uint32, action string) result {
		cmd := exec.Command(testenv.Tandem(t), "vip", action, "--state-dir", state)
		if groups != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
		}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		r := result{stdout: out.String(), stderr: errb.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		}
		return r
	}
	nobody, member := []uint32{}, []uint32{uint32(gid)}

	for _, withGroup := range []bool{false, true} {
		t.Run(fmt.Sprintf("control group %v", withGroup), func(t *testing.T) {
			state := stateDir(t)
			old := syscall.Umask(0)
			err := os.Mkdir(state, 0o755)
			args := electionArgs(t, gw, state)
			if withGroup {
				args = append(args, "--control-group", group)
			}
			var d *exec.Cmd
			if err == nil {
				d = daemon(t, gw, args...)
			}
			syscall.Umask(old)
			if err != nil {
				t.Fatal(err)
			}
			waitOwner(t, gw, state)

			for _, action := range []string{"status", "handover"} {
				r := vip(state, nobody, action)
				if r.code != 1 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, "control group") {
					t.Errorf("vip %s as nobody: exit %d, want 1 and a permission error\nstdout: %s\nstderr: %s", action, r.code, r.stdout, r.stderr)
				}
			}
			if r := vip(state, nil, "status"); r.code != 0 {
				t.Errorf("vip status as root: exit %d %s", r.code, r.stderr)
			}
			// Handover has no peer to hand to; root gets that far.
			if r := vip(state, nil, "handover"); strings.Contains(r.stderr, "permission denied") {
				t.Errorf("vip handover as root refused: %s", r.stderr)
			}
			if withGroup {
				if r := vip(state, member, "status"); r.code != 0 {
					t.Errorf("vip status as a member of %s: exit %d %s", group, r.code, r.stderr)
				}
			}
			// Open the file modes wide: the credentials check still refuses.
			os.Chmod(state, 0o777)
			os.Chmod(filepath.Join(state, "vip.sock"), 0o777)
			r := vip(state, nobody, "status")
			if r.code != 1 || !strings.Contains(r.stderr, "uid 65534") {
				t.Errorf("vip status as nobody past the file modes: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			d.Process.Signal(syscall.SIGTERM)
			exited(d, 20*time.Second)
		})
	}
}

// TestUpKeepsElectionGate: an up that swaps the programs in place under a
// running election daemon leaves the election's gate entries as they are:
// the owner's VIP never stops being served (before, up rewrote the gate
// to its --vip list and the daemon put the owner's entry back only at its
// next check).
func TestUpKeepsElectionGate(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	state := stateDir(t)
	args := append(electionArgs(t, gw, state), "--check-interval", "1h")
	daemon(t, gw, args...)
	waitOwner(t, gw, state)
	for i := 0; i < 3; i++ {
		r := mustTandem(t, gw, append([]string{"up", "--once"}, args...)...)
		if have, owned := gateOwned(t, gw, "10.77.9.1"); !have || !owned {
			t.Fatalf("after up --once #%d: the owner's gate entry: present %v owned %v; want both\n%s", i+1, have, owned, r.stdout)
		}
	}
}

// TestReloadKeepsElection: a SIGHUP whose new election cannot start (its
// advert listener is an address this host does not have; its peer's
// name does not resolve) keeps the running election: it still answers
// tandem vip and still owns the VIPs, and the failed reload shows in
// tandem vip. A config that works again clears it. (Before, the daemon
// stopped the old election first and ran on with none.)
func TestReloadKeepsElection(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	state := stateDir(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "tandem.toml")
	const goodListen, goodPeer = "127.0.0.1:17402", "127.0.0.1:17401"
	write := func(listen, peer string) {
		t.Helper()
		data := fmt.Sprintf(`interfaces = ["eth0"]
[election]
addrs = ["10.77.9.1/32@eth0"]
peers = [%q]
peer_name = "peer"
listen = %q
interval = "50ms"
secret_file = %q
`, peer, listen, secret)
		if err := os.WriteFile(conf, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(goodListen, goodPeer)
	d := daemon(t, gw, "--config", conf, "--bpffs", gw.BPFFS(), "--state-dir", state)
	waitOwner(t, gw, state)
	vipStatus := func() (map[string]any, result) {
		r := tandem(t, gw, "vip", "--json", "--state-dir", state)
		var st map[string]any
		if r.code == 0 {
			json.Unmarshal([]byte(r.stdout), &st)
		}
		return st, r
	}
	reload := func(want func(st map[string]any) bool, what string) map[string]any {
		t.Helper()
		if err := d.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, r := vipStatus()
			if r.code != 0 {
				t.Fatalf("after SIGHUP (%s), tandem vip: exit %d %s%s", what, r.code, r.stdout, r.stderr)
			}
			if want(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("after SIGHUP (%s): tandem vip says %s", what, r.stdout)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, c := range []struct {
		name, listen, peer, says string
	}{
		// 192.0.2.99 is on no interface of gw: the new listener cannot bind.
		{"listener cannot bind", "192.0.2.99:17402", goodPeer, "192.0.2.99:17402"},
		{"peer does not resolve", goodListen, "nosuch.invalid:17401", "nosuch.invalid"},
	} {
		t.Run(c.name, func(t *testing.T) {
			write(c.listen, c.peer)
			st := reload(func(st map[string]any) bool { return st["reload_error"] != nil }, c.name)
			if st["owner"] != true {
				t.Errorf("after a failed reload the election lost the VIPs: %v", st)
			}
			if msg, _ := st["reload_error"].(string); !strings.Contains(msg, c.says) {
				t.Errorf("reload_error %q does not name %q", msg, c.says)
			}
			if have, owned := gateOwned(t, gw, "10.77.9.1"); !have || !owned {
				t.Errorf("after a failed reload the gate entry: present %v owned %v; want both", have, owned)
			}
			r := tandem(t, gw, "vip", "--state-dir", state)
			if !strings.Contains(r.stdout, "reload") || !strings.Contains(r.stdout, c.says) {
				t.Errorf("tandem vip does not show the failed reload:\n%s", r.stdout)
			}
			write(goodListen, goodPeer)
			reload(func(st map[string]any) bool { return st["reload_error"] == nil && st["owner"] == true }, "the config fixed")
		})
	}
}
