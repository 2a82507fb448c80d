package loader_test

import (
	"os"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/lab"
)

// readSysctl reads one sysctl in host h's namespace.
func readSysctl(t *testing.T, h *lab.Host, key string) string {
	t.Helper()
	var out []byte
	if err := h.Do(func() (err error) {
		out, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestDownRestoresSysctls: `up --proxy-iface` sets accept_local on the
// proxy's interface; down puts back the value the interface had before
// the first up, however many ups ran, and an interface that is gone by
// then is not an error.
func TestDownRestoresSysctls(t *testing.T) {
	const key = "net.ipv4.conf.eth0.accept_local"
	for _, tc := range []struct {
		name    string
		ups     int
		delLink bool // the interface is gone before down
	}{
		{"one up", 1, false},
		{"two ups", 2, false},
		{"interface gone", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := gatewayLab(t)
			gw := l.Host("gw")
			secret := t.TempDir() + "/cookie.key"
			if err := os.WriteFile(secret, []byte("a pair's shared cookie secret, 32+ bytes"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := gw.Sysctl(key, "0"); err != nil {
				t.Fatal(err)
			}
			for range tc.ups {
				mustTandem(t, gw, "up", "--once", "--bpffs", gw.BPFFS(), "--proxy-iface", "eth0", "--proxy-secret", secret)
				if got := readSysctl(t, gw, key); got != "1" {
					t.Fatalf("after up: %s = %s, want 1 (the proxy needs it)", key, got)
				}
			}
			if tc.delLink {
				if err := gw.IP("link", "del", "eth0"); err != nil {
					t.Fatal(err)
				}
			}
			r := tandem(t, gw, "down", "--bpffs", gw.BPFFS())
			if r.code != 0 {
				t.Fatalf("down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			if !tc.delLink {
				if got := readSysctl(t, gw, key); got != "0" {
					t.Errorf("after down: %s = %s, want 0 (its value before up)", key, got)
				}
			}
			if _, err := os.Stat(gw.BPFFS()); !os.IsNotExist(err) {
				des, _ := os.ReadDir(gw.BPFFS())
				t.Errorf("after down the root is still there (%v): %v", err, des)
			}
		})
	}
}
