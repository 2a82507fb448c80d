package bpf_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
)

// TestHealthCtlMarksSync: what the daemon writes through sp_health_ctl
// goes into the dirty rings under SYNC_MAP_HEALTH, as the datapath's own
// changes would; an unchanged verdict is not written again (a restart or
// a takeover re-publishing its verdicts sends nothing); a change moves the
// entry's version on from what it held, even when the sync wrote it.
func TestHealthCtlMarksSync(t *testing.T) {
	p := loadSynproxy(t)
	h := &maps.HealthMaps{Map: p.objs.SpHealth, Ctl: p.objs.SpHealthCtl}
	type rec struct {
		id, op uint32
	}
	drain := func() []rec {
		var out []rec
		if _, err := p.sync.Drain(func(r *maps.SyncRec) { out = append(out, rec{r.MapId, uint32(r.Op)}) }); err != nil {
			t.Fatal(err)
		}
		if _, err := p.sync.AdvanceEpoch(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	drain()
	s4, b4 := netip.MustParseAddrPort("192.0.2.10:80"), backends4[0]
	s6, b6 := netip.MustParseAddrPort("[2001:db8::10]:443"), backends6[1]
	id := uint32(bpf.SynproxySyncMapIdSYNC_MAP_HEALTH)
	up, del := uint32(bpf.SyncSyncOpSYNC_OP_UPSERT), uint32(bpf.SyncSyncOpSYNC_OP_DELETE)
	now := time.Unix(1_700_000_000, 5)
	version := func(s, b netip.AddrPort) uint64 {
		var v maps.HealthVal
		if err := h.Map.Lookup(maps.HealthKeyOf(s, b), &v); err != nil {
			t.Fatalf("lookup %s %s: %v", s, b, err)
		}
		return v.Sync.Version
	}
	for _, tc := range []struct {
		name        string
		do          func() (bool, error)
		wantChanged bool
		want        []rec
	}{
		{"v4 up, new", func() (bool, error) { return h.Set(s4, b4, true, now) }, true, []rec{{id, up}}},
		{"v4 up again", func() (bool, error) { return h.Set(s4, b4, true, now) }, false, nil},
		{"v4 down", func() (bool, error) { return h.Set(s4, b4, false, now) }, true, []rec{{id, up}}},
		{"v6 down, new", func() (bool, error) { return h.Set(s6, b6, false, now) }, true, []rec{{id, up}}},
		{"v6 down again", func() (bool, error) { return h.Set(s6, b6, false, now) }, false, nil},
		{"v6 del", func() (bool, error) { return true, h.Del(s6, b6) }, true, []rec{{id, del}}},
		{"v6 del, gone", func() (bool, error) { return false, h.Del(s6, b6) }, false, nil},
	} {
		changed, err := tc.do()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if changed != tc.wantChanged {
			t.Errorf("%s: changed %v, want %v", tc.name, changed, tc.wantChanged)
		}
		if got := drain(); len(got) != len(tc.want) || (len(got) == 1 && got[0] != tc.want[0]) {
			t.Errorf("%s: dirty records %v, want %v", tc.name, got, tc.want)
		}
	}
	vs, err := h.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].Service != s4 || vs[0].Backend != b4 || vs[0].Up || !vs[0].Changed.Equal(now) || vs[0].Version != 2 {
		t.Fatalf("verdicts %+v, want %s %s down at %s, version 2", vs, s4, b4, now)
	}
	// An entry the sync wrote (the peer's, version 40): this host's next
	// change goes to 41, so the peer takes it.
	var v maps.HealthVal
	v.Sync.Version, v.Up = 40, 1
	if err := h.Map.Put(maps.HealthKeyOf(s4, b4), &v); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Set(s4, b4, false, now); err != nil {
		t.Fatal(err)
	}
	if got := version(s4, b4); got != 41 {
		t.Errorf("version after a change over the peer's 40: %d, want 41", got)
	}
}
