package loader

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/maps"
)

// ErrLocked means another tandem holds the lock.
var ErrLocked = errors.New("locked by another tandem process")

// lockDir takes an flock on a directory. Locks live on bpffs directories,
// so they are per root, need no state file, and vanish with the process.
func lockDir(dir string, nonblock bool) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	how := unix.LOCK_EX
	if nonblock {
		how |= unix.LOCK_NB
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// DaemonLock is held by the running daemon of a root for its lifetime, so
// two daemons never serve one datapath.
func DaemonLock(root string) (unlock func(), err error) {
	return lockDir(root, true)
}

// ServiceLock serialises the writers of the SYN proxy's service tables
// (tandem service add and del, up applying --service, the daemon's
// reload): each reads the services, picks a free id and writes, so two at
// once could give two services one id. It blocks until the lock is free.
// The lock is on the maps directory: it exists whenever the tables do.
func ServiceLock(pins maps.Pins) (unlock func(), err error) {
	return lockDir(pins.MapsDir(), false)
}

// LockHolder returns the pid of the process holding an flock on path (a
// daemon's root or state lock), from /proc/locks; 0 when none does.
func LockHolder(path string) (int, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("lock holder of %s: %w", path, err)
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0, fmt.Errorf("lock holder of %s: %w", path, err)
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	for _, line := range strings.Split(string(data), "\n") {
		// "1: FLOCK  ADVISORY  WRITE 30545 00:28:2208937 0 EOF"; waiters
		// carry a "->" after the number.
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || f[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
			return pid, nil
		}
	}
	return 0, nil
}

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
func DaemonInfoOf(o Options) DaemonInfo {
	return DaemonInfo{PID: os.Getpid(), Root: o.Pins.Root, StateDir: o.StateDir, MetricsAddr: o.MetricsAddr,
		ControlGroup: o.ControlGroup, ProxySecret: o.Proxy.SecretFile, Sync: o.Sync, Elect: o.Elect}
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
	pid, err := LockHolder(root)
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
