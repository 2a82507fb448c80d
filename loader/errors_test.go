package loader_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"net"

	"github.com/tandem-net/tandem/tools/testenv"
)

// TestUpErrors: every bad start is one line that says what to do, a
// non-zero exit, and nothing half-attached.
func TestUpErrors(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	root := gw.BPFFS()
	cfg := filepath.Join(t.TempDir(), "bad.toml")
	cases := []struct {
		name  string
		args  []string
		setup func(t *testing.T)
		code  int
		want  string
	}{
		{"unknown interface", []string{"up", "--once", "-i", "nope0", "--bpffs", root}, nil, 1, "not found in this network namespace"},
		{"no interface", []string{"up", "--once", "--bpffs", root}, nil, 2, "no interface"},
		{"bad xdp mode", []string{"up", "--once", "-i", "eth0", "--xdp-mode", "turbo", "--bpffs", root}, nil, 2, "choose one of"},
		{"bad vip", []string{"up", "--once", "-i", "eth0", "--vip", "10.1.2", "--bpffs", root}, nil, 2, "not an IP address"},
		{"unknown flag", []string{"up", "--once", "--frobnicate"}, nil, 2, "unknown flag"},
		{"relative bpffs", []string{"up", "--once", "-i", "eth0", "--bpffs", "rel/dir"}, nil, 2, "absolute path"},
		{"bpffs on another filesystem", []string{"up", "--once", "-i", "eth0", "--bpffs", t.TempDir() + "/pins"}, nil, 1, "mount -t bpf bpf"},
		{"config syntax error", []string{"up", "--once", "--config", cfg, "--bpffs", root}, func(t *testing.T) {
			os.WriteFile(cfg, []byte("interfaces = [\"eth0\"\nxdp_mode = 3\n"), 0o644)
		}, 2, "line"},
		{"config unknown key", []string{"up", "--once", "--config", cfg, "--bpffs", root}, func(t *testing.T) {
			os.WriteFile(cfg, []byte("interfaces = [\"eth0\"]\nturbo = true\n"), 0o644)
		}, 2, "unknown key(s) turbo"},
		{"config bad value", []string{"up", "--once", "--config", cfg, "--bpffs", root}, func(t *testing.T) {
			os.WriteFile(cfg, []byte("interfaces = [\"eth0\"]\n[sync]\ninterval = \"often\"\n"), 0o644)
		}, 2, "sync.interval"},
		{"config missing", []string{"up", "--once", "--config", cfg + ".nope", "--bpffs", root}, nil, 1, "no such file"},
		{"dump before up", []string{"dump", "vip_gate", "--bpffs", root}, nil, 1, "is tandem up"},
		{"unknown command", []string{"upp"}, nil, 2, "unknown command"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				c.setup(t)
			}
			r := tandem(t, gw, c.args...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, c.code, r.stderr)
			}
			if !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr %q does not say %q", r.stderr, c.want)
			}
			if lines := strings.Count(strings.TrimSpace(r.stderr), "\n"); lines > 0 {
				t.Errorf("error is %d lines, want one: %s", lines+1, r.stderr)
			}
			if _, err := os.Stat(root); err == nil {
				t.Errorf("a failed command left %s behind", root)
			}
		})
	}
}

// TestUpForeignXDP: an interface that already runs someone else's XDP
// program is refused with the command that frees it, and the half of the
// datapath attached before the refusal is rolled back.
func TestUpForeignXDP(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var foreign link.Link
	err = gw.Do(func() error {
		iface, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		foreign, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	// eth1 does not exist in this order: eth0 is attached first.
	r := tandem(t, gw, "up", "--once", "-i", "eth0", "--bpffs", gw.BPFFS())
	if r.code != 1 || !strings.Contains(r.stderr, "xdp off") {
		t.Fatalf("exit %d, stderr %q: want a refusal naming `ip link set dev eth0 xdp off`", r.code, r.stderr)
	}
	if _, err := os.Stat(gw.BPFFS()); err == nil {
		t.Errorf("refused up left %s behind", gw.BPFFS())
	}
	out, _ := gw.Cmd("bpftool", "-j", "net", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(out), "vipgate") {
		t.Errorf("refused up left a tandem program attached: %s", out)
	}
}

// TestUpUnprivileged: without root, up and down say so in one line and
// touch nothing (the check comes before any change).
func TestUpUnprivileged(t *testing.T) {
	testenv.RequireRoot(t) // to switch to nobody
	root := "/sys/fs/bpf/tandem-unprivileged-test"
	for _, args := range [][]string{{"up", "--once", "-i", "lo", "--bpffs", root}, {"down", "--bpffs", "/sys/fs/bpf"}} {
		cmd := exec.Command(testenv.Tandem(t), args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "needs root") {
			t.Errorf("unprivileged %s: err %v, output %q", args[0], err, out)
		}
	}
	if _, err := os.Stat(root); err == nil {
		t.Errorf("unprivileged up created %s", root)
	}
}
