package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/testenv"
)

// TestConfigCheck: config check runs up's checks on a file without the
// machine: every problem one line each and exit 2, "ok" and 0 for a good
// file (the sample the package installs too), 1 for a file it cannot read.
func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	sample, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "deploy", "tandem.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		file string // "": none written (unreadable)
		code int
		want []string // lines of stderr (each once), or stdout for 0
	}{
		{"the packaged sample", string(sample), 0, []string{": ok"}},
		{"a pair", `
interfaces = ["eth0"]
metrics_addr = "127.0.0.1:9474"
[sync]
role = "auto"
peer = "192.0.2.2:7400"
name = "gw-a"
peer_name = "gw-b"
[election]
addrs = ["192.0.2.10/24@eth0"]
peers = ["192.0.2.2:7401"]
priority = 150
interval = "50ms"
[proxy]
interfaces = ["eth1"]
secret_file = "/etc/tandem/cookie.key"
[[proxy.service]]
vip = "192.0.2.10:443"
backends = ["10.2.0.11:443"]
`, 0, []string{": ok"}},
		{"every problem listed", `
interfaces = ["eth0", "eth0"]
gate = "maybe"
[[vip]]
addr = "224.0.0.1"
[[vip]]
addr = "not-an-ip"
[sync]
role = "primary"
interval = "soon"
[election]
priority = 300
`, 2, []string{
			"vip #1: 224.0.0.1: a multicast address",
			`vip #2: "not-an-ip" is not an IP address`,
			`sync.interval "soon"`,
			"election.priority 300: 0 to 255",
			`--gate "maybe"`,
			"interface eth0 named twice",
			"--sync-role primary: name the standby",
			"7 problems in",
		}},
		{"ranges", `
interfaces = ["eth0"]
[sync]
role = "standby"
interval = "1h"
ring_bytes = 1000
[proxy]
interfaces = ["eth1"]
secret_file = "/k"
syn_retry = "forever"
`, 2, []string{"--sync-interval 1h0m0s", "--sync-ring-bytes", `proxy.syn_retry "forever"`, "3 problems in"}},
		{"syntax", "interfaces = [\"eth0\"\n", 2, []string{"line", "1 problem in"}},
		{"unknown keys", "interfaces = [\"eth0\"]\nfrob = 1\n[sync]\nrole2 = \"x\"\n", 2, []string{"unknown key(s) frob, sync.role2"}},
		{"no interface", "gate = \"monitor\"\n", 2, []string{"no interface"}},
		{"unreadable", "", 1, []string{"read config"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".toml")
			if tc.file != "" {
				if err := os.WriteFile(path, []byte(tc.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out, errs, code := run("config", "check", path)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errs)
			}
			got := errs
			if tc.code == 0 {
				got = out
			}
			for _, w := range tc.want {
				if n := strings.Count(got, w); n != 1 {
					t.Errorf("%q appears %d times, want once:\n%s", w, n, got)
				}
			}
			if tc.code == 2 {
				// One problem a line, each naming the file; then the summary.
				lines := strings.Split(strings.TrimSpace(errs), "\n")
				for _, l := range lines[:len(lines)-1] {
					if !strings.HasPrefix(l, path+": ") {
						t.Errorf("problem line does not name the file: %q", l)
					}
				}
			}
		})
	}
	for _, args := range [][]string{{"config"}, {"config", "lint", "x"}, {"config", "check"}, {"config", "check", "a", "b"}} {
		if _, _, code := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
