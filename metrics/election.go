package metrics

import (
	"reflect"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-net/tandem/syncer/vip"
)

var (
	electOwner     = gauge("election_owner", "1 while this host owns the VIPs (it won the election), else 0.")
	electPrimary   = gauge("election_sync_primary", "1 while the election makes this host the state sync's primary.")
	electHealthy   = gauge("election_healthy", "1 while this host can serve (interfaces up, datapath intact); an unhealthy host gives the VIPs up.")
	electCaughtUp  = gauge("election_caught_up", "1 while this host's state is as fresh as the owner's (a standby that may take over without loss).")
	electPriority  = gauge("election_priority", "This host's election priority (--vip-priority).")
	electSince     = gauge("election_state_since_timestamp_seconds", "When this host last took or gave up the VIPs (Unix time); with tandem_election_owner, the owner since.")
	electPeerAlive = gauge("election_peer_alive", "1 while the peer's adverts arrive (one within --vip-dead intervals).")
	electPeerOwner = gauge("election_peer_owner", "1 when the peer's last advert said it owns the VIPs.")
	electPeerSeen  = gauge("election_peer_last_seen_timestamp_seconds", "When the last verified advert from the peer arrived (Unix time); 0: never since the election started.")
	electTakeovers = counter("election_takeovers_total", "Times this host took the VIPs (failovers, handovers to it, elections won).")
	electReleases  = counter("election_releases_total", "Times this host gave the VIPs up.")
	electSent      = counter("election_adverts_sent_total", "Adverts sent, every path counted.")
	electReceived  = counter("election_adverts_received_total", "Verified adverts received from the peer, every path counted.")
	electDropped   = counter("election_adverts_dropped_total", "Advert datagrams the socket's receive buffer dropped (SO_RXQ_OVFL).")
	electRefused   = counter("election_adverts_refused_total", "Adverts refused, by reason: malformed, bad_mac (not signed with the pair's secret), wrong_source, wrong_name, own, replay, unanswered (a new boot that has not echoed the challenge).", "reason")
	electSplit     = counter("election_split_brains_settled_total", "Split brains (both hosts owning, after a partition) this host saw settled.")
)

// Election exports the VIP election's status. Status returns the running
// election's status, false when none runs (no metric then).
type Election struct {
	Status func() (vip.Status, bool)
}

// Describe sends nothing: the collector is unchecked (no election, no
// metrics).
func (e *Election) Describe(chan<- *prometheus.Desc) {}

// Collect reads the election's status once.
func (e *Election) Collect(ch chan<- prometheus.Metric) {
	st, ok := e.Status()
	if !ok {
		return
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	c := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	g(electOwner, b2f(st.Owner))
	g(electPrimary, b2f(st.Primary))
	g(electHealthy, b2f(st.Healthy))
	g(electCaughtUp, b2f(st.CaughtUp))
	g(electPriority, float64(st.Priority))
	g(electSince, unix(st.Since))
	g(electPeerAlive, b2f(st.PeerAlive))
	g(electPeerOwner, b2f(st.PeerOwner))
	g(electPeerSeen, unix(st.PeerSeen))
	c(electTakeovers, st.Takeovers)
	c(electReleases, st.Releases)
	c(electSent, st.Sent)
	c(electReceived, st.Received)
	c(electDropped, st.Dropped)
	for reason, n := range RefusalsByReason(st.RefusedBy) {
		c(electRefused, n, reason)
	}
	c(electSplit, st.SplitBrains)
}

// RefusalsByReason lists the refusal counters by their JSON names (the
// names tandem vip --json shows).
func RefusalsByReason(r vip.Refusals) map[string]uint64 {
	out := map[string]uint64{}
	v, t := reflect.ValueOf(r), reflect.TypeOf(r)
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		out[name] = v.Field(i).Uint()
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
