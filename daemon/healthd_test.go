package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/loader"
)

// TestChooseVerdict: the owner uses its own checks, a standby the owner's
// replicated verdicts (its own only where the owner published none), and
// a host that takes over switches to its own at once.
func TestChooseVerdict(t *testing.T) {
	svc := netip.MustParseAddrPort("192.0.2.10:80")
	a := health.Key{Service: svc, Backend: netip.MustParseAddrPort("10.0.0.1:80")}
	b := health.Key{Service: svc, Backend: netip.MustParseAddrPort("10.0.0.2:80")}
	c := health.Key{Service: svc, Backend: netip.MustParseAddrPort("10.0.0.3:80")}
	own := map[health.Key]bool{a: false, b: true}  // this host cannot reach a
	peer := map[health.Key]bool{a: true, c: false} // the owner's: a up, c down
	for _, tc := range []struct {
		owner  bool
		k      health.Key
		up     bool
		source string
		ok     bool
	}{
		{false, a, true, health.SourceOwner, true}, // standby: the owner's, though its own says down
		{false, b, true, health.SourceOwn, true},   // the owner published nothing: its own
		{false, c, false, health.SourceOwner, true},
		{true, a, false, health.SourceOwn, true}, // owner: its own checks only
		{true, b, true, health.SourceOwn, true},
		{true, c, false, health.SourceOwn, false}, // not checked yet: no verdict
	} {
		up, src, ok := chooseVerdict(tc.owner, own, peer, tc.k)
		if up != tc.up || src != tc.source || ok != tc.ok {
			t.Errorf("owner %v, %s: %v %s %v, want %v %s %v", tc.owner, tc.k.Backend, up, src, ok, tc.up, tc.source, tc.ok)
		}
	}
}

func TestHealthOwner(t *testing.T) {
	for _, tc := range []struct {
		role    string
		primary bool
		want    bool
	}{{"", false, true}, {SyncPrimary, false, true}, {SyncStandby, true, false}, {SyncAuto, true, true}, {SyncAuto, false, false}} {
		c := Defaults()
		c.Sync.Role = tc.role
		if got := healthOwner(c, tc.primary); got != tc.want {
			t.Errorf("role %q, elected %v: owner %v, want %v", tc.role, tc.primary, got, tc.want)
		}
	}
}

// TestHealthFlag: --health-check and [proxy.service.check] fill Health.
func TestHealthFlag(t *testing.T) {
	c := Defaults()
	if err := c.ParseHealthFlag("192.0.2.10:80=http,path=/healthz,fall=5"); err != nil {
		t.Fatal(err)
	}
	chk := c.Health[netip.MustParseAddrPort("192.0.2.10:80")]
	if chk.Kind != health.HTTP || chk.Path != "/healthz" || chk.Fall != 5 || chk.Rise != health.DefaultRise {
		t.Errorf("check %+v", chk)
	}
	for _, bad := range []string{"192.0.2.10:80", "192.0.2.10=tcp", "192.0.2.10:80=udp"} {
		if err := c.ParseHealthFlag(bad); err == nil {
			t.Errorf("--health-check %q: no error", bad)
		}
	}
}

// TestHealthConfigFile: [proxy.service.check] is read strictly.
func TestHealthConfigFile(t *testing.T) {
	for _, tc := range []struct {
		name, check string
		err         string // "": valid
	}{
		{"https", "type = \"https\"\ninsecure = true\ninterval = \"500ms\"\ntimeout = \"100ms\"\nrise = 1", ""},
		{"command", "type = \"command\"\ncommand = [\"/bin/true\"]", ""},
		{"unknown key", "type = \"tcp\"\ncolour = \"blue\"", "unknown key"},
		{"bad interval", "type = \"tcp\"\ninterval = \"soon\"", "check interval"},
		{"bad type", "type = \"icmp\"", "check type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tandem.toml")
			data := "[[proxy.service]]\nvip = \"192.0.2.10:443\"\nbackends = [\"10.2.0.11:443\"]\n[proxy.service.check]\n" + tc.check + "\n"
			if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
			c := Defaults()
			fc, err := loader.ReadConfig(path)
			if err == nil {
				err = c.ApplyFile(fc)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := c.Health[netip.MustParseAddrPort("192.0.2.10:443")]; !ok {
				t.Errorf("no check for the service: %+v", c.Health)
			}
		})
	}
}
