package migrate

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sendBatchMax frames go out per sendmmsg.
const sendBatchMax = 256

// sendFullMax bounds how long one batch waits for a full egress that
// takes nothing at all; every frame it does take starts the bound again.
var sendFullMax = 2 * time.Second

// sendBackoffMax is the longest pause after ENOBUFS: a veth peer's ring or
// a NIC's queue frees within microseconds, and a longer sleep stalls the
// flush (30,000 frames in 50 ms is 1.7 us a frame).
const sendBackoffMax = time.Millisecond

// sendBufBytes is the flush socket's send buffer.
const sendBufBytes = 4 << 20

// sendmmsg is the system call (a variable: tests make the egress full).
var sendmmsg = func(fd int, msgs []mmsghdr) (int, unix.Errno) {
	r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	return int(r), errno
}

// hopTemplate is where xdp_mig_flush sent the first frame of a flush:
// every held frame of one endpoint goes to the same hop (the state cannot
// change while the controller flushes), so the others get the same MACs
// and egress without a test run each.
type hopTemplate struct {
	ok    bool
	ether uint16 // the ethertype the template was made for
	macs  [12]byte
	to    unix.RawSockaddrLinklayer
	// A routed location: the outer IP header xdp_mig_flush pushed (its
	// lengths and IPv4 checksum are redone per frame) and its ethertype.
	outer      []byte
	outerEther uint16
}

// encapsulate appends to dst frame (already rewritten) with t's outer
// header between its Ethernet header and its packet, as xdp_mig_flush
// pushes it.
func (t *hopTemplate) encapsulate(dst, frame []byte) []byte {
	inner := len(frame) - 14
	dst = append(dst, frame[:12]...)
	dst = binary.BigEndian.AppendUint16(dst, t.outerEther)
	o := len(dst)
	dst = append(dst, t.outer...)
	h := dst[o:]
	if t.outerEther == unix.ETH_P_IP {
		binary.BigEndian.PutUint16(h[2:], uint16(inner+20))
		h[10], h[11] = 0, 0
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(h[i:]))
		}
		sum = sum&0xffff + sum>>16
		sum = sum&0xffff + sum>>16
		binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	} else {
		binary.BigEndian.PutUint16(h[4:], uint16(inner))
	}
	return append(dst, frame[14:]...)
}

// batch collects rewritten frames for one sendmmsg.
type batch struct {
	buf   []byte // frames back to back
	lens  []int
	to    unix.RawSockaddrLinklayer
	iov   []unix.Iovec
	msgs  []mmsghdr
	count int
}

type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// rewrite applies t to frame in place, as xdp_mig_flush would: the MACs,
// the TTL or hop limit decremented (the IPv4 checksum updated, RFC 1624).
// false: the frame needs the program (another family, an expiring TTL,
// too short).
func (t *hopTemplate) rewrite(frame []byte) bool {
	if !t.ok || len(frame) < 14+40 || binary.BigEndian.Uint16(frame[12:]) != t.ether {
		return false
	}
	switch t.ether {
	case unix.ETH_P_IP:
		ttl := frame[14+8]
		if ttl <= 1 || frame[14]>>4 != 4 {
			return false
		}
		// ttl is the high byte of the 16-bit word ttl|protocol.
		old := uint32(binary.BigEndian.Uint16(frame[14+8:]))
		frame[14+8] = ttl - 1
		nw := uint32(binary.BigEndian.Uint16(frame[14+8:]))
		sum := uint32(^binary.BigEndian.Uint16(frame[14+10:])) + uint32(^uint16(old)) + nw
		sum = sum&0xffff + sum>>16
		sum = sum&0xffff + sum>>16
		binary.BigEndian.PutUint16(frame[14+10:], ^uint16(sum))
	case unix.ETH_P_IPV6:
		if frame[14+7] <= 1 {
			return false
		}
		frame[14+7]--
	default:
		return false
	}
	copy(frame[0:12], t.macs[:])
	return true
}

// add queues frame for t's destination; a batch to another destination,
// or a full one, is sent first.
func (l *Local) add(t *hopTemplate, frame []byte) error {
	b := &l.out2
	if b.count > 0 && (b.to != t.to || b.count == sendBatchMax) {
		if err := l.sendBatch(); err != nil {
			return err
		}
	}
	b.to = t.to
	b.buf = append(b.buf, frame...)
	b.lens = append(b.lens, len(frame))
	b.count++
	return nil
}

// addEncap is add for a routed location: frame goes into the batch with
// t's outer header, written there (no copy in between).
func (l *Local) addEncap(t *hopTemplate, frame []byte) error {
	b := &l.out2
	if b.count > 0 && (b.to != t.to || b.count == sendBatchMax) {
		if err := l.sendBatch(); err != nil {
			return err
		}
	}
	b.to = t.to
	start := len(b.buf)
	b.buf = t.encapsulate(b.buf, frame)
	b.lens = append(b.lens, len(b.buf)-start)
	b.count++
	return nil
}

// sendBatch sends what add queued, all of it, in order.
func (l *Local) sendBatch() error {
	b := &l.out2
	if b.count == 0 {
		return nil
	}
	defer func() { b.buf, b.lens, b.count = b.buf[:0], b.lens[:0], 0 }()
	b.iov = b.iov[:0]
	b.msgs = b.msgs[:0]
	off := 0
	for _, n := range b.lens {
		b.iov = append(b.iov, unix.Iovec{Base: &b.buf[off], Len: uint64(n)})
		off += n
	}
	for i := range b.lens {
		var m mmsghdr
		m.hdr.Name = (*byte)(unsafe.Pointer(&b.to))
		m.hdr.Namelen = uint32(unsafe.Sizeof(b.to))
		m.hdr.Iov = &b.iov[i]
		m.hdr.Iovlen = 1
		b.msgs = append(b.msgs, m)
	}
	const firstWait = 20 * time.Microsecond
	wait, waited := firstWait, time.Duration(0)
	for sent := 0; sent < len(b.msgs); {
		r, errno := sendmmsg(l.pkt, b.msgs[sent:])
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.ENOBUFS || errno == unix.EAGAIN {
			// The egress is full (a veth peer's ring on a slow
			// host): the first unsent frame was dropped, not sent.
			// Wait for the receiver and send it again, in order.
			// The bound is on a wait without progress: a slow but
			// moving egress is waited for, however long the flush.
			if waited > sendFullMax {
				return fmt.Errorf("re-inject held packets on ifindex %d: the egress took nothing for %s (%w); the rest are counted lost", b.to.Ifindex, sendFullMax, errno)
			}
			l.sendFull++
			if wait <= firstWait {
				runtime.Gosched() // the receiver may run on this CPU
			} else {
				time.Sleep(wait)
			}
			waited += wait
			wait = min(2*wait, sendBackoffMax)
			continue
		}
		if errno != 0 {
			return fmt.Errorf("re-inject held packets on ifindex %d: %w", b.to.Ifindex, errno)
		}
		sent += r
		wait, waited = firstWait, 0
	}
	runtime.KeepAlive(b)
	return nil
}
