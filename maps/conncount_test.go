package maps

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/tools/testenv"
)

// cpuTime is this process's user and system time so far.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestConnCountsBatched: a metrics scrape counts the connection table's
// entries by state; on a full table (1M entries) a walk entry by entry
// (two syscalls an entry) took 2.1 s of CPU a scrape, longer than
// Prometheus's scrape timeout on a busy host. ConnCounts reads in
// batches: it counts right and costs less than half of the walk's CPU
// (measured: a sixth). CPU time, not wall time: the machine is shared.
func TestConnCountsBatched(t *testing.T) {
	testenv.RequireRoot(t)
	n := 1 << 19
	if s, err := strconv.Atoi(os.Getenv("TANDEM_TEST_SCALE")); err == nil && s > 1 {
		n /= s
	}
	n -= n % 4096 // whole batches: one past the map's size is E2BIG
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: uint32(unsafe.Sizeof(ConnKey{})),
		ValueSize: uint32(unsafe.Sizeof(ConnVal{})), MaxEntries: uint32(n)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	keys := make([]ConnKey, 4096)
	vals := make([]ConnVal, len(keys))
	states := []ConnState{bpf.SynproxyConnStateCONN_SYN_SENT, bpf.SynproxyConnStateCONN_ESTABLISHED, bpf.SynproxyConnStateCONN_CLOSING}
	want := map[string]int{}
	for base := 0; base < n; base += len(keys) {
		for i := range keys {
			id := base + i
			keys[i] = ConnKey{Cport: uint16(id), Vport: uint16(id >> 16), Proto: 6}
			vals[i] = ConnVal{State: uint8(states[id%len(states)])}
			want[ConnStateNames[states[id%len(states)]]]++
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			t.Fatal(err)
		}
	}
	sm := &SynproxyMaps{Conns: m}
	c0 := cpuTime(t)
	got, err := sm.ConnCounts()
	batched := cpuTime(t) - c0
	if err != nil {
		t.Fatal(err)
	}
	for st, w := range want {
		if got[st] != w {
			t.Errorf("%s: %d, want %d (all: %v)", st, got[st], w, got)
		}
	}
	c0 = cpuTime(t)
	walked := map[string]int{}
	if err := sm.connWalk(func(st uint8) { walked[ConnStateNames[ConnState(st)]]++ }); err != nil {
		t.Fatal(err)
	}
	walk := cpuTime(t) - c0
	t.Logf("%d entries: ConnCounts %v of CPU, a walk %v", n, batched, walk)
	if batched*2 > walk {
		t.Errorf("ConnCounts took %v of CPU on %d entries, a walk %v: want less than half", batched, n, walk)
	}
}
