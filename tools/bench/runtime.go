package bench

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// RunTime is prog's own cost per run over the runs f causes (test runs
// or live traffic), measured by the kernel: BPF_ENABLE_STATS run time,
// the JITed code from entry to return, with no syscall, no copy of the
// frame and no page-pool work in it. One prog.Run per call costs a
// syscall (~2 µs here) whose jitter hides a program of a few hundred
// nanoseconds; this does not.
func RunTime(prog *ebpf.Program, f func() error) (ns float64, err error) {
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return 0, fmt.Errorf("BPF_ENABLE_STATS: %w", err)
	}
	defer st.Close()
	s0, err := prog.Stats()
	if err != nil {
		return 0, err
	}
	if err := f(); err != nil {
		return 0, err
	}
	s1, err := prog.Stats()
	if err != nil {
		return 0, err
	}
	if s1.RunCount == s0.RunCount {
		return 0, errors.New("the program did not run")
	}
	return float64(s1.Runtime-s0.Runtime) / float64(s1.RunCount-s0.RunCount), nil
}
