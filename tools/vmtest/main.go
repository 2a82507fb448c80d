// Command vmtest boots a kernel under qemu with this host's root
// filesystem shared read-only over 9p (a tmpfs overlay takes the writes),
// runs one command inside as root, streams its output and exits with its
// status — the way virtme-ng does, with nothing to install in the guest.
// See tools/vmtest/README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// defaultModules are loaded in the guest before the command: what tandem's
// tests and the kernels' features need (missing ones are reported, not
// fatal: a kernel may have them built in).
var defaultModules = []string{
	"crc32c_generic", "veth", "bridge", "8021q", "dummy", "sch_ingress", "cls_bpf", "cls_u32", "act_gact",
	"esp4", "esp6", "xfrm_user", "xfrm_interface", "authenc", "authencesn", "echainiv", "gcm", "ccm", "cbc", "ctr", "seqiv",
	"nf_tables", "nf_conntrack", "nft_ct", "nft_synproxy", "sch_tbf",
}

const usage = `vmtest: run a command as root inside a VM booted from another kernel.

Usage:
  vmtest [flags] -- COMMAND [ARGS...]   boot KERNEL, run COMMAND, exit with its status
  vmtest fetch VERSION                  fetch Debian's current kernel VERSION (e.g. 6.1); print its vmlinuz
  vmtest kmsg-seq                       print the host kernel log's newest sequence number
  vmtest kmsg-check SEQ                 exit 1 if the host kernel logged a WARN/BUG/KASAN splat after SEQ

The host's / is the guest's root (read-only 9p, tmpfs overlay on top), so
binaries and test data built on the host run inside as they are. The guest
mounts proc, sys, devtmpfs, bpffs, tracefs and cgroup2, brings up lo and
loads the modules the tests need from the guest kernel's own module tree.
A WARN/BUG/KASAN splat in the guest's kernel log fails the run (exit 1)
unless --allow-splats.

Flags:
`

func main() {
	if os.Getpid() == 1 {
		guestMain()
	}
	os.Exit(hostMain(os.Args[1:]))
}

func hostMain(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "fetch":
			if len(args) != 2 {
				fmt.Fprintln(os.Stderr, "vmtest fetch: name one version, e.g. vmtest fetch 6.1")
				return 2
			}
			k, err := resolveKernel(args[1], "", envOr("TANDEM_KERNEL_CACHE", DefaultCache), os.Stderr)
			if err != nil {
				fmt.Fprintln(os.Stderr, "vmtest fetch:", err)
				return 1
			}
			fmt.Println(k.Vmlinuz)
			return 0
		case "kmsg-seq":
			seq, err := kmsgSeq()
			if err != nil {
				fmt.Fprintln(os.Stderr, "vmtest kmsg-seq:", err)
				return 1
			}
			fmt.Println(seq)
			return 0
		case "kmsg-check":
			if len(args) != 2 {
				fmt.Fprintln(os.Stderr, "vmtest kmsg-check: give the SEQ from kmsg-seq")
				return 2
			}
			seq, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil {
				fmt.Fprintln(os.Stderr, "vmtest kmsg-check: SEQ must be a number")
				return 2
			}
			found, err := splats(seq)
			if err != nil {
				fmt.Fprintln(os.Stderr, "vmtest kmsg-check:", err)
				return 1
			}
			for _, s := range found {
				fmt.Println("kernel splat:", s)
			}
			if len(found) > 0 {
				fmt.Printf("vmtest: %d kernel splat line(s) since %d\n", len(found), seq)
				return 1
			}
			fmt.Println("vmtest: no kernel splat")
			return 0
		}
	}

	fs := pflag.NewFlagSet("vmtest", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage+fs.FlagUsages()) }
	kernelSpec := fs.String("kernel", "", "vmlinuz path, or a Debian kernel version such as 6.1 (fetched and cached)")
	modules := fs.String("modules", "", "the kernel's module tree (lib/modules/RELEASE), when it is not beside vmlinuz or in /lib/modules")
	cache := fs.String("cache", envOr("TANDEM_KERNEL_CACHE", DefaultCache), "where fetched kernels are kept")
	accel := fs.String("accel", "auto", "auto (KVM if a guest boots with it, else TCG), kvm or tcg")
	mem := fs.Int("memory", 3072, "guest memory in MiB")
	cpus := fs.Int("cpus", 2, "guest CPUs")
	timeout := fs.Duration("timeout", 30*time.Minute, "limit for the whole run")
	dir := fs.String("dir", "", "working directory of the command (default: the current one)")
	env := fs.StringArray("env", nil, "KEY=VALUE for the command (repeat)")
	load := fs.StringSlice("load", defaultModules, "modules to load in the guest before the command")
	allowSplats := fs.Bool("allow-splats", false, "do not fail on a kernel splat in the guest")
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return 0
		}
		fmt.Fprintf(os.Stderr, "vmtest: %v (see vmtest --help)\n", err)
		return 2
	}
	cmd := fs.Args()
	if *kernelSpec == "" || len(cmd) == 0 {
		fmt.Fprintln(os.Stderr, "vmtest: need --kernel and a command after -- (see vmtest --help)")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vmtest: run as root (the guest shares this host's root and runs as root)")
		return 2
	}
	k, err := resolveKernel(*kernelSpec, *modules, *cache, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", err)
		return 1
	}
	work, err := newWorkdir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", err)
		return 1
	}
	defer os.RemoveAll(work)
	v := &vm{kernel: k, initrd: filepath.Join(work, "initramfs.cpio"), workdir: work, memMiB: *mem, cpus: *cpus}
	if err := buildInitramfs(k, v.initrd); err != nil {
		fmt.Fprintln(os.Stderr, "vmtest: initramfs:", err)
		return 1
	}
	cwd := *dir
	if cwd == "" {
		cwd, _ = os.Getwd()
	}
	cwd, _ = filepath.Abs(cwd)
	acc := v.chooseAccel(*accel, *cache, os.Stderr)
	fmt.Fprintf(os.Stderr, "vmtest: booting %s (%s) with %s, %d CPUs, %d MiB\n", k.Release, k.Vmlinuz, acc, *cpus, *mem)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := v.run(ctx, acc, job{Command: cmd, Env: *env, Dir: cwd, ModulesDir: k.ModulesDir, Release: k.Release, Modules: *load}, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", err)
		return 1
	}
	if len(res.splats) > 0 {
		fmt.Fprintf(os.Stderr, "vmtest: the guest kernel logged %d splat line(s) (see 'kernel splat' above)\n", len(res.splats))
		if !*allowSplats && res.exit == 0 {
			return 1
		}
	}
	return res.exit
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}
