package daemon

// The daemon's lifecycle around the datapath: what up checks and locks
// before it touches the kernel, what it takes back when the daemon cannot
// start, how a second up deals with a running daemon, and how down stops
// one.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-net/tandem/loader"
)

// ServedError is an up for a root that a running daemon already serves:
// the datapath change is that daemon's to carry on with (the caller
// applies it), unless Differs names daemon options it would need a
// restart for.
type ServedError struct {
	Root string
	PID  int         // 0: not visible here
	Info *DaemonInfo // nil: its options could not be read
}

func (e *ServedError) Error() string {
	return fmt.Sprintf("a tandem daemon (pid %d) already serves %s", e.PID, e.Root)
}

// Differs names (as flags) the daemon options of want that differ from
// the running daemon's; nil when they could not be read.
func (e *ServedError) Differs(want Config) []string {
	if e.Info == nil {
		return nil
	}
	return InfoDiff(*e.Info, DaemonInfoOf(want))
}

// ErrStartedMeanwhile: another daemon started on a fresh root while this
// one applied the same datapath; that one carries on with it.
var ErrStartedMeanwhile = errors.New("a tandem daemon started on the root meanwhile; it carries on with the new programs")

// Launch is up's daemon path: unless a daemon serves c's root already
// (*ServedError: nothing done), it checks what the daemon needs
// (Preflight), locks the state directory, applies the datapath through
// apply (the caller prints what it did), locks the root and starts the
// daemon. When the daemon cannot start, Launch takes back what apply
// attached: everything when nothing was pinned before, else only the
// attachments it added. release drops the locks once Run returned.
func Launch(c Config, apply func(loader.Options) (*loader.Result, error)) (d *Daemon, release func(), err error) {
	o := c.Options()
	log := c.log()
	root := o.Pins.Root
	if err := loader.RequirePrivileges(); err != nil {
		return nil, nil, err
	}
	var unlocks []func()
	unlockAll := func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
	defer func() {
		if d == nil {
			unlockAll()
		}
	}()
	rootLocked := false
	if _, err := os.Stat(root); err == nil {
		u, err := loader.DaemonLock(root)
		if errors.Is(err, loader.ErrLocked) {
			pid, info, err := RunningDaemon(root)
			if err != nil {
				return nil, nil, err
			}
			return nil, nil, &ServedError{Root: root, PID: pid, Info: info}
		}
		if err != nil {
			return nil, nil, err
		}
		unlocks, rootLocked = append(unlocks, u), true
	}
	gid, err := ControlGID(c.ControlGroup)
	if err != nil {
		return nil, nil, err
	}
	// Everything that can be checked without the kernel is checked before
	// anything is attached.
	if err := c.Preflight(); err != nil {
		return nil, nil, err
	}
	unlockState, err := StateLock(DaemonInfoOf(c), gid)
	if err != nil {
		return nil, nil, err
	}
	unlocks = append(unlocks, unlockState)
	// Undoable: if the daemon cannot start, Undo puts back a chain this
	// up swapped in through a running link.
	o.Undoable = true
	res, err := apply(o)
	if err != nil {
		return nil, nil, err
	}
	defer res.Release()
	if !rootLocked {
		u, err := loader.DaemonLock(root)
		if errors.Is(err, loader.ErrLocked) {
			return nil, nil, ErrStartedMeanwhile
		}
		if err != nil {
			return nil, nil, err
		}
		unlocks = append(unlocks, u)
	}
	d, err = New(c)
	if err != nil {
		if uerr := loader.Undo(o, res); uerr != nil {
			log.Error("roll back", "err", uerr)
			return nil, nil, fmt.Errorf("%w (rolling back what this up attached failed too: %v; run tandem down)", err, uerr)
		}
		if res.Fresh {
			return nil, nil, fmt.Errorf("%w (nothing left attached or pinned)", err)
		}
		return nil, nil, fmt.Errorf("%w (the datapath that ran before keeps running)", err)
	}
	return d, unlockAll, nil
}

// InfoDiff names the options (as flags) in which want differs from the
// running daemon's.
func InfoDiff(running, want DaemonInfo) []string {
	// Compare as the daemon wrote them: through JSON.
	flat := func(d DaemonInfo) map[string]string {
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

// Stop stops the daemon serving root, if one does (SIGTERM, then up to
// timeout for it to go), and returns with the root's daemon lock held, so
// none starts while the caller (down) runs. stopping is told the pid
// before the signal goes.
func Stop(root string, timeout time.Duration, stopping func(pid int)) (unlock func(), err error) {
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
	if stopping != nil {
		stopping(pid)
	}
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
