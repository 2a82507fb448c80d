package loader_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/lab"
)

// TestUpDottedInterface: a VLAN interface is named eth0.100, and bpffs
// refuses a '.' in any name. up on it (gate and SYN proxy in one chain,
// the proxy's accept_local recorded under the root) works, status shows
// it healthy, and down removes every pin and restores the sysctl.
func TestUpDottedInterface(t *testing.T) {
	const (
		iface = "eth0.100"
		key   = "net/ipv4/conf/eth0.100/accept_local"
	)
	l := gatewayLab(t)
	gw := l.Host("gw")
	// A veth with a VLAN's name: kernels built without 802.1q (this
	// VM's) have no vlan links, and the name is what is under test.
	if err := gw.IP("link", "add", iface, "type", "veth", "peer", "name", "p100"); err != nil {
		t.Fatal(err)
	}
	for _, dev := range []string{iface, "p100"} {
		if err := gw.IP("link", "set", dev, "up"); err != nil {
			t.Fatal(err)
		}
	}
	if err := gw.Do(func() error { return os.WriteFile("/proc/sys/"+key, []byte("0"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	secret := t.TempDir() + "/cookie.key"
	if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := []string{"up", "--once", "--bpffs", gw.BPFFS(), "-i", iface, "--vip", vip4.String(), "--proxy-iface", iface, "--proxy-secret", secret}
	mustTandem(t, gw, up...)
	mustTandem(t, gw, up...) // again: the slots are swapped, the pins found
	st := status(t, gw)
	chained := false
	for _, a := range st.Attachments {
		if a.Iface != iface {
			t.Errorf("attachment %s on %q, want %s", a.Pin, a.Iface, iface)
		}
		if a.Hook == "xdp" && len(a.Chain) == 3 && a.Chain[0].ProgID != 0 && a.Chain[1].ProgID != 0 {
			chained = true
		}
	}
	if !chained || !st.Healthy() {
		t.Fatalf("status: %+v: want %s healthy with the gate and the proxy in its chain", st.Attachments, iface)
	}
	if got := procSys(t, gw, key); got != "1" {
		t.Fatalf("after up: %s = %s, want 1", key, got)
	}
	r := tandem(t, gw, "down", "--bpffs", gw.BPFFS())
	if r.code != 0 {
		t.Fatalf("down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if got := procSys(t, gw, key); got != "0" {
		t.Errorf("after down: %s = %s, want 0 (its value before up)", key, got)
	}
	if _, err := os.Stat(gw.BPFFS()); !os.IsNotExist(err) {
		des, _ := os.ReadDir(gw.BPFFS())
		t.Errorf("after down the root is still there (%v): %v", err, des)
	}
}

// procSys reads /proc/sys/path in h's namespace (readSysctl's dotted keys
// cannot name an interface with a dot).
func procSys(t *testing.T, h *lab.Host, path string) string {
	t.Helper()
	var out []byte
	if err := h.Do(func() (err error) {
		out, err = os.ReadFile("/proc/sys/" + path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestUpRefusesOpenRoot: up pins, loads pinned maps by name and records
// sysctls under the root, then trusts all of it as root; a root (or a
// directory in it) that someone else made or may write, as anyone can
// in a bpffs mounted open to all, is refused before anything is loaded.
func TestUpRefusesOpenRoot(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  string // under the root; "" for the root itself
		mode os.FileMode
		uid  int
	}{
		{"root writable by others", "", 0o777, 0},
		{"root owned by another user", "", 0o700, 65534},
		{"maps directory writable by the group", "maps", 0o770, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := gatewayLab(t)
			gw := l.Host("gw")
			dir := filepath.Join(gw.BPFFS(), tc.dir)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, tc.uid, tc.uid); err != nil {
				t.Fatal(err)
			}
			r := tandem(t, gw, "up", "--once", "-i", "eth0", "--bpffs", gw.BPFFS())
			if r.code != 1 || !strings.Contains(r.stderr, dir) {
				t.Fatalf("exit %d, stderr %q: want a refusal naming %s", r.code, r.stderr, dir)
			}
			des, _ := os.ReadDir(filepath.Join(gw.BPFFS(), "attach"))
			if len(des) != 0 {
				t.Errorf("the refused up attached %v", des)
			}
			// down of a root someone else may have filled: what it would
			// remove is only what tandem names, so it runs; put the
			// root back as tandem makes it for the lab's cleanup.
			os.Chmod(dir, 0o700)
			os.Chown(dir, 0, 0)
		})
	}
}
