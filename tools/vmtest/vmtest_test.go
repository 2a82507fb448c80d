package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/testenv"
)

// kernel61 fetches (or finds cached) Debian's 6.1 kernel.
func kernel61(t *testing.T) *kernel {
	t.Helper()
	testenv.RequireRoot(t)
	if os.Getenv("TANDEM_VMTEST") != "" {
		t.Skip("skipped: inside the VM already (no nested VMs under TCG)")
	}
	k, err := resolveKernel("6.1", "", envOr("TANDEM_KERNEL_CACHE", DefaultCache), os.Stderr)
	if err != nil {
		t.Fatalf("kernel 6.1: %v", err)
	}
	return k
}

// TestModuleOrder: dependencies come before the modules that need them,
// read from the modules themselves (no depmod).
func TestModuleOrder(t *testing.T) {
	k := kernel61(t)
	ix, err := indexModules(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	files, _, err := ix.resolve(bootModules, false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, normMod(f))
	}
	pos := func(n string) int { return slices.Index(names, n) }
	for _, pair := range [][2]string{{"9pnet", "9pnet_virtio"}, {"9pnet", "9p"}, {"virtio_pci_modern_dev", "virtio_pci"}} {
		if pos(pair[0]) < 0 || pos(pair[1]) < 0 || pos(pair[0]) > pos(pair[1]) {
			t.Errorf("%s must load before %s: %v", pair[0], pair[1], names)
		}
	}
	if _, _, err := ix.resolve([]string{"no_such_module"}, false); err == nil {
		t.Error("an unknown module was accepted")
	}
	if _, missing, err := ix.resolve([]string{"no_such_module"}, true); err != nil || len(missing) != 1 {
		t.Errorf("optional unknown module: %v %v", missing, err)
	}
}

// TestVMFailurePropagates: a failing test inside the VM fails the run,
// with the failure on the console, as make vmtest relies on.
func TestVMFailurePropagates(t *testing.T) {
	kernel61(t)
	dir := t.TempDir()
	fake := filepath.Join(dir, "fails.test")
	os.WriteFile(fake, []byte("#!/bin/sh\necho '--- FAIL: TestDeliberately (0.00s)'\nexit 1\n"), 0o755)
	list := filepath.Join(dir, "list")
	os.WriteFile(list, []byte(dir+" "+fake+"\n"), 0o644)

	bin := filepath.Join(dir, "vmtest")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build vmtest: %v\n%s", err, out)
	}
	suite, _ := filepath.Abs("suite.sh")
	var out bytes.Buffer
	cmd := exec.Command(bin, "--kernel", "6.1", "--load", "veth", "--", suite, list)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("a failing test in the VM: %v, want exit status 1\n%s", err, out.String())
	}
	for _, want := range []string{"--- FAIL: TestDeliberately", "FAIL\tfails", "vmtest: exit status 1", "6.1.0-"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSplatPattern(t *testing.T) {
	for _, l := range []string{
		"WARNING: CPU: 1 PID: 42 at net/core/dev.c:1234 foo+0x1/0x2",
		"BUG: KASAN: slab-out-of-bounds in bpf_prog_run",
		"BUG: unable to handle page fault for address: 0000",
		"general protection fault, probably for non-canonical address",
		"kernel BUG at mm/slub.c:1",
	} {
		if !splat.MatchString(l) {
			t.Errorf("not a splat: %q", l)
		}
	}
	for _, l := range []string{"veth0: renamed from veth1", "BPF: type_id=1", "tandem: warning level message"} {
		if splat.MatchString(l) {
			t.Errorf("false splat: %q", l)
		}
	}
}
