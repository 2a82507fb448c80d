package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

// backendMetrics exports the SYN proxy's backends on --metrics-addr, read
// from the pinned maps at each scrape (what tandem service list shows):
// new connections, weight, drain and share of the Maglev table per
// backend.
type backendMetrics struct {
	open                        func() (*maps.SynproxyMaps, func(), error)
	conns, weight, drained, shr *prometheus.Desc
}

func newBackendMetrics(open func() (*maps.SynproxyMaps, func(), error)) *backendMetrics {
	labels := []string{"service", "backend"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("tandem", "synproxy_backend", name), help, labels, nil)
	}
	return &backendMetrics{open: open,
		conns:   d("connections_total", "New connections sent to the backend (cookie ACKs that made an entry)."),
		weight:  d("weight", "The backend's weight in its service's Maglev table (0: drained)."),
		drained: d("drained", "1 while the backend is drained (weight 0): no new connections."),
		shr:     d("table_share", "The backend's fraction of its service's installed Maglev table."),
	}
}

// pinnedProxy opens the pinned proxy maps for a scrape.
func pinnedProxy(pins maps.Pins) func() (*maps.SynproxyMaps, func(), error) {
	return func() (*maps.SynproxyMaps, func(), error) {
		p, err := loader.OpenProxy(pins)
		if err != nil {
			return nil, nil, err
		}
		return p.SynproxyMaps, p.Close, nil
	}
}

func (b *backendMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- b.conns
	ch <- b.weight
	ch <- b.drained
	ch <- b.shr
}

// registry puts the collector in a registry of its own, for the
// endpoint's gatherers.
func (b *backendMetrics) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(b)
	return reg
}

// Collect exports nothing when no proxy is pinned or a read fails: a
// scrape never fails for the proxy's sake.
func (b *backendMetrics) Collect(ch chan<- prometheus.Metric) {
	m, done, err := b.open()
	if err != nil {
		return
	}
	defer done()
	svcs, err := m.ListServices()
	if err != nil {
		return
	}
	for _, s := range svcs {
		states, err := m.BackendStates(s)
		if err != nil {
			continue
		}
		for _, st := range states {
			l := []string{s.VIP.String(), st.Addr.String()}
			ch <- prometheus.MustNewConstMetric(b.conns, prometheus.CounterValue, float64(st.Conns), l...)
			ch <- prometheus.MustNewConstMetric(b.weight, prometheus.GaugeValue, float64(st.Weight), l...)
			drained := 0.0
			if st.Drained {
				drained = 1
			}
			ch <- prometheus.MustNewConstMetric(b.drained, prometheus.GaugeValue, drained, l...)
			ch <- prometheus.MustNewConstMetric(b.shr, prometheus.GaugeValue, st.Share, l...)
		}
	}
}
