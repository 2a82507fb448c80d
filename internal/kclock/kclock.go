// Package kclock sleeps a thread to an absolute CLOCK_MONOTONIC time in
// the kernel, for loops that must wake on time on a busy host (the
// election's advert sender): the thread wakes itself, no Go timer and no
// other thread is involved.
package kclock

import (
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// entersyscallblock is the runtime's entry to a syscall that blocks: it
// hands the P off at once. (Exported for linkname by the runtime itself:
// go.dev/issue/67401.)
//
//go:linkname entersyscallblock runtime.entersyscallblock
func entersyscallblock()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()

// Now is CLOCK_MONOTONIC in nanoseconds.
func Now() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// SleepUntil sleeps until CLOCK_MONOTONIC reads at (nanoseconds), or a
// signal interrupts it (unix.EINTR: sleep again).
//
// Why not unix.ClockNanosleep: a goroutine in an ordinary syscall keeps
// its P for the runtime's monitor (sysmon) to take back after 10 ms, and
// while it does sysmon cannot sleep. Each long sleep of that kind made
// sysmon poll every 20 µs for a millisecond or more, twice: a thousand
// wakeups a second of an idle daemon for ten adverts (measured, the
// idle daemon's largest cost). Here the P is handed off when the sleep
// starts, as the runtime does for its own blocking waits.
func SleepUntil(at int64) error {
	ts := unix.NsecToTimespec(at)
	if e := sleepUntil(&ts); e != 0 {
		return e
	}
	return nil
}

// sleepUntil calls only nosplit code between entersyscallblock and
// exitsyscall, as the runtime requires (the stack must not move while
// the kernel holds a pointer into it).
//
//go:nosplit
func sleepUntil(ts *unix.Timespec) syscall.Errno {
	entersyscallblock()
	_, _, e := syscall.RawSyscall6(unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	exitsyscall()
	return e
}

// Ring is where a ring buffer's producer and consumer positions are
// (its mapped pages): it holds records while they differ.
type Ring struct{ Prod, Cons *uint64 }

// SleepIdle sleeps to next, then on every step while every ring is empty,
// steps sleeps at most, and returns the deadline it woke at last: the
// caller's tick. An idle tick costs a thread's wakeup and two loads per
// ring, none of the Go scheduler's work (a Go timer that fires, even for
// nothing, wakes three or four threads: the state sync's 10 ms ticks
// were half of an idle primary's CPU time).
func SleepIdle(next, step int64, steps int, rings []Ring) (int64, error) {
	if len(rings) == 0 {
		steps = 1
	}
	var p *Ring
	if len(rings) > 0 {
		p = &rings[0]
	}
	last, e := sleepIdle(next, step, max(steps, 1), p, len(rings))
	if e != 0 {
		return last, e
	}
	return last, nil
}

//go:nosplit
func sleepIdle(next, step int64, steps int, rings *Ring, n int) (int64, syscall.Errno) {
	var ts unix.Timespec
	var e syscall.Errno
	entersyscallblock()
	for i := 0; ; {
		ts.Sec, ts.Nsec = next/1e9, next%1e9
		_, _, e = syscall.RawSyscall6(unix.SYS_CLOCK_NANOSLEEP, unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		if e == unix.EINTR {
			continue // the same deadline
		}
		if e != 0 {
			break
		}
		if i++; i >= steps || busy(rings, n) {
			break
		}
		next += step
	}
	exitsyscall()
	return next, e
}

//go:nosplit
func busy(rings *Ring, n int) bool {
	for i := 0; i < n; i++ {
		r := (*Ring)(unsafe.Add(unsafe.Pointer(rings), uintptr(i)*unsafe.Sizeof(Ring{})))
		if atomic.LoadUint64(r.Prod) != atomic.LoadUint64(r.Cons) {
			return true
		}
	}
	return false
}
