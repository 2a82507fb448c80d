package metrics

import (
	"fmt"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse reads a text exposition (a scrape of /metrics) into its samples,
// keyed by the name and its labels in name order, as in
// `tandem_drops_total{feature="gate",reason="malformed"}`, and its HELP
// texts by family. Histograms and summaries give their _count and _sum.
func Parse(text string) (samples map[string]float64, help map[string]string, err error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, nil, fmt.Errorf("parse the exposition: %w", err)
	}
	samples, help = map[string]float64{}, map[string]string{}
	for name, mf := range mfs {
		help[name] = mf.GetHelp()
		for _, m := range mf.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				samples[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				samples[key] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				samples[key] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				samples[strings.Replace(key, name, name+"_count", 1)] = float64(m.GetHistogram().GetSampleCount())
				samples[strings.Replace(key, name, name+"_sum", 1)] = m.GetHistogram().GetSampleSum()
			case dto.MetricType_SUMMARY:
				samples[strings.Replace(key, name, name+"_count", 1)] = float64(m.GetSummary().GetSampleCount())
				samples[strings.Replace(key, name, name+"_sum", 1)] = m.GetSummary().GetSampleSum()
			}
		}
	}
	return samples, help, nil
}

// CheckHelp says which families of a text exposition have no HELP.
func CheckHelp(text string) error {
	_, help, err := Parse(text)
	if err != nil {
		return err
	}
	var missing []string
	for name, h := range help {
		if strings.TrimSpace(h) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("families without HELP: %s", strings.Join(missing, ", "))
	}
	return nil
}
