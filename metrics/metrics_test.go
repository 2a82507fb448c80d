package metrics_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/metrics"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestCountersCovered: every counter tandem status shows for the gate,
// the SYN proxy and the migration stage has its place in the metrics: a
// drop reason, or its own HELP (a counter added to the datapath without
// one would be exported with a placeholder HELP).
func TestCountersCovered(t *testing.T) {
	for _, name := range maps.ProxyStatNames {
		_, drop := metrics.Drops["synproxy"][name]
		_, help := metrics.SynproxyHelp[name]
		if drop == help {
			t.Errorf("SYN proxy counter %q: a drop %v, has HELP %v; want exactly one (metrics.Drops or metrics.SynproxyHelp)", name, drop, help)
		}
	}
	for _, name := range maps.StatNames {
		_, drop := metrics.Drops["gate"][name]
		if !drop && !strings.HasPrefix(name, "pass_") && name != "tx_vip" {
			t.Errorf("gate counter %q: neither a drop, a pass_ reason nor tx_vip", name)
		}
	}
	for _, name := range maps.MigStatNames {
		_, drop := metrics.Drops["migrate"][name]
		if !drop && !strings.Contains(metrics.FeatureHelp["migrate"], name) {
			t.Errorf("migration counter %q: neither a drop nor named in the HELP of tandem_migrate_packets_total", name)
		}
	}
	for f, drops := range metrics.Drops {
		for name := range drops {
			known := false
			switch f {
			case "synproxy":
				known = slices.Contains(values(maps.ProxyStatNames), name)
			case "gate":
				known = slices.Contains(values(maps.StatNames), name)
			case "migrate":
				known = slices.Contains(maps.MigStatNames, name)
			case "esp":
				known = strings.HasPrefix(name, "drop_")
			}
			if !known {
				t.Errorf("metrics.Drops[%q] names %q, which is no counter of the feature", f, name)
			}
		}
	}
}

func values[K comparable](m map[K]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestFamilies: every family the daemon may export follows Prometheus's
// conventions (docs/metrics.md): the tandem_ prefix, counters end in
// _total and gauges do not, HELP text, no per-connection label; and
// docs/metrics.md names each one.
func TestFamilies(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	valid := regexp.MustCompile(`^tandem_[a-z][a-z0-9_]*$`)
	for name, f := range exported(t) {
		if !valid.MatchString(name) {
			t.Errorf("%s: not a tandem_ metric name", name)
		}
		if f.Help == "" {
			t.Errorf("%s: no HELP", name)
		}
		switch {
		case f.Type == "counter" && !strings.HasSuffix(name, "_total"):
			t.Errorf("%s: a counter whose name does not end in _total", name)
		case f.Type != "counter" && strings.HasSuffix(name, "_total"):
			t.Errorf("%s: a %s whose name ends in _total", name, f.Type)
		}
		for _, l := range f.Labels {
			if slices.Contains([]string{"client", "conn", "connection", "port", "sport", "flow", "src"}, l) {
				t.Errorf("%s: label %q is per connection (unbounded)", name, l)
			}
		}
		if !bytes.Contains(doc, []byte("`"+name+"`")) {
			t.Errorf("%s: not in docs/metrics.md", name)
		}
	}
}

// exported is every family the daemon may export: this package's and the
// state sync's (go_ and process_ aside), by name.
func exported(t *testing.T) map[string]metrics.Family {
	t.Helper()
	out := map[string]metrics.Family{}
	for _, f := range metrics.Families() {
		if _, dup := out[f.Name]; dup {
			t.Errorf("family %s listed twice", f.Name)
		}
		out[f.Name] = f
	}
	m := syncer.NewMetrics(10 * time.Millisecond)
	// Vectors show in a gather once they have a child.
	m.Overflows.WithLabelValues("x")
	m.CertExpiry.WithLabelValues("host")
	mfs, err := m.Reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "tandem_") {
			continue
		}
		typ := strings.ToLower(mf.GetType().String())
		var labels []string
		if len(mf.Metric) > 0 {
			for _, l := range mf.Metric[0].Label {
				labels = append(labels, l.GetName())
			}
		}
		out[name] = metrics.Family{Name: name, Type: typ, Help: mf.GetHelp(), Labels: labels}
	}
	return out
}

// TestElectionMetrics: the election's status as metrics, HELP on every
// family, names promtool accepts.
func TestElectionMetrics(t *testing.T) {
	since := time.Unix(1_700_000_000, 500_000_000)
	st := vip.Status{Owner: true, Healthy: true, CaughtUp: true, Priority: 150, Since: since, Takeovers: 3, Releases: 2,
		Sent: 40, Received: 38, Dropped: 1, SplitBrains: 1, RefusedBy: vip.Refusals{BadMAC: 5, Replay: 2}}
	running := true
	reg := prometheus.NewRegistry()
	reg.MustRegister(&metrics.Election{Status: func() (vip.Status, bool) { return st, running }})
	text := gatherText(t, reg)
	for _, want := range []string{
		"tandem_election_owner 1\n",
		"tandem_election_peer_alive 0\n",
		"tandem_election_priority 150\n",
		"tandem_election_state_since_timestamp_seconds 1.7000000005e+09\n",
		"tandem_election_peer_last_seen_timestamp_seconds 0\n",
		"tandem_election_takeovers_total 3\n",
		"tandem_election_releases_total 2\n",
		"tandem_election_adverts_sent_total 40\n",
		"tandem_election_adverts_received_total 38\n",
		"tandem_election_adverts_dropped_total 1\n",
		`tandem_election_adverts_refused_total{reason="bad_mac"} 5` + "\n",
		`tandem_election_adverts_refused_total{reason="replay"} 2` + "\n",
		`tandem_election_adverts_refused_total{reason="unanswered"} 0` + "\n",
		"tandem_election_split_brains_settled_total 1\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q in:\n%s", want, text)
		}
	}
	CheckExposition(t, text)
	running = false
	if text := gatherText(t, reg); text != "" {
		t.Errorf("no election running, yet metrics:\n%s", text)
	}
}

func gatherText(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// CheckExposition fails unless every family in the text exposition has
// HELP and promtool check metrics finds nothing to say.
func CheckExposition(t *testing.T, text string) {
	t.Helper()
	if err := metrics.CheckHelp(text); err != nil {
		t.Error(err)
	}
	cmd := exec.Command(testenv.RequireCommand(t, "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
