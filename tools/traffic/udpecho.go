// Package traffic generates test traffic between lab hosts with real
// sockets: a UDP echo server and a paced, sequence-numbered UDP flood that
// accounts for every packet, so tests can say "none lost" and mean it.
package traffic

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// InNS runs f with the thread in some network namespace; lab.Host.Do has
// this shape. Sockets opened inside f belong to that namespace.
type InNS func(f func() error) error

const bufBytes = 8 << 20

// EchoServer answers every UDP datagram with itself.
type EchoServer struct {
	conn     *net.UDPConn
	Received atomic.Uint64
	done     chan struct{}
}

// ListenEcho starts an echo server on addr inside ns.
func ListenEcho(ns InNS, addr netip.AddrPort) (*EchoServer, error) {
	s := &EchoServer{done: make(chan struct{})}
	err := ns(func() error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		s.conn = c
		return nil
	})
	if err != nil {
		return nil, err
	}
	bigBuffers(s.conn)
	go s.serve()
	return s, nil
}

func (s *EchoServer) serve() {
	defer close(s.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		s.Received.Add(1)
		s.conn.WriteToUDPAddrPort(buf[:n], from)
	}
}

// Close stops the server.
func (s *EchoServer) Close() error {
	err := s.conn.Close()
	<-s.done
	return err
}

// bigBuffers gives a socket 8 MiB buffers. SO_RCVBUFFORCE passes over
// net.core.rmem_max (root only): frames built by XDP on veth carry a whole
// page of truesize each, and the default cap holds only ~100 of them.
func bigBuffers(c *net.UDPConn) {
	c.SetReadBuffer(bufBytes)
	c.SetWriteBuffer(bufBytes)
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bufBytes)
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, bufBytes)
		})
	}
}

// Flood sends sequence-numbered datagrams to an echo server and counts the
// echoes by sequence number.
type Flood struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	seen    []bool
	echoes  atomic.Uint64
	dups    atomic.Uint64
	sent    atomic.Uint64
	stop    chan struct{}
	stopped chan struct{}
	recvd   chan struct{}
}

// FloodConfig paces a flood: Burst datagrams, then a pause of Gap, and
// never more than Window datagrams unanswered, so the flood runs as fast as
// the path answers (a slow VM included) without overrunning socket and
// device queues; a datagram lost for real still shows in the account.
type FloodConfig struct {
	Size   int           // datagram size, at least 8
	Burst  int           // datagrams per burst
	Gap    time.Duration // pause after each burst
	Window uint64        // most datagrams in flight (default 128)
	Max    uint64        // stop after this many; 0: until Stop
}

// StartFlood dials to from inside ns and starts sending.
func StartFlood(ns InNS, to netip.AddrPort, cfg FloodConfig) (*Flood, error) {
	if cfg.Size < 8 {
		cfg.Size = 64
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 32
	}
	if cfg.Window == 0 {
		cfg.Window = 128
	}
	f := &Flood{stop: make(chan struct{}), stopped: make(chan struct{}), recvd: make(chan struct{})}
	err := ns(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return fmt.Errorf("dial %s: %w", to, err)
		}
		f.conn = c
		return nil
	})
	if err != nil {
		return nil, err
	}
	bigBuffers(f.conn)
	go f.receive()
	go f.send(cfg)
	return f, nil
}

func (f *Flood) send(cfg FloodConfig) {
	defer close(f.stopped)
	buf := make([]byte, cfg.Size)
	for seq := uint64(0); cfg.Max == 0 || seq < cfg.Max; {
		select {
		case <-f.stop:
			return
		default:
		}
		for i := 0; i < cfg.Burst && (cfg.Max == 0 || seq < cfg.Max); i++ {
			// Wait for the window to open; a lost datagram keeps it
			// shut only briefly, then the flood moves on.
			for wait := time.Now(); seq-f.echoes.Load() >= cfg.Window && time.Since(wait) < 200*time.Millisecond; {
				time.Sleep(50 * time.Microsecond)
			}
			binary.BigEndian.PutUint64(buf, seq)
			// Make room for the echo before it can arrive.
			f.grow(seq)
			if _, err := f.conn.Write(buf); err != nil {
				// ENOBUFS and the like: try the same sequence again.
				time.Sleep(time.Millisecond)
				continue
			}
			seq++
			f.sent.Store(seq)
		}
		if cfg.Gap > 0 {
			time.Sleep(cfg.Gap)
		}
	}
}

func (f *Flood) grow(seq uint64) {
	f.mu.Lock()
	for uint64(len(f.seen)) <= seq {
		f.seen = append(f.seen, false)
	}
	f.mu.Unlock()
}

func (f *Flood) receive() {
	defer close(f.recvd)
	buf := make([]byte, 2048)
	for {
		n, err := f.conn.Read(buf)
		if err != nil {
			return
		}
		if n < 8 {
			continue
		}
		seq := binary.BigEndian.Uint64(buf)
		f.mu.Lock()
		if seq < uint64(len(f.seen)) {
			if f.seen[seq] {
				f.dups.Add(1)
			} else {
				f.seen[seq] = true
				f.echoes.Add(1)
			}
		}
		f.mu.Unlock()
	}
}

// Sent is how many datagrams went out so far.
func (f *Flood) Sent() uint64 { return f.sent.Load() }

// Echoes is how many distinct datagrams came back so far.
func (f *Flood) Echoes() uint64 { return f.echoes.Load() }

// Dups is how many echoes came back a second time (or more).
func (f *Flood) Dups() uint64 { return f.dups.Load() }

// MissingIn counts the datagrams with sequence numbers in [from, to) that
// were sent and never echoed so far: the loss of one stretch of a running
// flood.
func (f *Flood) MissingIn(from, to uint64) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	to = min(to, f.sent.Load(), uint64(len(f.seen)))
	var n uint64
	for i := from; i < to; i++ {
		if !f.seen[i] {
			n++
		}
	}
	return n
}

// Result is a finished flood's account.
type Result struct {
	Sent, Echoed uint64
	Missing      []uint64 // sequence numbers never echoed (the first 20)
}

// Lost is how many datagrams never came back.
func (r Result) Lost() uint64 { return r.Sent - r.Echoed }

// Stop ends the flood, waits up to drain for the last echoes, and
// accounts for every datagram sent.
func (f *Flood) Stop(drain time.Duration) Result {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	<-f.stopped
	deadline := time.Now().Add(drain)
	for f.Echoes() < f.Sent() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	f.conn.Close()
	<-f.recvd
	r := Result{Sent: f.Sent(), Echoed: f.Echoes()}
	f.mu.Lock()
	for i, ok := range f.seen[:min(uint64(len(f.seen)), r.Sent)] {
		if !ok && len(r.Missing) < 20 {
			r.Missing = append(r.Missing, uint64(i))
		}
	}
	f.mu.Unlock()
	return r
}

// Wait blocks until a flood with Max set has sent everything.
func (f *Flood) Wait() { <-f.stopped }
