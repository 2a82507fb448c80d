package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/metrics"
	"github.com/tandem-net/tandem/syncer/vip"
)

// daemonMetrics are the metrics the endpoint serves besides the sync's:
// the datapath's counters, read from the maps pinned under pins at each
// scrape, and the running election's status (the one newVipd last
// started; none while no election runs).
func (d *syncd) daemonMetrics(pins maps.Pins) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		&metrics.Datapath{Pins: pins, Log: d.log},
		&metrics.Election{Status: func() (vip.Status, bool) {
			m := d.election.Load()
			if m == nil {
				return vip.Status{}, false
			}
			return m.Status(), true
		}},
	)
	return reg
}
