package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultBPFFS is where the kernel's BPF filesystem normally lives.
const DefaultBPFFS = "/sys/fs/bpf"

// IsBPFFS reports whether path is on a BPF filesystem.
func IsBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// EnsureBPFFS makes root a directory on a BPF filesystem, mounting bpffs at
// /sys/fs/bpf when root is below it and nothing is mounted there. It returns
// the mount point it made, or "" when one was already there.
func EnsureBPFFS(root string) (mounted string, err error) {
	root = filepath.Clean(root)
	if !filepath.IsAbs(root) {
		return "", fmt.Errorf("bpffs root %q must be an absolute path", root)
	}
	probe, ok, err := onBPFFS(root)
	if err != nil {
		return "", err
	}
	if !ok {
		// Mount only where bpffs belongs; anywhere else a mount would be a
		// surprise, so say how to make one instead.
		if root != DefaultBPFFS && !strings.HasPrefix(root, DefaultBPFFS+"/") {
			return "", fmt.Errorf("%s is not on a BPF filesystem: mount one there (mount -t bpf bpf %s) or choose a --bpffs below %s", probe, probe, DefaultBPFFS)
		}
		target := DefaultBPFFS
		if err := os.MkdirAll(target, 0o755); err != nil {
			return "", fmt.Errorf("create bpffs mount point %s: %w", target, err)
		}
		if err := unix.Mount("bpf", target, "bpf", 0, "mode=0700"); err != nil {
			if errors.Is(err, unix.EPERM) {
				return "", fmt.Errorf("mount bpffs at %s: %w (run as root, or mount it first: mount -t bpf bpf %s)", target, err, target)
			}
			return "", fmt.Errorf("mount bpffs at %s: %w (mount it by hand: mount -t bpf bpf %s, or pick another --bpffs)", target, err, target)
		}
		mounted = target
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return mounted, fmt.Errorf("create %s: %w", root, err)
	}
	if ok, err := IsBPFFS(root); err != nil || !ok {
		return mounted, fmt.Errorf("%s is not on a BPF filesystem (choose a --bpffs below a bpffs mount such as %s)", root, DefaultBPFFS)
	}
	return mounted, nil
}

// onBPFFS finds root's nearest existing ancestor (root itself when it
// exists) and says whether it lives on a BPF filesystem.
func onBPFFS(root string) (probe string, ok bool, err error) {
	probe = filepath.Clean(root)
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	ok, err = IsBPFFS(probe)
	if err != nil {
		return probe, false, fmt.Errorf("statfs %s: %w", probe, err)
	}
	return probe, ok, nil
}

// ErrPrivateMount: up would mount bpffs in a mount namespace that is not
// the host's.
var ErrPrivateMount = errors.New("bpffs would be mounted in a private mount namespace")

// MountTrap says (an error wrapping ErrPrivateMount, one line, with what
// to run instead) when Up would mount bpffs for root in a mount namespace
// other than the host's (PID 1's): the mount, and every pin in it, would
// vanish with the last process in that namespace, and the datapath with
// them, silently. That is what ip netns exec does: it gives the command a
// mount namespace with a /sys of its own, where no bpffs is mounted. nil
// when root is on a bpffs already, when this is the host's mount
// namespace, or when that cannot be told (no /proc/1).
func MountTrap(root string) error {
	if _, ok, err := onBPFFS(root); err != nil || ok {
		return nil
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	host := hostMountNS()
	if err != nil || host == "" || self == host {
		return nil
	}
	run := "nsenter --net=/run/netns/NAME tandem up ..."
	if name := netnsName(); name != "" {
		run = "nsenter --net=/run/netns/" + name + " tandem up ..."
	}
	return fmt.Errorf("%w: no bpffs at %s in this mount namespace, which is not the host's (ip netns exec gives a command a /sys of its own), so the pins and the datapath would vanish with this command: enter only the network namespace (%s), or mount bpffs where the pins are to live first (mount -t bpf bpf %s in the host's mount namespace)",
		ErrPrivateMount, DefaultBPFFS, run, DefaultBPFFS)
}

// hostMountNS is the host's mount namespace (as readlink shows it): PID
// 1's, or, where PID 1's cannot be read (a sandbox whose init holds more
// capabilities than root here), that of this process's oldest ancestor
// whose namespace can be read. "" when none can.
func hostMountNS() string {
	if ns, err := os.Readlink("/proc/1/ns/mnt"); err == nil {
		return ns
	}
	ns := ""
	for pid, hops := os.Getppid(), 0; pid > 1 && hops < 64; hops++ {
		if n, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil {
			ns = n
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(data), ')')
		f := strings.Fields(string(data[i+1:]))
		if i < 0 || len(f) < 2 {
			break
		}
		if pid, err = strconv.Atoi(f[1]); err != nil {
			break
		}
	}
	return ns
}

// netnsName is the name under /run/netns of this process's network
// namespace, "" when it has none there.
func netnsName() string {
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		return ""
	}
	des, err := os.ReadDir("/run/netns")
	if err != nil {
		return ""
	}
	for _, de := range des {
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/run/netns", de.Name()), &st) == nil && st.Ino == self.Ino && st.Dev == self.Dev {
			return de.Name()
		}
	}
	return ""
}

// checkPrivate refuses a directory of the pin root that someone else made
// or may write: up loads the maps pinned there by name, adopts the links,
// and down writes back the sysctls recorded there, all as root, so a user
// who could plant a pin or a record there (a bpffs mounted open to all,
// the kernel's default mode 1777, lets anyone make the root first) could
// steer them.
func checkPrivate(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory (mode %s): remove it, or choose another --bpffs", dir, fi.Mode())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s may be written by group or others (mode %04o): someone else could have pinned there; check what it holds, then chmod 700 %s (or choose another --bpffs)", dir, fi.Mode().Perm(), dir)
	case ok && st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s is owned by uid %d, not root: someone else could have pinned there; check what it holds, then chown root %s (or choose another --bpffs)", dir, st.Uid, dir)
	}
	return nil
}
