// Package metrics is what the daemon exports on --metrics-addr besides
// the state sync's own metrics (syncer.Metrics): collectors that read the
// datapath's pinned maps at scrape time, so counting costs nothing per
// packet (the programs count in per-CPU maps; a scrape sums the CPUs),
// and the VIP election's state and counters. The readers are the ones
// `tandem status` uses; docs/metrics.md lists every metric.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

const ns = "tandem"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(ns+"_"+name, help, labels, nil)
}

// Family is one metric family the daemon may export.
type Family struct {
	Name, Type, Help string
	Labels           []string
}

// static lists the families with a fixed name, as their descriptions are
// made (counter, gauge).
var static []Family

func counter(name, help string, labels ...string) *prometheus.Desc {
	static = append(static, Family{Name: ns + "_" + name, Type: "counter", Help: help, Labels: labels})
	return desc(name, help, labels...)
}

func gauge(name, help string, labels ...string) *prometheus.Desc {
	static = append(static, Family{Name: ns + "_" + name, Type: "gauge", Help: help, Labels: labels})
	return desc(name, help, labels...)
}

// Families lists every family the collectors of this package may export
// (which ones a scrape shows depends on what is loaded), sorted by name.
// The state sync's are syncer.Metrics'.
func Families() []Family {
	out := slices.Clone(static)
	for _, name := range maps.ProxyStatNames {
		if _, drop := Drops["synproxy"][name]; !drop {
			out = append(out, Family{Name: ns + "_synproxy_" + name + "_total", Type: "counter", Help: synproxyHelp(name)})
		}
	}
	for f := range FeatureHelp {
		out = append(out, Family{Name: ns + "_" + f + "_packets_total", Type: "counter", Help: featureHelp(f), Labels: []string{"result"}})
	}
	slices.SortFunc(out, func(a, b Family) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Drops maps a feature's status counters that count dropped packets to
// the reason label of tandem_drops_total, by feature. Every other counter
// of a feature is exported under the feature's own metrics.
var Drops = map[string]map[string]string{
	"gate": {"drop_malformed": "malformed", "drop_not_owner": "not_owner"},
	"synproxy": {
		"cookie_bad": "cookie_bad", "client_waiting_dropped": "client_waiting", "bad_flags": "bad_flags",
		"fragment": "fragment", "malformed": "malformed", "no_secret": "no_secret",
		"conn_table_full": "conn_table_full", "resize_failed": "resize_failed", "bad_checksum": "bad_checksum",
		"no_backend": "no_backend", "backend_bad_ack": "backend_bad_ack", "not_owner": "not_owner",
		"challenge_ack_limited": "challenge_ack_limited", "rst_out_of_window": "rst_out_of_window",
		"rst_stale": "rst_stale",
	},
	"esp":     {"drop_replay": "replay", "drop_stale": "stale"},
	"migrate": {"hold_overflow": "hold_overflow", "no_route": "no_route", "hold_lost": "hold_lost"},
}

// SynproxyHelp is the HELP of each SYN proxy counter that is not a drop
// (tandem_synproxy_NAME_total), by its status name (maps.ProxyStatNames).
var SynproxyHelp = map[string]string{
	"syn_answered":      "SYNs to a service answered with a cookie SYN-ACK (window 0).",
	"cookie_ok":         "ACKs with a valid cookie: connection entries made.",
	"backend_syn":       "SYNs sent to backends (first tries).",
	"backend_syn_retry": "SYNs sent to backends again (a backend that did not answer).",
	"backend_timeout":   "Backends that never answered: the client got a RST.",
	"backend_refused":   "Backends that refused (RST): the client got a RST.",
	"established":       "Backend SYN-ACKs: backend handshakes completed.",
	"window_update":     "Window updates sent to clients (the backend's window).",
	"to_backend":        "Established segments translated client to backend.",
	"to_client":         "Established segments translated backend to client.",
	"closed":            "Connections closed by FIN both ways or RST.",
	"kernel_forwarded":  "Segments translated, then left to the kernel to forward.",
	"icmp_translated":   "ICMP errors about a proxied flow translated.",
	"challenge_ack":     "Challenge ACKs sent (RFC 5961): a RST in the window, a SYN on a connection.",
}

var (
	dropsDesc = counter("drops_total", "Packets a datapath stage dropped, by feature and reason (tandem status counters; per-CPU values summed).", "feature", "reason")

	gateOwned   = gauge("gate_vip_owned", "1 when this host's VIP gate serves the VIP, 0 when it leaves it to the peer.", "vip")
	gatePackets = counter("gate_vip_packets_total", "Packets to (direction=rx, XDP or TC ingress) and from (direction=tx, TC egress) the VIP that the gate passed.", "vip", "direction")
	gateBytes   = counter("gate_vip_bytes_total", "Bytes to (direction=rx) and from (direction=tx) the VIP that the gate passed.", "vip", "direction")
	gateNotOwn  = counter("gate_vip_not_owner_packets_total", "Packets to the VIP while this host did not own it: dropped with --gate enforce, passed with monitor.", "vip")
	gatePassed  = counter("gate_passed_packets_total", "Packets the gate passed at ingress, by reason: non_ip, non_vip, vip (owned), not_owner (--gate monitor).", "reason")
	gateTx      = counter("gate_tx_vip_packets_total", "Packets from a VIP counted at TC egress.")

	svcSyns    = counter("synproxy_service_syns_total", "SYNs to the service answered with a cookie SYN-ACK.", "service")
	svcCookie  = counter("synproxy_service_cookie_ok_total", "ACKs to the service with a valid cookie: connections made.", "service")
	svcEst     = counter("synproxy_service_established_total", "Backend handshakes of the service completed.", "service")
	svcFailed  = counter("synproxy_service_failed_total", "Backend handshakes of the service that failed (refused or timed out).", "service")
	svcPackets = counter("synproxy_service_packets_total", "Established segments of the service: direction=in client to backend, out backend to client.", "service", "direction")
	svcBytes   = counter("synproxy_service_bytes_total", "Payload bytes of the service: direction=in client to backend, out backend to client.", "service", "direction")
	svcBackend = gauge("synproxy_service_backends", "Backends configured for the service.", "service")
	services   = gauge("synproxy_services", "Services the SYN proxy answers for.")
	connsDesc  = gauge("synproxy_connections", "Entries in the SYN proxy's connection table, by state.", "state")
	connsMax   = gauge("synproxy_connections_max", "Entries the SYN proxy's connection table holds at most.")

	chainClaimed = counter("chain_stage_packets_total", "Packets each stage of an interface's XDP chain claimed (stage=stack: no stage claimed them, passed to the kernel).", "iface", "stage")
	chainMissed  = counter("chain_stage_missed_tail_calls_total", "Tail calls into an empty chain slot: the packet passed to the stack unserved.", "iface", "stage")

	readErrors = gauge("metrics_read_errors", "1 when this scrape could not read a part of the datapath (part=gate, synproxy, chain, FEATURE); the log says why.", "part")
)

// Datapath reads the maps pinned under pins at every scrape. It keeps no
// map open between scrapes: maps replaced under the daemon are read as
// they are pinned now, and a feature that is not loaded exports nothing.
type Datapath struct {
	Pins maps.Pins
	Log  *slog.Logger
}

// Describe sends nothing: the metrics depend on what is loaded, so the
// collector is unchecked (the tests check names and HELP instead).
func (d *Datapath) Describe(chan<- *prometheus.Desc) {}

// Collect reads the datapath.
func (d *Datapath) Collect(ch chan<- prometheus.Metric) {
	counter := func(dc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(dc, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(dc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(dc, prometheus.GaugeValue, v, labels...)
	}
	failed := func(part string, err error) {
		if d.Log != nil {
			d.Log.Warn("metrics: read the datapath", "part", part, "err", err)
		}
		gauge(readErrors, 1, part)
	}
	if err := d.gate(counter, gauge); err != nil {
		failed("gate", err)
	}
	if err := d.synproxy(counter, gauge); err != nil {
		failed("synproxy", err)
	}
	if err := d.chains(counter); err != nil {
		failed("chain", err)
	}
	for _, f := range loader.Features() {
		if f.Counters == nil || f.Name == "synproxy" {
			continue // the SYN proxy's counters come with its services
		}
		c, err := f.Counters(d.Pins)
		if notLoaded(err) {
			continue
		}
		if err != nil {
			failed(f.Name, err)
			continue
		}
		d.feature(ch, f.Name, c)
	}
}

// notLoaded: the feature's pins are not there (it is not configured).
func notLoaded(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, loader.ErrNoProxy) ||
		errors.Is(err, maps.ErrNoESP) || errors.Is(err, maps.ErrMigrateNotLoaded)
}

type emit func(*prometheus.Desc, uint64, ...string)
type emitGauge func(*prometheus.Desc, float64, ...string)

func (d *Datapath) gate(counter emit, gauge emitGauge) error {
	vm, err := maps.OpenVIPMaps(d.Pins)
	if notLoaded(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer vm.Close()
	vips, err := vm.VIPs()
	if err != nil {
		return err
	}
	cs, err := vm.VIPCounters()
	if err != nil {
		return err
	}
	for _, v := range vips {
		a, c := v.Addr.String(), cs[v.Addr]
		owned := 0.0
		if v.Owned {
			owned = 1
		}
		gauge(gateOwned, owned, a)
		counter(gatePackets, c.RxPackets, a, "rx")
		counter(gatePackets, c.TxPackets, a, "tx")
		counter(gateBytes, c.RxBytes, a, "rx")
		counter(gateBytes, c.TxBytes, a, "tx")
		counter(gateNotOwn, c.DropNotOwner, a)
	}
	stats, err := vm.GlobalStats()
	if err != nil {
		return err
	}
	for r, n := range stats {
		name := maps.StatNames[r]
		switch reason, drop := Drops["gate"][name]; {
		case drop:
			counter(dropsDesc, n, "gate", reason)
		case name == "tx_vip":
			counter(gateTx, n)
		default:
			counter(gatePassed, n, strings.TrimPrefix(name, "pass_"))
		}
	}
	return nil
}

func (d *Datapath) synproxy(counter emit, gauge emitGauge) error {
	p, err := loader.OpenProxy(d.Pins)
	if notLoaded(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer p.Close()
	svcs, err := p.ListServices()
	if err != nil {
		return err
	}
	gauge(services, float64(len(svcs)))
	for _, s := range svcs {
		c, err := p.ServiceCounters(s.ID)
		if err != nil {
			return err
		}
		name := s.VIP.String()
		counter(svcSyns, c.Syns, name)
		counter(svcCookie, c.Conns, name)
		counter(svcEst, c.Established, name)
		counter(svcFailed, c.Failed, name)
		counter(svcPackets, c.PktsIn, name, "in")
		counter(svcPackets, c.PktsOut, name, "out")
		counter(svcBytes, c.BytesIn, name, "in")
		counter(svcBytes, c.BytesOut, name, "out")
		gauge(svcBackend, float64(len(s.Backends)), name)
	}
	conns, err := p.ConnCounts()
	if err != nil {
		return fmt.Errorf("count connections: %w", err)
	}
	for _, st := range maps.ConnStateNames {
		gauge(connsDesc, float64(conns[st]), st)
	}
	gauge(connsMax, float64(p.Conns.MaxEntries()))
	stats, err := p.ProxyStats()
	if err != nil {
		return fmt.Errorf("read proxy counters: %w", err)
	}
	for name, n := range stats {
		if reason, drop := Drops["synproxy"][name]; drop {
			counter(dropsDesc, n, "synproxy", reason)
			continue
		}
		counter(synproxyDesc(name), n)
	}
	return nil
}

// synproxyDesc is the metric of a SYN proxy counter that is not a drop.
func synproxyDesc(name string) *prometheus.Desc {
	return desc("synproxy_"+name+"_total", synproxyHelp(name))
}

func synproxyHelp(name string) string {
	if help := SynproxyHelp[name]; help != "" {
		return help
	}
	return "The SYN proxy's " + name + " counter (tandem status)."
}

func featureHelp(name string) string {
	if help := FeatureHelp[name]; help != "" {
		return help
	}
	return "The " + name + " feature's counters (tandem status), by counter."
}

// FeatureHelp is the HELP of the counter families of the features whose
// counters loader.Feature.Counters reads (besides the SYN proxy's).
var FeatureHelp = map[string]string{
	"esp":     "Packets the ESP anti-replay stage judged, by result: passed (to the kernel), no_sa, unjudged, ike, keepalive, short (left to the kernel). Drops are in tandem_drops_total{feature=\"esp\"}.",
	"migrate": "Packets the migration stage handled, by result: forward, to_source, to_dest, held, flushed, ttl_expired (to the stack). Drops are in tandem_drops_total{feature=\"migrate\"}.",
}

// feature exports a feature's status counters: drops in
// tandem_drops_total, the rest as tandem_FEATURE_packets_total{result}.
func (d *Datapath) feature(ch chan<- prometheus.Metric, name string, c map[string]uint64) {
	dc := desc(name+"_packets_total", featureHelp(name), "result")
	for k, n := range c {
		if reason, drop := Drops[name][k]; drop {
			ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(n), name, reason)
			continue
		}
		ch <- prometheus.MustNewConstMetric(dc, prometheus.CounterValue, float64(n), k)
	}
}

func (d *Datapath) chains(counter emit) error {
	all, err := loader.ChainStats(d.Pins)
	if err != nil {
		return err
	}
	for iface, stages := range all {
		for _, s := range stages {
			stage := s.Feature
			if s.Slot == chain.Slots {
				stage = "stack"
			}
			if stage == "" {
				stage = fmt.Sprintf("slot%d", s.Slot)
			}
			counter(chainClaimed, s.Claimed, iface, stage)
			if s.Slot < chain.Slots {
				counter(chainMissed, s.Missed, iface, stage)
			}
		}
	}
	return nil
}
