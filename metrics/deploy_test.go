package metrics_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/tools/testenv"
)

func deployFile(t *testing.T, parts ...string) string {
	return filepath.Join(append([]string{testenv.RepoRoot(), "deploy"}, parts...)...)
}

// TestAlertRules: promtool accepts deploy/prometheus/alerts.yml, and its
// unit tests (alerts_test.yml: which alert fires on which series, and
// which stays quiet) pass.
func TestAlertRules(t *testing.T) {
	promtool := testenv.RequireCommand(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = deployFile(t, "prometheus")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

var metricName = regexp.MustCompile(`\btandem_[a-z0-9_]+`)

// usedNames checks every tandem_ metric name in text (PromQL) against
// the families the daemon exports (histograms by their _bucket, _sum and
// _count series); it returns how many it found.
func usedNames(t *testing.T, where, text string, families map[string]string) int {
	t.Helper()
	names := metricName.FindAllString(text, -1)
	for _, n := range names {
		if _, ok := families[n]; ok {
			continue
		}
		base := n
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, s)
		}
		if typ := families[base]; typ == "histogram" || typ == "summary" {
			continue
		}
		t.Errorf("%s: %s is no metric the daemon exports", where, n)
	}
	return len(names)
}

func familyTypes(t *testing.T) map[string]string {
	out := map[string]string{}
	for name, f := range exported(t) {
		out[name] = f.Type
	}
	return out
}

// TestDashboard: deploy/grafana/tandem.json is a Grafana dashboard whose
// every query (panels, the instance variable, annotations) names only
// metrics the daemon exports.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(deployFile(t, "grafana", "tandem.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("tandem.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("tandem.json: uid %q, title %q, %d panels", dash.UID, dash.Title, len(dash.Panels))
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if !metricName.MatchString(tg.Expr) {
				t.Errorf("panel %q: query %q names no tandem metric", p.Title, tg.Expr)
			}
		}
	}
	// Every string in the dashboard that is a query: targets, the
	// variables' and the annotations' queries.
	var all []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(x, k)
			}
		case []any:
			for _, x := range v {
				walk(x, key)
			}
		case string:
			if key == "expr" || key == "query" || key == "definition" {
				all = append(all, v)
			}
		}
	}
	var raw any
	json.Unmarshal(b, &raw)
	walk(raw, "")
	families := familyTypes(t)
	n := 0
	for _, q := range all {
		n += usedNames(t, "tandem.json", q, families)
	}
	if n < 20 {
		t.Errorf("the dashboard names %d metrics in its queries; want them read", n)
	}
	checkPromQL(t, all)
}

// checkPromQL has promtool parse each PromQL query (Grafana's variables
// put in, its label_values() left out) as a recording rule.
func checkPromQL(t *testing.T, queries []string) {
	t.Helper()
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	r := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*")
	for i, q := range queries {
		if strings.HasPrefix(q, "label_values(") {
			continue
		}
		b, _ := json.Marshal(r.Replace(q))
		fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", i, b)
	}
	f := filepath.Join(t.TempDir(), "dashboard.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testenv.RequireCommand(t, "promtool"), "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("the dashboard's queries, as rules: promtool check rules: %v\n%s\n%s", err, out, rules.String())
	}
}

// TestAlertNames: the alert rules name only metrics the daemon exports.
func TestAlertNames(t *testing.T) {
	b, err := os.ReadFile(deployFile(t, "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if n := usedNames(t, "alerts.yml", string(b), familyTypes(t)); n == 0 {
		t.Error("alerts.yml names no tandem metric")
	}
}
