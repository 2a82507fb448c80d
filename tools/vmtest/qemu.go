package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// vm is one boot: a kernel, an initramfs, a job.
type vm struct {
	kernel  *kernel
	initrd  string
	workdir string // host temp dir, on the shared root
	memMiB  int
	cpus    int
}

// result is what a boot reported.
type result struct {
	exit   int // the command's exit status; -1 when the guest never said
	splats []string
}

// run boots the VM with accel (kvm or tcg) and runs j, streaming the
// console to out. The context bounds the whole boot.
func (v *vm) run(ctx context.Context, accel string, j job, out io.Writer) (result, error) {
	res := result{exit: -1}
	data, err := json.Marshal(j)
	if err != nil {
		return res, err
	}
	jobFile, err := os.CreateTemp(v.workdir, "job-*.json")
	if err != nil {
		return res, err
	}
	jobFile.Write(data)
	jobFile.Close()
	defer os.Remove(jobFile.Name())

	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	args := []string{
		"-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
		"-machine", "q35,accel=" + accel, "-cpu", cpu,
		"-smp", strconv.Itoa(v.cpus), "-m", strconv.Itoa(v.memMiB),
		"-kernel", v.kernel.Vmlinuz, "-initrd", v.initrd,
		"-append", "console=ttyS0 rdinit=/init panic=-1 oops=panic loglevel=3 tandem.job=" + jobFile.Name(),
		"-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=root,mount_tag=root",
		"-serial", "stdio",
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start qemu: %w (is qemu-system-x86 installed? make deps)", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(line, markExit):
			if n, err := strconv.Atoi(strings.TrimPrefix(line, markExit)); err == nil {
				res.exit = n
			}
		case strings.HasPrefix(line, markSplat):
			res.splats = append(res.splats, strings.TrimPrefix(line, markSplat))
		}
		fmt.Fprintln(out, line)
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return res, fmt.Errorf("the VM did not finish in time: %w", ctx.Err())
	}
	if res.exit < 0 {
		return res, fmt.Errorf("the guest reported no exit status (qemu: %v); see the console above", werr)
	}
	return res, nil
}

// chooseAccel picks kvm when /dev/kvm works and a guest actually boots
// with it within a short time (here a KVM guest has been seen to hang),
// else tcg.
//
// The verdict is remembered in the cache, per host kernel and guest kernel,
// so only the first run pays for the probe.
func (v *vm) chooseAccel(want, cache string, log io.Writer) string {
	if want != "auto" {
		return want
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintf(log, "vmtest: no usable /dev/kvm (%v); using TCG\n", err)
		return "tcg"
	}
	f.Close()
	memo := filepath.Join(cache, "accel-"+hostRelease()+"-"+v.kernel.Release)
	if b, err := os.ReadFile(memo); err == nil {
		if a := strings.TrimSpace(string(b)); a == "kvm" || a == "tcg" {
			fmt.Fprintf(log, "vmtest: using %s (probed before; remove %s to probe again)\n", a, memo)
			return a
		}
	}
	a := v.probeKVM(log)
	os.WriteFile(memo, []byte(a+"\n"), 0o644)
	return a
}

func (v *vm) probeKVM(log io.Writer) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := v.run(ctx, "kvm", job{Command: []string{"true"}, Dir: "/", ModulesDir: v.kernel.ModulesDir, Release: v.kernel.Release}, io.Discard)
	if err == nil && res.exit == 0 {
		fmt.Fprintln(log, "vmtest: KVM works; using it")
		return "kvm"
	}
	fmt.Fprintf(log, "vmtest: a KVM guest did not boot in 20s (%v); using TCG\n", err)
	return "tcg"
}

func hostRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func newWorkdir() (string, error) {
	// On the shared root, so the guest can read the job files.
	dir, err := os.MkdirTemp("", "vmtest-")
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", errors.Join(err, os.RemoveAll(dir))
	}
	return abs, nil
}
