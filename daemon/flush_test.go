package daemon

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/tools/testenv"
)

// syncHost is the synctest program and its maps pinned under a root of
// its own: what a sync node opens, without a datapath attached anywhere.
type syncHost struct {
	pins maps.Pins
	objs bpf.SynctestObjects
}

func newSyncHost(t *testing.T, name string) *syncHost {
	t.Helper()
	root := fmt.Sprintf("/sys/fs/bpf/tandem-flush-%d-%s", os.Getpid(), name)
	h := &syncHost{pins: maps.Pins{Root: root}}
	if err := os.MkdirAll(h.pins.MapsDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(h.pins.Prog("x")), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	spec, err := bpf.LoadSynctest()
	if err != nil {
		t.Fatal(err)
	}
	inner, err := maps.RingSpec(maps.DefaultRingBytes)
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps[bpf.SynctestMapSyncRings].InnerMap = inner
	if err := spec.LoadAndAssign(&h.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: h.pins.MapsDir()}}); err != nil {
		t.Fatalf("load synctest: %v", err)
	}
	t.Cleanup(func() { h.objs.Close() })
	s := &maps.SyncMaps{Rings: h.objs.SyncRings, Epoch: h.objs.SyncEpoch, Overflow: h.objs.SyncOverflow}
	if err := s.SetupRings(inner); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*ebpf.Program{
		bpf.SynctestProgSyncReadSyncTest:  h.objs.SyncReadSyncTest,
		bpf.SynctestProgSyncWriteSyncTest: h.objs.SyncWriteSyncTest,
	} {
		if err := p.Pin(h.pins.Prog(name)); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// upsert adds delta to keys [from, from+n) through the program, as
// packets would: every changed entry goes through the dirty rings.
func (h *syncHost) upsert(t *testing.T, from, n uint32, delta uint64) {
	t.Helper()
	for k := from; k < from+n; k += 64 {
		b := make([]byte, 14+20+8+24)
		b[12], b[13] = 0x08, 0x00
		ip := b[14:]
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:], 20+8+24)
		copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		udp := ip[20:]
		binary.BigEndian.PutUint16(udp[0:], 40000)
		binary.BigEndian.PutUint16(udp[2:], 7777)
		binary.BigEndian.PutUint16(udp[4:], 8+24)
		binary.Encode(udp[8:], binary.NativeEndian, bpf.SynctestSynctestCmd{Op: uint32(bpf.SynctestSynctestOpST_UPSERT), Count: min(64, from+n-k), Key: k, Delta: delta})
		if ret, err := h.objs.XdpSynctest.Run(&ebpf.RunOptions{Data: b}); err != nil || ret != 1 {
			t.Fatalf("synctest run: ret %d, %v", ret, err)
		}
	}
}

// values is the map's key -> value (the per-entry version and the
// host-local queued epoch left out).
func (h *syncHost) values(t *testing.T) map[uint32]uint64 {
	t.Helper()
	out := map[uint32]uint64{}
	var k uint32
	var v bpf.SynctestSynctestVal
	it := h.objs.SyncTest.Iterate()
	for it.Next(&k, &v) {
		out[k] = v.Value
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// startNode runs a sync node until the test ends.
func startNode(t *testing.T, h *syncHost, role syncer.Role, addr, name, peer, certs string) *syncer.Node {
	t.Helper()
	tlsCfg, err := syncer.TLSConfig(certs, name, peer)
	if err != nil {
		t.Fatal(err)
	}
	cfg := syncer.NodeConfig{Role: role, PeerName: peer, TLS: tlsCfg, Pins: h.pins, StateDir: t.TempDir(), Interval: 10 * time.Millisecond}
	if role == syncer.RolePrimary {
		cfg.Peer = addr
	} else {
		cfg.Listen = addr
	}
	n, err := syncer.OpenNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); n.Close(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestSyncFlushBarrier: the handover's flush returns only once the peer
// applied every change made before it began, however long the primary
// takes to drain and send them (a large backlog in the rings); with a
// dead peer it times out with an error that says what to do.
func TestSyncFlushBarrier(t *testing.T) {
	testenv.RequireRoot(t)
	certs := t.TempDir()
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	if err := syncer.MakeCerts(certs, map[string][]net.IP{"a": lo, "b": lo}, time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Run("backlog", func(t *testing.T) {
		a, b := newSyncHost(t, "a"), newSyncHost(t, "b")
		addr := freePort(t)
		startNode(t, b, syncer.RoleStandby, addr, "b", "a", certs)
		na := startNode(t, a, syncer.RolePrimary, addr, "a", "b", certs)
		deadline := time.Now().Add(20 * time.Second)
		for na.Status().Session != "up" {
			if time.Now().After(deadline) {
				t.Fatalf("the sync session did not come up: %+v", na.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
		// A backlog that takes the primary many ticks' time to send.
		const n = 200_000
		a.upsert(t, 0, n, 7)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := syncFlush(ctx, na); err != nil {
			t.Fatalf("flush: %v", err)
		}
		st := na.Status()
		t.Logf("primary: %d ring records, %d overflows, %d rescans, %d deltas sent", st.RingRecords, st.Overflows, st.Rescans, st.DeltasSent)
		got := b.values(t)
		missing := 0
		for k := uint32(0); k < n; k++ {
			if got[k] != 7 {
				missing++
			}
		}
		if missing > 0 {
			t.Fatalf("the flush returned before the standby applied %d of the %d entries changed before it", missing, n)
		}
	})
	t.Run("dead peer", func(t *testing.T) {
		a := newSyncHost(t, "a")
		addr := freePort(t) // nobody listens there
		na := startNode(t, a, syncer.RolePrimary, addr, "a", "b", certs)
		a.upsert(t, 0, 64, 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := syncFlush(ctx, na)
		if err == nil {
			t.Fatal("flush with a dead peer returned no error")
		}
		for _, want := range []string{addr, "tandem status"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("flush error %q does not say %q", err, want)
			}
		}
	})
}
