package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// Find the nearest existing ancestor and ask what it lives on.
	probe := root
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
	ok, err := IsBPFFS(probe)
	if err != nil {
		return "", fmt.Errorf("statfs %s: %w", probe, err)
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
