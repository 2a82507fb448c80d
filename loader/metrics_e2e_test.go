package loader_test

// The daemon's /metrics on a lab gateway under a SYN flood: the SYN
// proxy's counters move, the election's gauges are there, and what the
// metrics say matches tandem status --json and tandem vip --json read
// between two scrapes.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/chain"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/metrics"
	"github.com/tandem-net/tandem/syncer/vip"
	"github.com/tandem-net/tandem/tools/lab"
	"github.com/tandem-net/tandem/tools/testenv"
)

// scrape GETs /metrics from addr inside h's network namespace: the
// socket is made there (on the namespace's thread), then read anywhere.
func scrape(t *testing.T, h *lab.Host, addr string) string {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %s %v\n%s", addr, resp.Status, err, body)
	}
	return string(body)
}

func parseScrape(t *testing.T, text string) map[string]float64 {
	t.Helper()
	s, _, err := metrics.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestMetricsUnderSynFlood: a gateway daemon with the gate, the SYN proxy
// and an election (its peer silent: it owns) under a SYN flood. A scrape
// before and one during the flood: the proxy's counters move. Then a
// scrape, tandem status --json and tandem vip --json, and another scrape,
// all while the flood runs: every counter status and vip show lies
// between the two scrapes' values (what moved between the reads), the
// gauges that do not move under a flood are equal. Every family has
// HELP and promtool check metrics accepts the exposition.
func TestMetricsUnderSynFlood(t *testing.T) {
	p := newProxyLab(t)
	p.serve(t)
	state := stateDir(t)
	const addr = "127.0.0.1:19480"
	p.daemon(t, p.gw, "-i", "eth0", "--vip", pvip4.String(), "--proxy-iface", "eth0,be1,be2", "--proxy-secret", p.secret,
		"--service", "10.78.0.100:80=10.78.2.2:8080,10.78.3.2:8080",
		"--service", "[fd78::100]:80=[fd78:2::2]:8080,[fd78:3::2]:8080",
		"--state-dir", state, "--metrics-addr", addr,
		"--vip-addr", "10.78.7.7/32@eth0", "--vip-peer", "127.0.0.1:17481", "--vip-peer-name", "peer",
		"--vip-listen", "127.0.0.1:17482", "--vip-secret", p.secret, "--vip-interval", "50ms")
	waitOwner(t, p.gw, state)
	// A connection before the flood: the per-service and established
	// counters have something to show.
	if err := p.transfer(t, pvip4); err != nil {
		t.Fatal(err)
	}
	m0 := parseScrape(t, scrape(t, p.gw, addr))

	send := p.synflood(t)
	burst := uint32(50_000 / testScale(t))
	if err := send(burst); err != nil {
		t.Fatal(err)
	}
	m1 := parseScrape(t, scrape(t, p.gw, addr))
	syn := "tandem_synproxy_syn_answered_total"
	svc := `tandem_synproxy_service_syns_total{service="10.78.0.100:80"}`
	for _, k := range []string{syn, svc, `tandem_gate_vip_packets_total{direction="rx",vip="10.78.0.100"}`,
		`tandem_chain_stage_packets_total{iface="eth0",stage="synproxy"}`} {
		if m1[k] < m0[k]+float64(burst)/2 {
			t.Errorf("%s: %v before a flood of %d SYNs, %v after: not moving with it", k, m0[k], burst, m1[k])
		}
	}

	// The flood goes on while status and the metrics are compared.
	stop, flooding := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				flooding <- nil
				return
			default:
			}
			if err := send(burst / 10); err != nil {
				flooding <- err
				return
			}
		}
	}()
	before := scrape(t, p.gw, addr)
	st := mustTandem(t, p.gw, "status", "--json", "--bpffs", p.gw.BPFFS(), "--state-dir", state)
	vr := mustTandem(t, p.gw, "vip", "--json", "--state-dir", state)
	after := scrape(t, p.gw, addr)
	close(stop)
	if err := <-flooding; err != nil {
		t.Fatalf("the flood: %v", err)
	}
	CheckMetricsText(t, after)
	a, b := parseScrape(t, before), parseScrape(t, after)
	if b[syn] <= a[syn] {
		t.Errorf("%s: %v, then %v during the flood: not moving", syn, a[syn], b[syn])
	}

	var status struct {
		VIPs []struct {
			Addr     string           `json:"addr"`
			Owned    bool             `json:"owned"`
			Counters maps.VIPCounters `json:"counters"`
		} `json:"vips"`
		Stats       map[string]uint64 `json:"stats"`
		Attachments []struct {
			Iface string `json:"iface"`
			Chain []struct {
				Slot    uint32 `json:"slot"`
				Feature string `json:"feature"`
				Claimed uint64 `json:"claimed"`
				Missed  uint64 `json:"missed"`
			} `json:"chain"`
		} `json:"attachments"`
		Proxy struct {
			Services []struct {
				VIP      string           `json:"vip"`
				Backends []string         `json:"backends"`
				Counters maps.SvcCounters `json:"counters"`
			} `json:"services"`
			Connections map[string]int    `json:"connections"`
			Counters    map[string]uint64 `json:"counters"`
		} `json:"proxy"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &status); err != nil {
		t.Fatalf("status --json: %v\n%s", err, st.stdout)
	}
	var election vip.Status
	if err := json.Unmarshal([]byte(vr.stdout), &election); err != nil {
		t.Fatalf("vip --json: %v\n%s", err, vr.stdout)
	}

	checked := 0
	// counter: a counter status read between the scrapes.
	counter := func(key string, v uint64) {
		t.Helper()
		checked++
		lo, ok1 := a[key]
		hi, ok2 := b[key]
		if !ok1 || !ok2 {
			t.Errorf("%s: not in the scrapes (status says %d)", key, v)
			return
		}
		if float64(v) < lo || float64(v) > hi {
			t.Errorf("%s: status says %d, the scrapes before and after %v and %v", key, v, lo, hi)
		}
	}
	// gauge: a value that must not change while the flood runs.
	gauge := func(key string, v float64) {
		t.Helper()
		checked++
		if a[key] != v || b[key] != v {
			t.Errorf("%s: status says %v, the scrapes %v and %v", key, v, a[key], b[key])
		}
	}
	for name, v := range status.Proxy.Counters {
		if reason, drop := metrics.Drops["synproxy"][name]; drop {
			counter(fmt.Sprintf(`tandem_drops_total{feature="synproxy",reason=%q}`, reason), v)
		} else {
			counter("tandem_synproxy_"+name+"_total", v)
		}
	}
	for _, s := range status.Proxy.Services {
		l := fmt.Sprintf(`{service=%q}`, s.VIP)
		c := s.Counters
		counter("tandem_synproxy_service_syns_total"+l, c.Syns)
		counter("tandem_synproxy_service_cookie_ok_total"+l, c.Conns)
		counter("tandem_synproxy_service_established_total"+l, c.Established)
		counter("tandem_synproxy_service_failed_total"+l, c.Failed)
		counter(fmt.Sprintf(`tandem_synproxy_service_packets_total{direction="in",service=%q}`, s.VIP), c.PktsIn)
		counter(fmt.Sprintf(`tandem_synproxy_service_packets_total{direction="out",service=%q}`, s.VIP), c.PktsOut)
		counter(fmt.Sprintf(`tandem_synproxy_service_bytes_total{direction="in",service=%q}`, s.VIP), c.BytesIn)
		counter(fmt.Sprintf(`tandem_synproxy_service_bytes_total{direction="out",service=%q}`, s.VIP), c.BytesOut)
		gauge("tandem_synproxy_service_backends"+l, float64(len(s.Backends)))
	}
	gauge("tandem_synproxy_services", float64(len(status.Proxy.Services)))
	// Entries go (expiry) and the flood adds none (cookies hold no
	// state): status's count is one of the two scrapes'.
	for _, state := range maps.ConnStateNames {
		key, v := fmt.Sprintf(`tandem_synproxy_connections{state=%q}`, state), float64(status.Proxy.Connections[state])
		checked++
		if v != a[key] && v != b[key] {
			t.Errorf("%s: status says %v, the scrapes %v and %v", key, v, a[key], b[key])
		}
	}
	if b["tandem_synproxy_connections_max"] < 1 {
		t.Errorf("tandem_synproxy_connections_max %v", b["tandem_synproxy_connections_max"])
	}
	for _, v := range status.VIPs {
		c := v.Counters
		counter(fmt.Sprintf(`tandem_gate_vip_packets_total{direction="rx",vip=%q}`, v.Addr), c.RxPackets)
		counter(fmt.Sprintf(`tandem_gate_vip_packets_total{direction="tx",vip=%q}`, v.Addr), c.TxPackets)
		counter(fmt.Sprintf(`tandem_gate_vip_bytes_total{direction="rx",vip=%q}`, v.Addr), c.RxBytes)
		counter(fmt.Sprintf(`tandem_gate_vip_bytes_total{direction="tx",vip=%q}`, v.Addr), c.TxBytes)
		counter(fmt.Sprintf(`tandem_gate_vip_not_owner_packets_total{vip=%q}`, v.Addr), c.DropNotOwner)
		owned := 0.0
		if v.Owned {
			owned = 1
		}
		gauge(fmt.Sprintf(`tandem_gate_vip_owned{vip=%q}`, v.Addr), owned)
	}
	for name, v := range status.Stats {
		switch reason, drop := metrics.Drops["gate"][name]; {
		case drop:
			counter(fmt.Sprintf(`tandem_drops_total{feature="gate",reason=%q}`, reason), v)
		case name == "tx_vip":
			counter("tandem_gate_tx_vip_packets_total", v)
		default:
			counter(fmt.Sprintf(`tandem_gate_passed_packets_total{reason=%q}`, strings.TrimPrefix(name, "pass_")), v)
		}
	}
	stages := 0
	for _, at := range status.Attachments {
		for _, s := range at.Chain {
			stage := s.Feature
			if s.Slot == chain.Slots {
				stage = "stack"
			}
			stages++
			counter(fmt.Sprintf(`tandem_chain_stage_packets_total{iface=%q,stage=%q}`, at.Iface, stage), s.Claimed)
			if s.Slot < chain.Slots {
				counter(fmt.Sprintf(`tandem_chain_stage_missed_tail_calls_total{iface=%q,stage=%q}`, at.Iface, stage), s.Missed)
			}
		}
	}
	if stages == 0 {
		t.Errorf("status shows no chain stage:\n%s", st.stdout)
	}

	// The election: the peer is silent, this host owns.
	if !election.Owner {
		t.Errorf("tandem vip says this host does not own: %+v", election)
	}
	gauge("tandem_election_owner", 1)
	gauge("tandem_election_peer_alive", 0)
	gauge("tandem_election_peer_last_seen_timestamp_seconds", 0)
	gauge("tandem_election_healthy", 1)
	gauge("tandem_election_priority", float64(election.Priority))
	gauge("tandem_election_state_since_timestamp_seconds", float64(election.Since.UnixNano())/1e9)
	counter("tandem_election_takeovers_total", election.Takeovers)
	counter("tandem_election_releases_total", election.Releases)
	counter("tandem_election_adverts_sent_total", election.Sent)
	counter("tandem_election_adverts_received_total", election.Received)
	counter("tandem_election_split_brains_settled_total", election.SplitBrains)
	for reason, n := range metrics.RefusalsByReason(election.RefusedBy) {
		counter(fmt.Sprintf(`tandem_election_adverts_refused_total{reason=%q}`, reason), n)
	}
	if b["tandem_election_adverts_sent_total"] <= m0["tandem_election_adverts_sent_total"] {
		t.Errorf("adverts sent: %v, then %v: not moving", m0["tandem_election_adverts_sent_total"], b["tandem_election_adverts_sent_total"])
	}
	if election.Takeovers != 1 {
		t.Errorf("takeovers %d, want 1", election.Takeovers)
	}
	t.Logf("%d values compared with status; SYNs answered %v -> %v -> %v", checked, m0[syn], m1[syn], b[syn])
	for k := range b {
		if strings.HasPrefix(k, "tandem_sync_") {
			t.Errorf("%s exported without a sync configured", k)
		}
	}
}

// CheckMetricsText fails unless every family has HELP and promtool check
// metrics accepts the exposition.
func CheckMetricsText(t *testing.T, text string) {
	t.Helper()
	if err := metrics.CheckHelp(text); err != nil {
		t.Error(err)
	}
	cmd := exec.Command(testenv.RequireCommand(t, "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestElectedVIPsOwnCounterSlots: a VIP the election moves (--vip-addr)
// that no --vip names gets its own counter slot in the gate, as every
// --vip does: its per-VIP counters (tandem status, the metrics) are its
// own, not those of the VIP in slot 0. (The election wrote such an entry
// itself, with slot 0, so both VIPs showed the same counters.)
func TestElectedVIPsOwnCounterSlots(t *testing.T) {
	l := gatewayLab(t)
	gw := l.Host("gw")
	state := stateDir(t)
	daemon(t, gw, append(electionArgs(t, gw, state), "--vip", vip4.String())...)
	waitOwner(t, gw, state)
	r := mustTandem(t, gw, "dump", "vip_gate", "--json", "--bpffs", gw.BPFFS())
	var recs []struct {
		VIP   string `json:"vip"`
		Index uint32 `json:"index"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil {
		t.Fatalf("dump vip_gate: %v\n%s", err, r.stdout)
	}
	slot := map[uint32]string{}
	for _, v := range recs {
		if other, taken := slot[v.Index]; taken {
			t.Errorf("VIPs %s and %s share counter slot %d", other, v.VIP, v.Index)
		}
		slot[v.Index] = v.VIP
	}
	if len(recs) != 2 {
		t.Errorf("the gate holds %d VIPs, want 2 (--vip and --vip-addr):\n%s", len(recs), r.stdout)
	}
}
