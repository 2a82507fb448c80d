// Package kclock sleeps a thread to an absolute CLOCK_MONOTONIC time in
// the kernel, for loops that must wake on time on a busy host (the
// election's advert sender): the thread wakes itself, no Go timer and no
// other thread is involved.
package kclock

import (
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
