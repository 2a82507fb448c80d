package cli

// The daemon's lifecycle: what `up` checks before it touches the kernel,
// what it takes back when the daemon cannot start, how a second `up` and
// `down` deal with a running daemon, and how the daemon notices maps
// replaced under it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

// startError is a daemon that could not start: up takes back what it
// attached.
type startError struct{ err error }

func (e startError) Error() string { return e.err.Error() }
func (e startError) Unwrap() error { return e.err }

// upDaemon is up without --once: apply, then run the daemon, unless a
// daemon already serves the root.
func upDaemon(env Env, f *upFlags, o loader.Options) error {
	log := o.Log
	root := o.Pins.Root
	if err := loader.RequirePrivileges(); err != nil {
		return err
	}
	var unlockRoot func()
	defer func() {
		if unlockRoot != nil {
			unlockRoot()
		}
	}()
	if _, err := os.Stat(root); err == nil {
		u, err := loader.DaemonLock(root)
		if errors.Is(err, loader.ErrLocked) {
			return upUnderDaemon(env, o)
		}
		if err != nil {
			return err
		}
		unlockRoot = u
	}
	gid, err := controlGID(o.ControlGroup)
	if err != nil {
		return err
	}
	// Everything that can be checked without the kernel is checked before
	// anything is attached.
	if err := preflight(o); err != nil {
		return err
	}
	unlockState, err := loader.StateLock(loader.DaemonInfoOf(o), gid)
	if err != nil {
		return err
	}
	defer unlockState()
	res, err := applyUp(env, o)
	if err != nil {
		return err
	}
	if unlockRoot == nil {
		if unlockRoot, err = loader.DaemonLock(root); err != nil {
			// Another daemon started on this fresh root meanwhile: this
			// up applied the same datapath and leaves it to that one.
			if errors.Is(err, loader.ErrLocked) {
				fmt.Fprintf(env.Stdout, "a tandem daemon started on %s meanwhile; it carries on with the new programs\n", root)
				return nil
			}
			return err
		}
	}
	err = daemon(env, f, o)
	var se startError
	if errors.As(err, &se) {
		if uerr := loader.Undo(o, res); uerr != nil {
			log.Error("roll back", "err", uerr)
			return fmt.Errorf("%w (rolling back what this up attached failed too: %v; run tandem down)", err, uerr)
		}
		if res.Fresh {
			return fmt.Errorf("%w (nothing left attached or pinned)", err)
		}
		return fmt.Errorf("%w (the datapath that ran before keeps running)", err)
	}
	return err
}

// preflight checks what the daemon will need, before up attaches
// anything: certificates, secrets, the control group.
func preflight(o loader.Options) error {
	if o.Sync.Role != "" {
		if _, _, _, _, err := syncTLS(o); err != nil {
			return err
		}
	}
	if len(o.Proxy.Ifaces) > 0 {
		if _, err := loader.ReadSecret(o.Proxy.SecretFile); err != nil {
			return err
		}
	}
	if len(o.Elect.Addrs) > 0 {
		if _, err := loader.ReadSecret(o.Elect.SecretFile(&o)); err != nil {
			return fmt.Errorf("election: %w", err)
		}
	}
	return nil
}

// upUnderDaemon applies the datapath for a root a daemon already serves,
// unless the daemon-level options differ from that daemon's: those need a
// restart of the daemon, and up refuses before changing anything.
func upUnderDaemon(env Env, o loader.Options) error {
	root := o.Pins.Root
	pid, info, err := loader.RunningDaemon(root)
	if err != nil {
		return err
	}
	if info != nil {
		if diff := daemonDiff(*info, loader.DaemonInfoOf(o)); len(diff) > 0 {
			return fmt.Errorf("the tandem daemon (pid %d) serving %s runs with another %s; that needs a restart of the daemon: stop it (kill -TERM %d; the datapath keeps running) and run this up again", pid, root, strings.Join(diff, ", "), pid)
		}
	}
	if _, err := applyUp(env, o); err != nil {
		return err
	}
	who := "a tandem daemon"
	if pid > 0 {
		who = fmt.Sprintf("a tandem daemon (pid %d)", pid)
	}
	fmt.Fprintf(env.Stdout, "%s already serves %s; it carries on with the new programs\n", who, root)
	if info == nil {
		fmt.Fprintln(env.Stdout, "note: its options could not be read; sync, metrics, election and state-dir options of this up were not applied")
	}
	return nil
}

// daemonDiff names the options (as flags) in which want differs from the
// running daemon's.
func daemonDiff(running, want loader.DaemonInfo) []string {
	// Compare as the daemon wrote them: through JSON.
	flat := func(d loader.DaemonInfo) map[string]string {
		d.PID = 0
		data, _ := json.Marshal(d)
		var m map[string]json.RawMessage
		json.Unmarshal(data, &m)
		out := map[string]string{}
		for k, v := range m {
			var sub map[string]json.RawMessage
			if json.Unmarshal(v, &sub) == nil && (k == "sync" || k == "election") {
				for sk, sv := range sub {
					out[k+"."+sk] = string(sv)
				}
				continue
			}
			out[k] = string(v)
		}
		return out
	}
	flags := map[string]string{
		"bpffs": "--bpffs", "state_dir": "--state-dir", "metrics_addr": "--metrics-addr", "control_group": "--control-group",
		"proxy_secret": "--proxy-secret", "sync.Role": "--sync-role", "sync.Peer": "--sync-peer", "sync.Listen": "--sync-listen",
		"sync.Certs": "--sync-certs", "sync.Name": "--sync-name", "sync.Interval": "--sync-interval", "sync.Journal": "--sync-journal",
		"sync.JournalMiB": "--sync-journal-mib", "election.Addrs": "--vip-addr", "election.Peers": "--vip-peer",
		"election.Listen": "--vip-listen", "election.Priority": "--vip-priority", "election.Preempt": "--vip-preempt",
		"election.Interval": "--vip-interval", "election.Dead": "--vip-dead", "election.Secret": "--vip-secret",
	}
	a, b := flat(running), flat(want)
	var out []string
	for k, v := range b {
		if a[k] != v {
			name, ok := flags[k]
			if !ok {
				name = k
			}
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// controlGID resolves --control-group; -1 when none is set.
func controlGID(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			g, err = user.LookupGroupId(name)
		}
	}
	if err != nil {
		return -1, usagef("--control-group %q: no such group (create it with groupadd %s, or name another)", name, name)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("--control-group %q: gid %q: %w", name, g.Gid, err)
	}
	return gid, nil
}

// stopDaemon stops the daemon serving root, if one does, and returns with
// the root's daemon lock held, so none starts while down runs.
func stopDaemon(env Env, root string, timeout time.Duration) (unlock func(), err error) {
	if _, err := os.Stat(root); err != nil {
		return func() {}, nil
	}
	if err := loader.RequirePrivileges(); err != nil {
		return nil, err
	}
	unlock, err = loader.DaemonLock(root)
	if !errors.Is(err, loader.ErrLocked) {
		return unlock, err
	}
	pid, err := loader.LockHolder(root)
	if err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, fmt.Errorf("a tandem daemon serves %s but its pid is not visible here (another pid namespace?); stop it, then run tandem down again", root)
	}
	fmt.Fprintf(env.Stdout, "stopping the tandem daemon (pid %d) that serves %s\n", pid, root)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return nil, fmt.Errorf("stop the daemon (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		// The lock goes with the daemon's first closed files; wait until
		// it has closed them all (gone, or a zombie), links and maps too.
		unlock, err = loader.DaemonLock(root)
		if err == nil && !alive(pid) {
			return unlock, nil
		}
		if err == nil {
			unlock()
		} else if !errors.Is(err, loader.ErrLocked) {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the tandem daemon (pid %d) did not stop within %s; nothing was removed: stop it (kill -KILL %d) and run tandem down again", pid, timeout, pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// alive: pid runs and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || i+2 >= len(data) || (data[i+2] != 'Z' && data[i+2] != 'X')
}

// staleMaps lists the maps the daemon opened (held: their ids then) that
// are no longer the pinned ones, and whether any pin is gone.
func staleMaps(pins maps.Pins, held map[string]ebpf.MapID) (stale []string, missing bool, err error) {
	now, err := loader.PinnedMapIDs(pins)
	if err != nil {
		return nil, false, err
	}
	for name, id := range held {
		switch cur, ok := now[name]; {
		case !ok:
			missing = true
			stale = append(stale, name)
		case cur != id:
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	return stale, missing, nil
}

// restart stops the sync node and starts it on the maps pinned now.
func (d *syncd) restart(o loader.Options) error {
	d.shutdown()
	return d.apply(o)
}
