package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/testenv"
)

type fixedServices []maps.Service

func (f fixedServices) ListServices() ([]maps.Service, error) { return f, nil }
func (fixedServices) Close()                                  {}

// TestHealthdOwnerSwitch: on the real sp_health and sp_health_ctl, a
// standby uses the owner's verdicts (as the sync wrote them) although its
// own checks say the opposite, and writes nothing; once it owns, it
// publishes its own (each version moving past the old owner's) and uses
// them, and the observer hears of each change.
func TestHealthdOwnerSwitch(t *testing.T) {
	testenv.RequireRoot(t)
	hm := loadHealthMaps(t)

	svc := netip.MustParseAddrPort("192.0.2.10:80")
	b1, b2 := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")
	put := func(b netip.AddrPort, up uint8, version uint64) {
		var v maps.HealthVal
		v.Up, v.Sync.Version = up, version
		if err := hm.Map.Put(maps.HealthKeyOf(svc, b), &v); err != nil {
			t.Fatal(err)
		}
	}
	get := func(b netip.AddrPort) maps.HealthVal {
		var v maps.HealthVal
		if err := hm.Map.Lookup(maps.HealthKeyOf(svc, b), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	// The owner's verdicts, as the sync writes them: b1 up, b2 down.
	put(b1, 1, 5)
	put(b2, 0, 5)
	// This host's checks say the opposite.
	newChecker := func(health.Check) health.Checker {
		return health.CheckerFunc(func(_ context.Context, _, b netip.AddrPort) error {
			if b == b1 {
				return errors.New("refused")
			}
			return nil
		})
	}
	var mu sync.Mutex
	told := map[netip.AddrPort][]bool{}
	obs := health.ObserverFunc(func(_, b netip.AddrPort, up bool) { mu.Lock(); told[b] = append(told[b], up); mu.Unlock() })
	c := Defaults()
	c.StateDir = t.TempDir()
	c.Health = map[netip.AddrPort]health.Check{svc: {Kind: health.TCP, Interval: 10 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 1, Fall: 1}}
	h := startHealthd(c, false, obs, slog.New(slog.DiscardHandler), fixedServices{{VIP: svc, Backends: []netip.AddrPort{b1, b2}}}, hm, newChecker)
	defer h.close()

	// Wait for this host's own verdicts: b1 down, b2 up.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := h.runner.Status()
		if len(st) == 2 && st[0].Checks > 0 && st[1].Checks > 0 && !st[0].Up && st[1].Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("own verdicts never settled: %+v", st)
		}
	}
	h.tick(time.Now())
	k1, k2 := health.Key{Service: svc, Backend: b1}, health.Key{Service: svc, Backend: b2}
	if v := h.verdicts(); v[k1] != true || v[k2] != false {
		t.Errorf("standby uses %v, want the owner's: b1 up, b2 down", v)
	}
	if v1, v2 := get(b1), get(b2); v1.Sync.Version != 5 || v2.Sync.Version != 5 || v1.Up != 1 || v2.Up != 0 {
		t.Errorf("standby wrote sp_health: %+v %+v", v1, v2)
	}
	st := h.status(time.Now())
	for _, b := range st.Backends {
		if b.Source != health.SourceOwner {
			t.Errorf("standby's status of %s: source %q, want %q", b.Backend, b.Source, health.SourceOwner)
		}
	}

	h.setOwner(true)
	if v := h.verdicts(); v[k1] != false || v[k2] != true {
		t.Errorf("owner uses %v, want its own: b1 down, b2 up", v)
	}
	if v1, v2 := get(b1), get(b2); v1.Sync.Version != 6 || v2.Sync.Version != 6 || v1.Up != 0 || v2.Up != 1 {
		t.Errorf("after the takeover sp_health holds %+v %+v, want b1 down and b2 up at version 6", v1, v2)
	}
	mu.Lock()
	defer mu.Unlock()
	if l := told[b1]; len(l) != 2 || l[0] != true || l[1] != false {
		t.Errorf("observer heard %v for b1, want up (owner's), then down (own)", l)
	}
	if l := told[b2]; len(l) != 2 || l[0] != false || l[1] != true {
		t.Errorf("observer heard %v for b2, want down (owner's), then up (own)", l)
	}
}

// flakyTable is a service lister and table writer whose first writes
// fail (the service lock or a map update refused for a moment).
type flakyTable struct {
	fixedServices
	mu    sync.Mutex
	fails int
	got   map[netip.AddrPort]bool // the verdicts the table has
}

func (f *flakyTable) SetBackendHealth(_, b netip.AddrPort, up bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return errors.New("resource temporarily unavailable")
	}
	f.got[b] = up
	return nil
}

// TestHealthdRetriesTable: a verdict the table could not take is applied
// again at the next tick. Before, the verdict in use was recorded before
// the write and the write never repeated: a dead backend whose down
// verdict met a failed table write kept taking new connections until its
// verdict changed again.
func TestHealthdRetriesTable(t *testing.T) {
	testenv.RequireRoot(t)
	hm := loadHealthMaps(t)
	svc := netip.MustParseAddrPort("192.0.2.10:80")
	b1 := netip.MustParseAddrPort("10.0.0.1:80")
	newChecker := func(health.Check) health.Checker {
		return health.CheckerFunc(func(context.Context, netip.AddrPort, netip.AddrPort) error { return errors.New("refused") })
	}
	c := Defaults()
	c.StateDir = t.TempDir()
	c.Health = map[netip.AddrPort]health.Check{svc: {Kind: health.TCP, Interval: 10 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 1, Fall: 1}}
	ft := &flakyTable{fixedServices: fixedServices{{VIP: svc, Backends: []netip.AddrPort{b1}}}, fails: 1000, got: map[netip.AddrPort]bool{}}
	h := startHealthd(c, true, nil, slog.New(slog.DiscardHandler), ft, hm, newChecker)
	defer h.close()
	k := health.Key{Service: svc, Backend: b1}
	for deadline := time.Now().Add(30 * time.Second); h.verdicts()[k] || len(h.verdicts()) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never down: %v", h.verdicts())
		}
	}
	// The writes failed so far; now the table takes them.
	ft.mu.Lock()
	ft.fails = 0
	ft.mu.Unlock()
	h.tick(time.Now())
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if up, ok := ft.got[b1]; !ok || up {
		t.Errorf("the table has %v (known %v) for the down backend after a tick, want down", up, ok)
	}
}

// loadHealthMaps loads sp_health and its writer sp_health_ctl alone (the
// packet programs are not needed), unpinned, closed with the test.
func loadHealthMaps(t *testing.T) *maps.HealthMaps {
	t.Helper()
	spec, err := bpf.LoadSynproxy()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{maps.ProgSpHealthCtl: spec.Programs[maps.ProgSpHealthCtl]}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer coll.Close()
	hm := &maps.HealthMaps{}
	if hm.Map, err = coll.Maps[maps.MapSpHealth].Clone(); err != nil {
		t.Fatal(err)
	}
	if hm.Ctl, err = coll.Programs[maps.ProgSpHealthCtl].Clone(); err != nil {
		t.Fatal(err)
	}
	return hm
}
