// Package deploy holds what installs tandem as a service: the systemd
// unit, the sample config and the Debian package's build (deb/). Its
// tests check them as an operator's machine would take them.
package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/testenv"
)

// unitDirectives reads key=value lines of the unit (repeated keys joined
// by spaces).
func unitDirectives(t *testing.T, unit []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range strings.Split(string(unit), "\n") {
		if l = strings.TrimSpace(l); l == "" || l[0] == '#' || l[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("unit line %q is not KEY=VALUE", l)
		}
		out[k] = strings.TrimSpace(out[k] + " " + v)
	}
	return out
}

// verifyUnit runs systemd-analyze verify on the unit, its ExecStart
// pointed at bin: it must pass without a word (verify exits 0 on unknown
// keys, warning only).
func verifyUnit(t *testing.T, unit []byte, bin string) {
	t.Helper()
	tool := testenv.RequireCommand(t, "systemd-analyze")
	dir := t.TempDir()
	path := filepath.Join(dir, "tandem.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/sbin/tandem"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	// --man=no: the man pages are the package's (TestDeb checks them).
	out, err := exec.Command(tool, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnit: systemd accepts the unit, and it says what the daemon needs:
// Type=notify (the daemon's READY=1), Restart=always (the datapath
// outlives the daemon), the capabilities tandem uses and no others, the
// hardening that leaves BPF alone, and none that would break it.
func TestUnit(t *testing.T) {
	unit, err := os.ReadFile("tandem.service")
	if err != nil {
		t.Fatal(err)
	}
	verifyUnit(t, unit, testenv.Tandem(t))
	d := unitDirectives(t, unit)
	for k, want := range map[string]string{
		"Type": "notify", "Restart": "always", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ProtectHome": "yes", "StateDirectory": "tandem", "ReadWritePaths": "/sys/fs/bpf",
		"ExecStart": "/usr/sbin/tandem up --config /etc/tandem/tandem.toml", "RestartPreventExitStatus": "2",
	} {
		if d[k] != want {
			t.Errorf("%s=%q, want %q", k, d[k], want)
		}
	}
	caps := strings.Fields(d["CapabilityBoundingSet"])
	slices.Sort(caps)
	if want := []string{"CAP_BPF", "CAP_CHOWN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SYS_ADMIN"}; !slices.Equal(caps, want) {
		t.Errorf("CapabilityBoundingSet %v, want %v (each explained in the unit)", caps, want)
	}
	for _, c := range caps {
		if !regexp.MustCompile(`(?m)^#\s+` + c + `\s`).Match(unit) {
			t.Errorf("%s has no comment saying why", c)
		}
	}
	// These would break the datapath: /proc/sys and /sys read-only (pins,
	// accept_local), no host network, bpf(2) filtered out.
	for _, k := range []string{"ProtectKernelTunables", "PrivateNetwork", "SystemCallFilter", "PrivateUsers", "DynamicUser"} {
		if _, set := d[k]; set {
			t.Errorf("%s= is set: it breaks BPF or the datapath", k)
		}
	}
}

// TestDeb: make deb's package (deploy/deb/build.sh) is lintian clean
// (each override explained in deploy/deb/lintian-overrides), keeps the
// operator's config as a conffile, and installed into a scratch root
// (dpkg -x) its binary runs: version, probe, config check of the sample;
// the installed unit passes systemd-analyze verify; every command has its
// man page.
func TestDeb(t *testing.T) {
	testenv.RequireRoot(t)
	if os.Getenv("TANDEM_VMTEST") != "" {
		t.Skip("skipped: the package is built and checked on the host, not inside the VM (TCG: a go build there takes many minutes)")
	}
	for _, c := range []string{"dpkg-deb", "dpkg", "lintian"} {
		testenv.RequireCommand(t, c)
	}
	const version = "0.0~test1"
	out := t.TempDir()
	build := exec.Command(filepath.Join(testenv.RepoRoot(), "deploy", "deb", "build.sh"), version, out)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("deploy/deb/build.sh: %v\n%s", err, b)
	}
	deb := filepath.Join(out, "tandem_"+version+"_amd64.deb")
	if b, err := exec.Command("lintian", "--fail-on", "error,warning", "--pedantic", deb).CombinedOutput(); err != nil {
		t.Errorf("lintian: %v\n%s", err, b)
	}
	for field, want := range map[string]string{"Package": "tandem", "Version": version, "Architecture": "amd64"} {
		if b, err := exec.Command("dpkg-deb", "-f", deb, field).Output(); err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("control %s: %q (%v), want %q", field, b, err, want)
		}
	}
	ctrl := t.TempDir()
	if b, err := exec.Command("dpkg-deb", "-e", deb, ctrl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -e: %v\n%s", err, b)
	}
	if b, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/tandem/tandem.toml" {
		t.Errorf("conffiles: %q, want /etc/tandem/tandem.toml", b)
	}

	root := t.TempDir()
	if b, err := exec.Command("dpkg", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -x: %v\n%s", err, b)
	}
	if fi, err := os.Stat(filepath.Join(root, "var/lib/tandem")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/tandem: %v %v, want a 0700 directory", fi, err)
	}
	pages, _ := filepath.Glob(filepath.Join(root, "usr/share/man/man8/*.8.gz"))
	for _, want := range []string{"tandem.8.gz", "tandem-up.8.gz", "tandem-config.8.gz", "tandem-probe.8.gz"} {
		if !slices.Contains(pages, filepath.Join(root, "usr/share/man/man8", want)) {
			t.Errorf("no man page %s (have %v)", want, pages)
		}
	}
	bin := filepath.Join(root, "usr/sbin/tandem")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"version"}, "tandem " + version + " "},
		{[]string{"probe"}, "ok"},
		{[]string{"config", "check", filepath.Join(root, "etc/tandem/tandem.toml")}, ": ok"},
	} {
		b, err := exec.Command(bin, c.args...).CombinedOutput()
		if err != nil || !strings.Contains(string(b), c.want) {
			t.Errorf("installed tandem %s: %v, want %q in:\n%s", strings.Join(c.args, " "), err, c.want, b)
		}
	}
	unit, err := os.ReadFile(filepath.Join(root, "lib/systemd/system/tandem.service"))
	if err != nil {
		t.Fatal(err)
	}
	verifyUnit(t, unit, bin)
}
