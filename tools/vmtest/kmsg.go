package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// splat matches the kernel log lines that mean the kernel is unhappy:
// WARN(), BUG(), sanitizer reports, oopses, lockdep and RCU stall reports.
var splat = regexp.MustCompile(`WARNING: |BUG: |KASAN: |UBSAN: |KFENCE: |Oops|general protection fault|kernel BUG at|possible circular locking|rcu_.*detected stall|RCU stall|Kernel panic`)

type kmsgRecord struct {
	seq uint64
	msg string
}

// readKmsg returns the kernel log records with a sequence number above
// after, reading /dev/kmsg without blocking.
func readKmsg(after uint64) ([]kmsgRecord, error) {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/kmsg: %w", err)
	}
	defer f.Close()
	var out []kmsgRecord
	buf := make([]byte, 8192)
	for {
		n, err := syscall.Read(int(f.Fd()), buf)
		if errors.Is(err, syscall.EAGAIN) {
			return out, nil
		}
		if errors.Is(err, syscall.EPIPE) {
			continue // overwritten while we read: skip ahead
		}
		if err != nil {
			return out, fmt.Errorf("read /dev/kmsg: %w", err)
		}
		// "prio,seq,usec,flags;message\n continuation lines"
		head, msg, ok := strings.Cut(string(buf[:n]), ";")
		if !ok {
			continue
		}
		fields := strings.Split(head, ",")
		if len(fields) < 2 {
			continue
		}
		seq, _ := strconv.ParseUint(fields[1], 10, 64)
		if seq <= after && after != 0 {
			continue
		}
		msg, _, _ = strings.Cut(msg, "\n")
		out = append(out, kmsgRecord{seq: seq, msg: msg})
	}
}

// kmsgSeq is the sequence number of the newest kernel log record.
func kmsgSeq() (uint64, error) {
	recs, err := readKmsg(0)
	if err != nil {
		return 0, err
	}
	if len(recs) == 0 {
		return 0, nil
	}
	return recs[len(recs)-1].seq, nil
}

// splats returns the records after seq that match splat.
func splats(after uint64) ([]string, error) {
	recs, err := readKmsg(after)
	var out []string
	for _, r := range recs {
		if splat.MatchString(r.msg) {
			out = append(out, r.msg)
		}
	}
	return out, err
}
