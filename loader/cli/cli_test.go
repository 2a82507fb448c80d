package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/syncer"
)

func run(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := Run(Env{Stdout: &out, Stderr: &errb}, args)
	return out.String(), errb.String(), code
}

// TestHelpIsComplete: every command has a summary, a usage line, every
// flag documented, and examples; help exits 0 on stdout.
func TestHelpIsComplete(t *testing.T) {
	for _, name := range names() {
		for _, form := range [][]string{{name, "--help"}, {name, "-h"}, {"help", name}} {
			out, errs, code := run(form...)
			if code != 0 || errs != "" {
				t.Errorf("%v: exit %d, stderr %q", form, code, errs)
			}
			for _, want := range []string{"tandem " + name + ":", "Usage:", "Flags:", "--help", "Examples:"} {
				if !strings.Contains(out, want) {
					t.Errorf("%v: help lacks %q:\n%s", form, want, out)
				}
			}
		}
	}
	out, _, code := run("--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, name := range names() {
		if !strings.Contains(out, "\n  "+name+" ") {
			t.Errorf("overview does not list %s", name)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"up", "--nope"}, "unknown flag: --nope"},
		{[]string{"up", "--once"}, "no interface"},
		{[]string{"up", "--once", "-i", "eth0", "--ingress", "ebpf"}, `--ingress "ebpf": choose one of [xdp tc]`},
		{[]string{"up", "--once", "-i", "eth0", "--tc", "x"}, `--tc "x"`},
		{[]string{"up", "--once", "-i", "eth0", "--gate", "x"}, `--gate "x"`},
		{[]string{"up", "--once", "-i", "eth0", "-i", "eth0"}, "eth0 named twice"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "10.0.0.1", "--vip", "10.0.0.1=standby"}, "given twice"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "10.0.0.1=primary"}, `role "primary"`},
		{[]string{"up", "--once", "-i", "eth0", "--check-interval", "0s"}, "--check-interval must be positive"},
		{[]string{"up", "eth0"}, `unexpected argument "eth0"`},
		{[]string{"up", "--once", "-i", "eth0", "--sync-role", "leader"}, `--sync-role "leader": choose one of [primary standby auto]`},
		{[]string{"up", "--once", "-i", "eth0", "--sync-role", "auto"}, "--sync-role auto follows the VIP election"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1"}, "want ADDR/LEN@IFACE"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0"}, "--vip-peer HOST:PORT"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-peer", "10.0.0.2:7401"}, "--vip-secret FILE"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-addr", "10.0.0.1/16@eth1", "--vip-peer", "10.0.0.2:7401", "--vip-secret", "k"}, "given twice"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-peer", "10.0.0.2", "--vip-secret", "k"}, `"10.0.0.2": want HOST:PORT`},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k", "--vip-interval", "1ms"}, "at least 10ms"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k", "--vip-dead", "1"}, "at least 2 missed"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-peer", "10.0.0.2:1"}, "--vip-peer without --vip-addr"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-priority", "300"}, "vip-priority"},
		{[]string{"vip", "frob"}, "tandem vip [status | handover]"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-role", "primary"}, "--sync-peer HOST:PORT"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-role", "primary", "--sync-peer", "10.0.0.2"}, `--sync-peer "10.0.0.2": want HOST:PORT`},
		{[]string{"up", "--once", "-i", "eth0", "--sync-interval", "0s"}, "--sync-interval 0s: must be positive"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-ring-bytes", "5000"}, "want a power of two"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-test-iface", "eth0"}, "also a datapath interface"},
		{[]string{"up", "--once", "-i", "eth0", "--metrics-addr", "9474"}, `--metrics-addr "9474": want HOST:PORT`},
		{[]string{"up", "--once", "-i", "eth0", "--control-group", "no-such-group-tandem"}, "no such group"},
		{[]string{"down", "--stop-timeout", "0s"}, "--stop-timeout must be positive"},
		{[]string{"dump"}, "name one map"},
		{[]string{"version", "x"}, "no arguments"},
		{[]string{"certs"}, "name at least one host"},
		{[]string{"certs", "gw=10.0.0"}, "not an IP address"},
	}
	for _, c := range cases {
		_, errs, code := run(c.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", c.args, code, errs)
		}
		if !strings.Contains(errs, c.want) {
			t.Errorf("%v: stderr %q lacks %q", c.args, errs, c.want)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, code := run("version")
	if code != 0 || !strings.HasPrefix(out, "tandem dev (commit ") {
		t.Fatalf("version: %d %q", code, out)
	}
}

func TestCerts(t *testing.T) {
	dir := t.TempDir()
	out, errs, code := run("certs", "--dir", dir, "gw-a=127.0.0.1", "gw-b")
	if code != 0 {
		t.Fatalf("certs: %d %s", code, errs)
	}
	for _, want := range []string{"gw-a.pem", "gw-b-key.pem", "ca.pem"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s: %s", want, out)
		}
	}
	for _, h := range []string{"gw-a", "gw-b"} {
		if _, err := syncer.TLSConfig(dir, h); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
}

// TestVIPNoDaemon: tandem vip where no daemon runs an election says so
// and how to start one.
func TestVIPNoDaemon(t *testing.T) {
	for _, action := range []string{"status", "handover"} {
		_, errs, code := run("vip", action, "--state-dir", t.TempDir())
		if code != 1 || !strings.Contains(errs, "no daemon runs an election here") || !strings.Contains(errs, "tandem up --vip-addr") {
			t.Errorf("vip %s: exit %d, stderr %q", action, code, errs)
		}
	}
}
