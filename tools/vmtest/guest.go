package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// job is what the host asks the guest to do; it travels as a JSON file on
// the shared root, named on the kernel command line (tandem.job=PATH).
type job struct {
	Command    []string `json:"command"`
	Env        []string `json:"env"`
	Dir        string   `json:"dir"`
	ModulesDir string   `json:"modules_dir"` // the guest kernel's lib/modules/RELEASE, on the shared root
	Release    string   `json:"release"`
	Modules    []string `json:"modules"` // to load before the command (optional ones may be missing)
}

const guestPath = "/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Markers the host reads from the console.
const (
	markExit  = "vmtest: exit status "
	markSplat = "vmtest: kernel splat: "
	markInfo  = "vmtest: "
)

// guestMain runs as PID 1 inside the VM: it mounts the host's root over
// 9p read-only with a tmpfs overlay for writes, switches into it, sets up
// what tests need, runs the job and powers off. It never returns.
func guestMain() {
	code := 125
	defer func() {
		if r := recover(); r != nil {
			fmt.Printf("%spanic: %v\n", markInfo, r)
		}
		fmt.Printf("%s%d\n", markExit, code)
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		select {}
	}()
	os.Setenv("PATH", guestPath)
	if err := guestSetup(); err != nil {
		fmt.Printf("%ssetup: %v\n", markInfo, err)
		return
	}
	path, err := jobPath()
	if err != nil {
		fmt.Printf("%s%v\n", markInfo, err)
		return
	}
	j, err := switchRoot(path)
	if err != nil {
		fmt.Printf("%sswitch root: %v\n", markInfo, err)
		return
	}
	seq, _ := kmsgSeq()
	code = runJob(j)
	found, err := splats(seq)
	if err != nil {
		fmt.Printf("%sread kernel log: %v\n", markInfo, err)
	}
	for _, s := range found {
		fmt.Printf("%s%s\n", markSplat, s)
	}
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", src, dst, fstype, err)
	}
	return nil
}

// guestSetup runs in the initramfs: devices, then the 9p and overlay
// modules packed into it (listed, in load order, in /modules/order).
func guestSetup() error {
	if err := mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil {
		return err
	}
	// The initramfs has no /dev/console node; take the console now.
	if c, err := os.OpenFile("/dev/console", os.O_RDWR, 0); err == nil {
		for fd := 0; fd < 3; fd++ {
			unix.Dup2(int(c.Fd()), fd)
		}
	}
	if err := mount("proc", "/proc", "proc", 0, ""); err != nil {
		return err
	}
	if err := mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		return err
	}
	order, err := os.ReadFile("/modules/order")
	if err != nil {
		return err
	}
	for _, m := range strings.Fields(string(order)) {
		if err := loadModule(filepath.Join("/modules", m)); err != nil {
			return err
		}
	}
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// jobPath reads where the job file is from the kernel command line; the
// file itself is on the shared root, readable once that is mounted.
func jobPath() (string, error) {
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "tandem.job="); ok {
			return v, nil
		}
	}
	return "", errors.New("no tandem.job= on the kernel command line")
}

// switchRoot mounts the host's root read-only over 9p with a tmpfs overlay
// on top, moves /dev, /proc and /sys into it and chroots there, like
// switch_root does (an initramfs cannot pivot_root).
func switchRoot(path string) (*job, error) {
	const lower, rw, root = "/newroot/lower", "/newroot/rw", "/newroot/root"
	if err := mount("root", lower, "9p", unix.MS_RDONLY, "trans=virtio,version=9p2000.L,msize=512000,cache=loose"); err != nil {
		return nil, err
	}
	if err := mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return nil, err
	}
	for _, d := range []string{rw + "/upper", rw + "/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := mount("overlay", root, "overlay", 0, "lowerdir="+lower+",upperdir="+rw+"/upper,workdir="+rw+"/work"); err != nil {
		return nil, err
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := mount(d, root+d, "", unix.MS_MOVE, ""); err != nil {
			return nil, err
		}
	}
	if err := os.Chdir(root); err != nil {
		return nil, err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return nil, fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return nil, fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job: %w", err)
	}
	var j job
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("job %s: %w", path, err)
	}
	return &j, prepare(&j)
}

// prepare makes the guest look like a host the tests can run on.
func prepare(j *job) error {
	for _, m := range []struct{ src, dst, fs, data string }{
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"bpf", "/sys/fs/bpf", "bpf", "mode=0700"},
		{"tracefs", "/sys/kernel/tracing", "tracefs", ""},
		{"debugfs", "/sys/kernel/debug", "debugfs", ""},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", ""},
		{"devpts", "/dev/pts", "devpts", "ptmxmode=0666"},
	} {
		if err := mount(m.src, m.dst, m.fs, 0, m.data); err != nil {
			fmt.Printf("%s%v\n", markInfo, err)
		}
	}
	// The guest kernel's modules where modprobe and the kernel expect them.
	modDir := "/lib/modules/" + j.Release
	if err := mount(j.ModulesDir, modDir, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	ix, err := indexModules(modDir)
	if err != nil {
		return err
	}
	files, missing, err := ix.resolve(j.Modules, true)
	if err != nil {
		return err
	}
	var failed []string
	for _, f := range files {
		if err := loadModule(f); err != nil {
			failed = append(failed, err.Error())
		}
	}
	fmt.Printf("%skernel %s, %d modules loaded", markInfo, j.Release, len(files)-len(failed))
	if len(missing) > 0 {
		fmt.Printf(", not in this kernel: %s", strings.Join(missing, " "))
	}
	fmt.Println()
	for _, f := range failed {
		fmt.Printf("%s%s\n", markInfo, f)
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	unix.Sethostname([]byte("vmtest"))
	return nil
}

func runJob(j *job) int {
	if len(j.Command) == 0 {
		fmt.Printf("%sno command\n", markInfo)
		return 125
	}
	cmd := exec.Command(j.Command[0], j.Command[1:]...)
	cmd.Env = append([]string{
		"PATH=" + guestPath,
		"HOME=/root", "TERM=dumb", "TANDEM_VMTEST=1",
	}, j.Env...)
	cmd.Dir = j.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := time.Now()
	err := cmd.Run()
	fmt.Printf("%scommand took %s\n", markInfo, time.Since(start).Round(time.Millisecond))
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ee.ExitCode() < 0 {
			return 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
		return ee.ExitCode()
	}
	fmt.Printf("%srun %v: %v\n", markInfo, j.Command, err)
	return 127
}
