package loader

import (
	"errors"
	"fmt"
	"os"
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
