package daemon

// The daemon's state directory: one daemon per directory, locked for its
// lifetime, with the options that only a restart changes written into
// the lock for a second up to compare.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/loader"
)

// StateLockFile is the daemon's lock in its state directory; it holds
// the DaemonInfo of the daemon that holds it.
const StateLockFile = "daemon.lock"

// DaemonInfo is what a running daemon serves with: the options that only
// a restart of the daemon changes. It is written into the state lock.
type DaemonInfo struct {
	PID          int          `json:"pid"`
	Root         string       `json:"bpffs"`
	StateDir     string       `json:"state_dir"`
	MetricsAddr  string       `json:"metrics_addr"`
	ControlGroup string       `json:"control_group"`
	ProxySecret  string       `json:"proxy_secret"`
	Sync         SyncOptions  `json:"sync"`
	Elect        ElectOptions `json:"election"`
}

// DaemonInfoOf is the DaemonInfo a daemon started with o would have.
func DaemonInfoOf(c Config) DaemonInfo {
	return DaemonInfo{PID: os.Getpid(), Root: c.Datapath.Pins.Root, StateDir: c.StateDir, MetricsAddr: c.MetricsAddr,
		ControlGroup: c.ControlGroup, ProxySecret: c.Datapath.Proxy.SecretFile, Sync: c.Sync, Elect: c.Elect}
}

// ErrStateDirBusy means another daemon holds the state directory.
var ErrStateDirBusy = errors.New("state directory in use")

// StateLock prepares the daemon's state directory and locks it for the
// daemon's lifetime: two daemons sharing one would share a node id and
// one control socket. The directory is made private: 0700, or 0750 owned
// by the control group (gid >= 0) so its members reach the socket.
func StateLock(info DaemonInfo, gid int) (unlock func(), err error) {
	dir := info.StateDir
	if fi, err := os.Stat(dir); err == nil && fi.Mode()&os.ModeSticky != 0 {
		// /tmp and its kind are everyone's: never make them private.
		return nil, fmt.Errorf("state directory %s is a shared directory (mode %s); give tandem a directory of its own (--state-dir)", dir, fi.Mode())
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	mode := os.FileMode(0o700)
	if gid >= 0 {
		mode = 0o750
		if err := os.Chown(dir, 0, gid); err != nil {
			return nil, fmt.Errorf("state directory %s: give it to the control group: %w", dir, err)
		}
	}
	// MkdirAll keeps an existing directory's mode, and a new one's follows
	// the umask: set it either way.
	if err := os.Chmod(dir, mode); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, StateLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			other, _ := ReadDaemonInfo(dir)
			if other == nil {
				return nil, fmt.Errorf("%w: %s is locked by another tandem daemon; give this one its own --state-dir", ErrStateDirBusy, dir)
			}
			return nil, fmt.Errorf("%w: %s belongs to the tandem daemon pid %d serving %s; give this daemon its own --state-dir (or stop that one)", ErrStateDirBusy, dir, other.PID, other.Root)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	data, _ := json.Marshal(info)
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt(append(data, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// ReadDaemonInfo reads the info of the daemon that holds (or last held)
// the state directory's lock.
func ReadDaemonInfo(stateDir string) (*DaemonInfo, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, StateLockFile))
	if err != nil {
		return nil, err
	}
	var info DaemonInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(stateDir, StateLockFile), err)
	}
	return &info, nil
}

// RunningDaemon finds the daemon serving root: its pid (0: none) and, when
// its state lock can be found among its open files, its info.
func RunningDaemon(root string) (int, *DaemonInfo, error) {
	pid, err := loader.LockHolder(root)
	if err != nil || pid == 0 {
		return 0, nil, err
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || filepath.Base(target) != StateLockFile {
			continue
		}
		if info, err := ReadDaemonInfo(filepath.Dir(target)); err == nil && info.PID == pid {
			return pid, info, nil
		}
	}
	return pid, nil, nil
}
