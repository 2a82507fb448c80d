package daemon

import (
	gomaps "maps"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/testenv"
)

// TestBackendMetrics: the metrics endpoint exports each backend's new
// connections, weight, drain and table share, as service list shows them.
func TestBackendMetrics(t *testing.T) {
	testenv.RequireRoot(t)
	spec, err := bpf.LoadSynproxy()
	if err != nil {
		t.Fatal(err)
	}
	m := &maps.SynproxyMaps{}
	for name, dst := range map[string]**ebpf.Map{bpf.SynproxyMapSpServices: &m.Services, bpf.SynproxyMapSpBackends: &m.Backends, bpf.SynproxyMapSpBackendRev: &m.Rev,
		bpf.SynproxyMapSpMaglev: &m.Maglev, bpf.SynproxyMapSpBackendCfg: &m.BackendCfg, bpf.SynproxyMapSpBackendStats: &m.BackendStats} {
		ms := spec.Maps[name].Copy()
		ms.Pinning = ebpf.PinNone
		if *dst, err = ebpf.NewMap(ms); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() { (*dst).Close() })
	}
	a, b := netip.MustParseAddrPort("10.9.0.1:80"), netip.MustParseAddrPort("10.9.0.2:80")
	svc, err := m.PutService(maps.Service{VIP: netip.MustParseAddrPort("10.0.0.1:80"), Backends: []netip.AddrPort{a, b}, Weights: []uint32{1, 0}})
	if err != nil {
		t.Fatal(err)
	}
	per := make([]maps.BackendCounters, ebpf.MustPossibleCPU())
	per[0].Conns = 7
	if err := m.BackendStats.Put(maps.BackendKey{Svc: svc.ID, Idx: 0}, per); err != nil {
		t.Fatal(err)
	}
	c := newBackendMetrics(func() (*maps.SynproxyMaps, func(), error) { return m, func() {}, nil })
	mfs, err := c.registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["service"] != "10.0.0.1:80" {
				t.Errorf("%s: service label %q", mf.GetName(), labels["service"])
			}
			v := mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
			got[mf.GetName()+" "+labels["backend"]] = v
		}
	}
	want := map[string]float64{
		"tandem_synproxy_backend_connections_total 10.9.0.1:80": 7, "tandem_synproxy_backend_connections_total 10.9.0.2:80": 0,
		"tandem_synproxy_backend_weight 10.9.0.1:80": 1, "tandem_synproxy_backend_weight 10.9.0.2:80": 0,
		"tandem_synproxy_backend_drained 10.9.0.1:80": 0, "tandem_synproxy_backend_drained 10.9.0.2:80": 1,
		"tandem_synproxy_backend_table_share 10.9.0.1:80": 1, "tandem_synproxy_backend_table_share 10.9.0.2:80": 0,
	}
	if !gomaps.Equal(got, want) {
		t.Errorf("metrics %v, want %v", got, want)
	}
}
