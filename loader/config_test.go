package loader

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReadConfig(t *testing.T) {
	cases := []struct {
		name, text string
		err        string
		check      func(t *testing.T, o Options)
	}{
		{"full", `
bpffs = "/sys/fs/bpf/x"
interfaces = ["eth0", "eth1"]
xdp_mode = "generic"
ingress = "tc"
tc = "clsact"
gate = "monitor"
[[vip]]
addr = "192.0.2.10"
[[vip]]
addr = "2001:db8::10"
owned = false
`, "", func(t *testing.T, o Options) {
			if o.Pins.Root != "/sys/fs/bpf/x" || len(o.Interfaces) != 2 || o.XDPMode != "generic" || o.Ingress != "tc" || o.TC != "clsact" || o.Gate != "monitor" {
				t.Errorf("options %+v", o)
			}
			if !o.VIPs[netip.MustParseAddr("192.0.2.10")] || o.VIPs[netip.MustParseAddr("2001:db8::10")] || len(o.VIPs) != 2 {
				t.Errorf("vips %v", o.VIPs)
			}
		}},
		{"migrate", `
[migrate]
interfaces = ["eth1"]
hold_packets = 1000
encap_sources = ["192.0.2.2", "2001:db8::2"]
`, "", func(t *testing.T, o Options) {
			if len(o.Migrate.Ifaces) != 1 || o.Migrate.HoldPackets != 1000 || strings.Join(o.Migrate.EncapSrc, ",") != "192.0.2.2,2001:db8::2" {
				t.Errorf("migrate options %+v", o.Migrate)
			}
		}},
		{"defaults kept", `interfaces = ["eth0"]`, "", func(t *testing.T, o Options) {
			if o.Pins.Root != "/sys/fs/bpf/tandem" || o.XDPMode != XDPAuto || o.Gate != GateEnforce {
				t.Errorf("defaults lost: %+v", o)
			}
		}},
		{"ipv4-mapped vip is ipv4", "[[vip]]\naddr = \"::ffff:192.0.2.1\"", "", func(t *testing.T, o Options) {
			if !o.VIPs[netip.MustParseAddr("192.0.2.1")] {
				t.Errorf("vips %v", o.VIPs)
			}
		}},
		{"esp interfaces", "interfaces = [\"eth0\"]\n[esp]\ninterfaces = [\"eth0\", \"eth1\"]", "", func(t *testing.T, o Options) {
			if len(o.ESP.Ifaces) != 2 || o.ESP.Ifaces[1] != "eth1" {
				t.Errorf("esp interfaces %v", o.ESP.Ifaces)
			}
			if err := o.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
		}},
		{"service weights", `
[proxy]
interfaces = ["eth1"]
secret_file = "/etc/tandem/cookie.key"
[[proxy.service]]
vip = "192.0.2.10:443"
backends = ["10.2.0.11:443@3", "10.2.0.12:443", "10.2.0.13:443@0"]
`, "", func(t *testing.T, o Options) {
			if len(o.Proxy.Services) != 1 || fmt.Sprint(o.Proxy.Services[0].Weights) != "[3 1 0]" || o.Proxy.Services[0].Backends[2] != netip.MustParseAddrPort("10.2.0.13:443") {
				t.Errorf("services %+v", o.Proxy.Services)
			}
		}},
		{"service weight out of range", "[[proxy.service]]\nvip = \"192.0.2.10:443\"\nbackends = [\"10.2.0.11:443@99999\"]", "weight \"99999\": want 0 (drained) to 10000", nil},
		{"proxy settings", `
[proxy]
interfaces = ["eth1"]
secret_file = "/etc/tandem/cookie.key"
mss4 = 1400
mss6 = 1380
syn_retry = "2s"
syn_tries = 6
challenge_interval = "1s"
`, "", func(t *testing.T, o Options) {
			p := o.Proxy
			if p.MSS4 != 1400 || p.MSS6 != 1380 || p.SynRetry != 2*time.Second || p.SynTries != 6 || p.ChallengeInterval != time.Second {
				t.Errorf("proxy settings %+v", p)
			}
			if err := o.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
		}},
		{"proxy settings default", "[proxy]\ninterfaces = [\"eth1\"]", "", func(t *testing.T, o Options) {
			p := o.Proxy
			if p.MSS4 != DefaultMSS4 || p.MSS6 != DefaultMSS6 || p.SynRetry != DefaultSynRetry || p.SynTries != DefaultSynTries || p.ChallengeInterval != DefaultChallengeInterval {
				t.Errorf("proxy settings %+v", p)
			}
		}},
		// Out of bounds: Apply takes the value, Validate names the range.
		{"proxy mss4 too small", "[proxy]\nmss4 = 500", "--proxy-mss4 500: between 536 and 65495", validateErr},
		{"proxy mss6 too large", "[proxy]\nmss6 = 65476", "--proxy-mss6 65476: between 1220 and 65475", validateErr},
		{"proxy syn_retry too long", "[proxy]\nsyn_retry = \"11s\"", "--proxy-syn-retry 11s: between 100ms and 10s", validateErr},
		{"proxy syn_tries past the entry's timeout", "[proxy]\nsyn_retry = \"10s\"\nsyn_tries = 5", "expires after 30s", validateErr},
		{"proxy challenge_interval too short", "[proxy]\nchallenge_interval = \"1ms\"", "--proxy-challenge-interval 1ms: between 10ms and 1m0s", validateErr},
		{"bad proxy duration", "[proxy]\nsyn_retry = \"soon\"", "proxy.syn_retry", nil},
		{"unknown proxy key", "[proxy]\nmss = 1400", "proxy.mss", nil},
		{"unknown sync key", "[sync]\nrole = \"primary\"\npeers = [\"x\"]", "sync.peers", nil},
		{"syntax error", "interfaces = [\"eth0\"\n", "line", nil},
		{"unknown key", "interface = [\"eth0\"]", "unknown key(s) interface", nil},
		{"unknown vip key", "[[vip]]\naddr = \"192.0.2.1\"\nport = 80", "vip.port", nil},
		{"wrong type", "interfaces = \"eth0\"", "", nil},
		{"bad vip", "[[vip]]\naddr = \"192.0.2\"", "not an IP address", nil},
		{"duplicate vip", "[[vip]]\naddr = \"192.0.2.1\"\n[[vip]]\naddr = \"192.0.2.1\"", "listed twice", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tandem.toml")
			os.WriteFile(path, []byte(c.text), 0o644)
			o := Defaults()
			fc, err := ReadConfig(path)
			if err == nil {
				err = fc.Apply(&o)
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
			if c.err != "" {
				o.Interfaces = []string{"eth0"}
				err := o.Validate()
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("validate: %v, want an error with %q", err, c.err)
				}
			}
			c.check(t, o)
		})
	}
}

// validateErr is a check for a config that applies but must not validate:
// the case's err names what Validate must say.
var validateErr = func(t *testing.T, o Options) { t.Helper() }

func TestParseVIP(t *testing.T) {
	cases := []struct {
		in    string
		addr  string
		owned bool
		bad   bool
	}{
		{"10.0.0.1", "10.0.0.1", true, false},
		{"10.0.0.1=owned", "10.0.0.1", true, false},
		{"10.0.0.1=standby", "10.0.0.1", false, false},
		{"2001:db8::1=standby", "2001:db8::1", false, false},
		{"fe80::1%eth0", "", false, true},
		{"10.0.0.1=boss", "", false, true},
		{"", "", false, true},
	}
	for _, c := range cases {
		a, owned, err := ParseVIP(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("%q accepted", c.in)
			}
			continue
		}
		if err != nil || a.String() != c.addr || owned != c.owned {
			t.Errorf("%q: %v %v %v", c.in, a, owned, err)
		}
	}
}

func TestExpectedPins(t *testing.T) {
	o := Defaults()
	o.Interfaces = []string{"eth0"}
	o.TC = TCClsact
	if got := strings.Join(o.ExpectedPins(), " "); got != "xdp@eth0 cls-egress:gate@eth0" {
		t.Errorf("xdp+clsact: %s", got)
	}
	o.TC, o.Ingress = TCTCX, IngressTC
	if got := strings.Join(o.ExpectedPins(), " "); got != "tcx-ingress:gate@eth0 tcx-egress:gate@eth0" {
		t.Errorf("tc+tcx: %s", got)
	}
	// Several features on one interface: one XDP chain, TC programs per
	// feature in chain order (gate before proxy on a shared hook).
	o.Ingress = IngressXDP
	o.Proxy.Ifaces = []string{"eth1", "eth0"}
	if got := strings.Join(o.ExpectedPins(), " "); got != "xdp@eth0 tcx-ingress:synproxy@eth0 tcx-egress:gate@eth0 xdp@eth1 tcx-ingress:synproxy@eth1" {
		t.Errorf("gate+proxy: %s", got)
	}
	o.Ingress = IngressTC
	if got := strings.Join(o.ExpectedPins(), " "); got != "xdp@eth0 tcx-ingress:gate@eth0 tcx-ingress:synproxy@eth0 tcx-egress:gate@eth0 xdp@eth1 tcx-ingress:synproxy@eth1" {
		t.Errorf("tc gate+proxy: %s", got)
	}
	// ... which Validate refuses: the gate would judge after the proxy.
	o.Proxy.SecretFile = "/dev/null"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "interface eth0: --ingress tc would run the VIP gate after") {
		t.Errorf("--ingress tc with the proxy on the gate's interface: %v", err)
	}
	o.Proxy.Ifaces = []string{"eth1"}
	if err := o.Validate(); err != nil {
		t.Errorf("--ingress tc, the proxy on its own interface: %v", err)
	}
}
