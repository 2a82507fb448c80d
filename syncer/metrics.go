package syncer

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are what a node exports on --metrics-addr, in its own registry
// (two nodes in one process, as in tests, never collide).
type Metrics struct {
	Reg *prometheus.Registry

	Ticks          prometheus.Counter
	RingRecords    prometheus.Counter
	RingDepth      prometheus.Gauge
	Overflows      *prometheus.CounterVec
	Rescans        prometheus.Counter
	DeltasSent     prometheus.Counter
	DeltasApplied  prometheus.Counter
	Lag            prometheus.Histogram
	JournalEntries prometheus.Gauge
	JournalBytes   prometheus.Gauge
	Unacked        prometheus.Gauge
	Resyncs        *prometheus.CounterVec
	SessionUp      prometheus.Gauge
	Refused        *prometheus.CounterVec
	CertExpiry     *prometheus.GaugeVec
	Closed         prometheus.Counter
	LastSent       prometheus.Gauge
	Acked          prometheus.Gauge
	LastApplied    prometheus.Gauge
}

// NewMetrics makes the metrics of a node whose timer ticks every interval;
// the lag histogram's buckets are multiples of it.
func NewMetrics(interval time.Duration) *Metrics {
	f := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "tandem", Subsystem: "sync", Name: name, Help: help}
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts(f(name, help)))
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts(f(name, help)))
	}
	var buckets []float64
	for _, t := range []float64{0.25, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 500} {
		buckets = append(buckets, t*interval.Seconds())
	}
	m := &Metrics{
		Reg:            prometheus.NewRegistry(),
		Ticks:          counter("ticks_total", "Timer ticks that drained the dirty rings."),
		RingRecords:    counter("ring_records_total", "Records drained from the per-CPU dirty rings."),
		RingDepth:      gauge("ring_depth", "Records the last tick found in the dirty rings (all CPUs)."),
		Overflows:      prometheus.NewCounterVec(prometheus.CounterOpts(f("ring_overflows_total", "Records lost to a full dirty ring, by map (each answered by a rescan).")), []string{"map"}),
		Rescans:        counter("rescans_total", "Whole-map rescans sent after a ring overflow."),
		DeltasSent:     counter("deltas_sent_total", "Deltas sent to the peer (live ticks and resyncs)."),
		DeltasApplied:  counter("deltas_applied_total", "Deltas applied from the peer."),
		Lag:            prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "tandem", Subsystem: "sync", Name: "lag_seconds", Help: "Replication lag: from the tick that sent a delta to the peer's ack of it.", Buckets: buckets}),
		JournalEntries: gauge("journal_entries", "Deltas held in the journal for a reconnecting peer."),
		JournalBytes:   gauge("journal_bytes", "Bytes of keys and values held in the journal."),
		Unacked:        gauge("unacked", "Deltas sent and not yet acknowledged."),
		Resyncs:        prometheus.NewCounterVec(prometheus.CounterOpts(f("resyncs_total", "Resyncs by the mode chosen.")), []string{"mode"}),
		SessionUp:      gauge("session_up", "1 while a sync session with the peer is open."),
		Refused:        prometheus.NewCounterVec(prometheus.CounterOpts(f("peers_refused_total", "Connections refused at the TLS handshake or hello, by reason: handshake (not TLS, another CA, too slow), name (a certificate of the pair's CA for another host than the peer), hello, busy (too many handshakes at once).")), []string{"reason"}),
		CertExpiry:     prometheus.NewGaugeVec(prometheus.GaugeOpts(f("cert_expiry_seconds", "Seconds until a certificate expires, negative once it has: cert=host is this host's sync certificate, cert=ca the pair CA.")), []string{"cert"}),
		Closed:         counter("sessions_closed_total", "Sessions closed for a bad frame or delta."),
		LastSent:       gauge("last_sent_seq", "Sequence number of the last delta sent."),
		Acked:          gauge("acked_seq", "Highest sequence number the peer acknowledged."),
		LastApplied:    gauge("last_applied_seq", "Sequence number of the last delta applied."),
	}
	for _, mode := range []Mode{ModeAligned, ModeJournal, ModeIncremental, ModeFull} {
		m.Resyncs.WithLabelValues(string(mode))
	}
	for _, r := range RefuseReasons {
		m.Refused.WithLabelValues(r)
	}
	m.Reg.MustRegister(m.Ticks, m.RingRecords, m.RingDepth, m.Overflows, m.Rescans, m.DeltasSent,
		m.DeltasApplied, m.Lag, m.JournalEntries, m.JournalBytes, m.Unacked, m.Resyncs, m.SessionUp,
		m.Refused, m.CertExpiry, m.Closed, m.LastSent, m.Acked, m.LastApplied,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
