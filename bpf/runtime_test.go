package bpf_test

import (
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// runtimeNs is prog's own cost per run over the runs f makes, measured by
// the kernel (BPF_ENABLE_STATS run time: the JITed code from entry to
// return; no syscall, no copy of the frame, no page-pool work). One
// prog.Run per call costs a syscall (~2 µs here) whose jitter hides a
// program of a few hundred nanoseconds; this does not.
func runtimeNs(tb testing.TB, prog *ebpf.Program, f func()) float64 {
	tb.Helper()
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		tb.Fatalf("BPF_ENABLE_STATS: %v", err)
	}
	defer st.Close()
	s0, err := prog.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	f()
	s1, err := prog.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	if s1.RunCount == s0.RunCount {
		tb.Fatal("the program did not run")
	}
	return float64(s1.Runtime-s0.Runtime) / float64(s1.RunCount-s0.RunCount)
}
