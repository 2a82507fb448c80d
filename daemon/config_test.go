package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/loader"
)

// TestReadConfig: the daemon's tables of the host config file ([sync],
// [election], state_dir, metrics_addr) land in Config; the datapath's
// keys are loader's (loader.TestReadConfig).
func TestReadConfig(t *testing.T) {
	cases := []struct {
		name, text string
		err        string
		check      func(t *testing.T, c Config)
	}{
		{"election table", `
interfaces = ["eth0"]
[election]
addrs = ["192.0.2.10/24@eth0"]
peers = ["10.9.0.2:7401"]
peer_name = "gw-b"
priority = 200
interval = "50ms"
`, "", func(t *testing.T, c Config) {
			e := c.Elect
			if len(e.Addrs) != 1 || len(e.Peers) != 1 || e.PeerName != "gw-b" || e.Priority != 200 || e.Interval != 50*time.Millisecond {
				t.Errorf("election %+v", e)
			}
		}},
		{"migrate table", `
interfaces = ["eth0"]
[migrate]
listen = "10.9.0.1:7402"
clients = ["hv-1", "hv-2"]
`, "", func(t *testing.T, c Config) {
			if c.Migrate.Listen != "10.9.0.1:7402" || strings.Join(c.Migrate.Clients, ",") != "hv-1,hv-2" {
				t.Errorf("migrate options %+v", c.Migrate)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
			c.Migrate.Clients = nil
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--migrate-clients") {
				t.Errorf("a listener with no client allowed: %v, want an error naming --migrate-clients", err)
			}
			c.Migrate.Clients, c.Migrate.Listen = []string{"hv-1"}, "10.9.0.1"
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--migrate-listen") {
				t.Errorf("listen without a port: %v, want an error naming --migrate-listen", err)
			}
		}},
		{"sync table", `
interfaces = ["eth0"]
state_dir = "/var/lib/x"
metrics_addr = "127.0.0.1:9474"
[sync]
role = "primary"
peer = "192.0.2.2:7400"
certs = "/etc/x/certs"
name = "gw-a"
peer_name = "gw-b"
interval = "20ms"
journal = 1000
journal_mib = 8
ring_bytes = 65536
test_iface = "cmd0"
`, "", func(t *testing.T, c Config) {
			want := SyncOptions{Role: "primary", Peer: "192.0.2.2:7400", Listen: "0.0.0.0:7400", Certs: "/etc/x/certs", Name: "gw-a", PeerName: "gw-b", Interval: 20 * time.Millisecond, Journal: 1000, JournalMiB: 8}
			if c.Sync != want || c.StateDir != "/var/lib/x" || c.MetricsAddr != "127.0.0.1:9474" || c.Datapath.RingBytes != 65536 || c.Datapath.SyncTestIface != "cmd0" {
				t.Errorf("sync options %+v (state %s, metrics %s, ring %d, test %s)", c.Sync, c.StateDir, c.MetricsAddr, c.Datapath.RingBytes, c.Datapath.SyncTestIface)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
		}},

		{"bad sync interval", "[sync]\ninterval = \"often\"", "sync.interval", nil},
		{"bad election priority", "[election]\npriority = 300", "election.priority", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tandem.toml")
			os.WriteFile(path, []byte(c.text), 0o644)
			cfg := Defaults()
			fc, err := loader.ReadConfig(path)
			if err == nil {
				err = cfg.ApplyFile(fc)
			}
			if c.check == nil {
				if err == nil {
					t.Fatal("accepted")
				}
				if !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %q lacks %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg)
		})
	}
}
