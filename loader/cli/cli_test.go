package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
		{[]string{"up", "--once", "--esp-iface", "eth0", "--esp-iface", "eth0"}, "--esp-iface eth0 named twice"},
		{[]string{"sa", "flush"}, `unknown action "flush": use list`},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-iface", "eth0"}, "--migrate-iface eth0 named twice"},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-hold-bytes", "1000"}, "--migrate-hold-bytes 1000: want a power of two"},
		// 0 given on the command line is no bound (and no "off"): it used to
		// mean the default, silently.
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-hold-bytes", "0"}, "--migrate-hold-bytes 0: want a power of two"},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-hold-packets", "0"}, "--migrate-hold-packets 0: at least 1"},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-hold-packets", "16777217"}, "--migrate-hold-packets 16777217: at most 16777216"},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-encap-src", "nope"}, `--migrate-encap-src "nope": want a unicast address of this host`},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-encap-src", "0.0.0.0"}, `--migrate-encap-src "0.0.0.0": want a unicast address`},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-encap-src", "10.0.0.1,10.0.0.2"}, "two IPv4 sources (10.0.0.1 and 10.0.0.2): give one per family"},
		{[]string{"up", "--once", "--migrate-iface", "eth0", "--migrate-encap-src", "fd00::1", "--migrate-encap-src", "fd00::2"}, "two IPv6 sources"},
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
		{[]string{"migrate", "follow", "--log-format", "xml", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2"}, `--log-format "xml": text or json`},
		// The drivers' flags: a bound of 0 failed every step at once (the
		// follower retried forever), options of the other role or of an
		// option not given did nothing, silently.
		{[]string{"migrate", "status", "10.0.0.1", "--gateway", "192.0.2.1:7402", "--timeout", "0s"}, "--timeout 0s: want a positive duration"},
		{[]string{"migrate", "follow", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2", "--timeout", "-1s"}, "--timeout -1s: want a positive duration"},
		{[]string{"migrate", "follow", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2", "--hold-before-stop", "--drain", "-1ms"}, "--drain -1ms: want a positive duration"},
		{[]string{"migrate", "follow", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2", "--role", "destination", "--hold-before-stop"}, "--hold-before-stop goes with --role source"},
		{[]string{"migrate", "follow", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2", "--role", "destination", "--pause-before-switchover"}, "--pause-before-switchover goes with --role source"},
		{[]string{"migrate", "follow", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2", "--start-guest"}, "--start-guest goes with --role destination"},
		{[]string{"migrate", "follow", "--gateway", "192.0.2.1:7402", "--qmp", "/run/q", "--endpoint", "10.0.0.1", "--to", "10.0.0.2", "--hold-remaining", "1000"}, "--hold-remaining goes with --hold-before-stop"},
		{[]string{"up", "--once", "-i", "eth0", "--log-format", "xml"}, `--log-format "xml": text or json`},
		{[]string{"up", "--once", "-i", "eth0", "--sync-role", "primary"}, "--sync-peer HOST:PORT"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-role", "primary", "--sync-peer", "10.0.0.2"}, `--sync-peer "10.0.0.2": want HOST:PORT`},
		{[]string{"up", "--once", "-i", "eth0", "--sync-interval", "0s"}, "--sync-interval 0s: between 1ms and 10s"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-ring-bytes", "5000"}, "want a power of two"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-test-iface", "eth0"}, "also a datapath interface"},
		{[]string{"up", "--once", "-i", "eth0", "--metrics-addr", "9474"}, `--metrics-addr "9474": want HOST:PORT`},
		// Bounds: a value that would busy-loop the daemon or pin
		// gigabytes of kernel memory is a usage error that names the range.
		{[]string{"up", "--once", "-i", "eth0", "--sync-ring-bytes", "2147483648"}, "--sync-ring-bytes 2147483648: at most 67108864"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-ring-bytes", "1024"}, "want a power of two"},
		{[]string{"up", "--once", "-i", "eth0", "--check-interval", "1ns"}, "--check-interval 1ns: between 100ms and 1h0m0s"},
		{[]string{"up", "--once", "-i", "eth0", "--check-interval", "48h"}, "--check-interval 48h0m0s: between 100ms and 1h0m0s"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-interval", "1ns"}, "--sync-interval 1ns: between 1ms and 10s"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-interval", "1h"}, "--sync-interval 1h0m0s: between 1ms and 10s"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-journal-mib", "1000000"}, "--sync-journal-mib 1000000: at most 4096"},
		{[]string{"up", "--once", "-i", "eth0", "--sync-journal", "1000000000"}, "--sync-journal 1000000000: at most 16777216"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k", "--vip-interval", "1h"}, "--vip-interval 1h0m0s: between 10ms and 10s"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.1/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k", "--vip-dead", "100000"}, "--vip-dead 100000: between 2 and 100"},
		// Addresses no host can own as a VIP.
		{[]string{"up", "--once", "-i", "eth0", "--vip", "0.0.0.0"}, "--vip 0.0.0.0: the unspecified address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "::"}, "--vip ::: the unspecified address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "255.255.255.255"}, "--vip 255.255.255.255: the broadcast address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "224.0.0.18=standby"}, "--vip 224.0.0.18: a multicast address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "ff02::1"}, "--vip ff02::1: a multicast address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "239.1.1.1"}, "multicast"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "127.0.0.1"}, "--vip 127.0.0.1: a loopback address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "::1"}, "loopback"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "169.254.1.1"}, "--vip 169.254.1.1: a link-local address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip", "0.1.2.3"}, "--vip 0.1.2.3: in 0.0.0.0/8"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "0.0.0.0/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k"}, "--vip-addr 0.0.0.0: the unspecified address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "224.0.0.1/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k"}, "--vip-addr 224.0.0.1: a multicast address"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.255/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k"}, "--vip-addr 10.0.0.255/24: the broadcast address of 10.0.0.0/24"},
		{[]string{"up", "--once", "-i", "eth0", "--vip-addr", "10.0.0.0/24@eth0", "--vip-peer", "10.0.0.2:1", "--vip-secret", "k"}, "--vip-addr 10.0.0.0/24: the network address of 10.0.0.0/24"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--service", "0.0.0.0:80=10.0.0.2:80"}, "service VIP 0.0.0.0: the unspecified address"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--service", "[ff02::1]:80=[fd00::2]:80"}, "service VIP ff02::1: a multicast address"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--service", "255.255.255.255:80=10.0.0.2:80"}, "broadcast"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--service", "10.0.0.1:80=0.0.0.0:80"}, "backend 0.0.0.0: the unspecified address"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--proxy-mss4", "100"}, "--proxy-mss4 100: between 536 and 65495"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--proxy-mss6", "70000"}, "--proxy-mss6 70000: between 1220 and 65475"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--proxy-syn-retry", "1ms"}, "--proxy-syn-retry 1ms: between 100ms and 10s"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--proxy-syn-tries", "0"}, "--proxy-syn-tries 0: between 1 and 100"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--proxy-syn-tries", "40"}, "expires after 30s"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--proxy-challenge-interval", "2m"}, "--proxy-challenge-interval 2m0s: between 10ms and 1m0s"},
		{[]string{"service", "add", "224.0.0.5:80", "10.0.0.2:80"}, "service VIP 224.0.0.5: a multicast address"},
		{[]string{"service", "add", "10.0.0.5:80", "10.0.0.2:80@x"}, `backend "10.0.0.2:80@x": weight "x": want 0 (drained) to 10000`},
		{[]string{"service", "add", "10.0.0.5:80", "10.0.0.2:80@10001"}, "want 0 (drained) to 10000"},
		{[]string{"up", "--once", "--proxy-iface", "eth0", "--proxy-secret", "k", "--service", "10.0.0.1:80=10.0.0.2:80@-1"}, "want 0 (drained) to 10000"},
		{[]string{"service", "set", "10.0.0.5:80", "10.0.0.2:80"}, "give one of --weight N or --drain"},
		{[]string{"service", "set", "10.0.0.5:80", "10.0.0.2:80", "--weight", "2", "--drain"}, "give one of --weight N or --drain"},
		{[]string{"service", "set", "10.0.0.5:80", "10.0.0.2:80", "--weight", "10001"}, "--weight 10001: 0 (drained) to 10000"},
		{[]string{"service", "set", "10.0.0.5:80", "--drain"}, "set VIP:PORT BACKEND:PORT --weight N|--drain"},
		{[]string{"service", "set", "10.0.0.5", "10.0.0.2:80", "--drain"}, `set "10.0.0.5": want VIP:PORT`},
		{[]string{"service", "list", "--drain"}, "--weight and --drain go with set"},
		{[]string{"up", "--once", "-i", "eth0", "--control-group", "no-such-group-tandem"}, "no such group"},
		{[]string{"down", "--stop-timeout", "0s"}, "--stop-timeout must be positive"},
		{[]string{"dump"}, "name one map"},
		{[]string{"dump", "frob", "--bpffs", "/sys/fs/bpf/tandem-cli-test-none"}, `unknown map "frob"`},
		{[]string{"version", "x"}, "no arguments"},
		{[]string{"certs"}, "name at least one host"},
		{[]string{"certs", "gw=10.0.0"}, "not an IP address"},
	}
	for _, c := range cases {
		args := c.args
		if len(args) > 0 && (args[0] == "up" || args[0] == "service") {
			// A case that slipped through validation must not attach
			// to this machine's eth0: a --bpffs off bpffs stops up
			// before it loads anything.
			args = append(append([]string(nil), args...), "--bpffs", filepath.Join(t.TempDir(), "not-bpffs"), "--state-dir", t.TempDir())
		}
		_, errs, code := run(args...)
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
	for _, want := range []string{"gw-a.pem", "gw-b-key.pem", "ca.pem", ": new,",
		"on gw-a: --sync-name gw-a --sync-peer-name gw-b", "on gw-b: --sync-name gw-b --sync-peer-name gw-a"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q: %s", want, out)
		}
	}
	for h, peer := range map[string]string{"gw-a": "gw-b", "gw-b": "gw-a"} {
		if _, err := syncer.TLSConfig(dir, h, peer); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))

	// Renewing one host keeps the CA and says so.
	out, errs, code = run("certs", "--dir", dir, "gw-b")
	now, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if code != 0 || !strings.Contains(out, "existing one reused") || !bytes.Equal(ca, now) {
		t.Fatalf("renew gw-b: %d %s %s (CA kept: %v)", code, out, errs, bytes.Equal(ca, now))
	}
	// --new-ca replaces it and says every host needs new certificates.
	out, errs, code = run("certs", "--dir", dir, "--new-ca", "gw-a", "gw-b")
	now, _ = os.ReadFile(filepath.Join(dir, "ca.pem"))
	if code != 0 || !strings.Contains(out, "REPLACED") || !strings.Contains(out, "every host") || bytes.Equal(ca, now) {
		t.Fatalf("--new-ca: %d %s %s", code, out, errs)
	}
	if _, errs, code = run("certs", "--dir", dir, "--validity", "0", "gw-a"); code != 2 {
		t.Fatalf("--validity 0: exit %d %s", code, errs)
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

// TestConfigExitCodes: a config file that cannot be used as written
// (syntax, unknown key, bad value) is a usage error, exit 2, for every
// command that reads it; a file that cannot be read is a failure, exit 1.
func TestConfigExitCodes(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, text string
		code       int
		want       string
	}{
		{"syntax", "interfaces = [\"eth0\"\n", 2, "line 1"},
		{"unknown key", "interfaces = [\"eth0\"]\nturbo = true\n", 2, "unknown key(s) turbo"},
		{"wrong type", "interfaces = \"eth0\"\n", 2, "interfaces"},
		{"bad duration", "interfaces = [\"eth0\"]\n[sync]\ninterval = \"often\"\n", 2, "sync.interval"},
		{"bad vip", "interfaces = [\"eth0\"]\n[[vip]]\naddr = \"10.1.2\"\n", 2, "not an IP address"},
		{"multicast vip", "interfaces = [\"eth0\"]\n[[vip]]\naddr = \"224.0.0.1\"\n", 2, "multicast"},
		{"broadcast election addr", "interfaces = [\"eth0\"]\n[election]\naddrs = [\"10.0.0.255/24@eth0\"]\n", 2, "the broadcast address of 10.0.0.0/24"},
		{"bad service", "[proxy]\ninterfaces = [\"eth0\"]\n[[proxy.service]]\nvip = \"10.0.0.1\"\nbackends = [\"10.0.0.2:80\"]\n", 2, "service VIP"},
		{"bad election priority", "interfaces = [\"eth0\"]\n[election]\npriority = 300\n", 2, "election.priority"},
		{"ring too big", "interfaces = [\"eth0\"]\n[sync]\nring_bytes = 2147483648\n", 2, "at most"},
		{"missing", "", 1, "no such file"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".toml")
		if c.text != "" {
			if err := os.WriteFile(path, []byte(c.text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		for _, cmd := range [][]string{{"up", "--once"}, {"status"}, {"dump", "vip_gate"}, {"service", "list"}, {"down"}} {
			if c.name == "ring too big" && cmd[0] != "up" {
				continue // a bound only up applies
			}
			args := append(append([]string(nil), cmd...), "--config", path, "--bpffs", filepath.Join(dir, "no-root"), "--state-dir", dir)
			_, errs, code := run(args...)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Errorf("%s: %v: exit %d, stderr %q; want exit %d saying %q", c.name, cmd, code, errs, c.code, c.want)
			}
		}
	}
}

// TestStatusCorruptSyncFile: a torn or garbled sync status file (a crash
// mid-write, a full disk) says the daemon's status is unavailable and
// leaves the exit status to the datapath: a health check reading exit 1
// must mean a broken datapath, not an unreadable status file.
func TestStatusCorruptSyncFile(t *testing.T) {
	for _, c := range []struct{ name, data string }{
		{"truncated", `{"role": "primary", "node": "ab`},
		{"empty", ""},
		{"garbage", "\x00\x00\x00\x00"},
		{"wrong type", `{"pid": "one"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(syncer.StatusFile(dir), []byte(c.data), 0o644); err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(t.TempDir(), "not-up")
			out, errs, code := run("status", "--bpffs", root, "--state-dir", dir)
			if code != 0 || !strings.Contains(out, "daemon status unavailable") {
				t.Errorf("status: exit %d, stdout %q, stderr %q: want exit 0 and a line saying the daemon status is unavailable", code, out, errs)
			}
			out, errs, code = run("status", "--json", "--bpffs", root, "--state-dir", dir)
			var js struct {
				Sync struct {
					Unavailable string `json:"unavailable"`
				} `json:"sync"`
			}
			if err := json.Unmarshal([]byte(out), &js); code != 0 || err != nil || js.Sync.Unavailable == "" {
				t.Errorf("status --json: exit %d, stdout %q (%v), stderr %q: want exit 0 and sync.unavailable", code, out, err, errs)
			}
		})
	}
}

// TestSyncStatusCerts: tandem status's Sync section shows the peer name
// the daemon admits, the days its certificate and the CA have left, and
// a warning inside the last 30 days; refusals by reason.
func TestSyncStatusCerts(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		host, ca time.Time
		want     []string
		not      string
	}{
		{now.Add(200*24*time.Hour + time.Hour), now.Add(3000*24*time.Hour + time.Hour), []string{"host until", "(200 days left)", "CA until", "(3000 days left)"}, "WARNING"},
		{now.Add(12*24*time.Hour + time.Hour), now.Add(3000*24*time.Hour + time.Hour), []string{"(12 days left) WARNING: renew with tandem certs", "(3000 days left)"}, "EXPIRED"},
		{now.Add(-time.Hour), now.Add(20*24*time.Hour + time.Hour), []string{"host EXPIRED on", "(20 days left) WARNING"}, ""},
	} {
		var b bytes.Buffer
		printSyncStatus(&b, &syncStatus{Running: true, NodeStatus: &syncer.NodeStatus{Role: syncer.RoleStandby, Session: "up", Since: now,
			PeerName: "gw-a", CertNotAfter: c.host, CANotAfter: c.ca, Refused: 3, RefusedBy: map[string]uint64{"name": 2, "handshake": 1}}})
		out := b.String()
		for _, w := range append(c.want, "gw-a (the only certificate admitted)", "3 peers (handshake 1, name 2)") {
			if !strings.Contains(out, w) {
				t.Errorf("status lacks %q:\n%s", w, out)
			}
		}
		if c.not != "" && strings.Contains(out, c.not) {
			t.Errorf("status says %q:\n%s", c.not, out)
		}
	}
}
