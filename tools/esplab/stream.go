package esplab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-net/tandem/tools/lab"
)

// StreamPort is the UDP port of the lab's stream (inside the policies,
// which select UDP).
const StreamPort = 7500

// Stream is a numbered UDP stream through the SAs: one sender, a
// receiver on every host of the other end (so a failover keeps counting),
// each datagram numbered, so loss and duplicates are counts.
type Stream struct {
	sent    atomic.Uint64
	mu      sync.Mutex
	got     map[uint64]int
	rx      []*net.UDPConn
	tx      *net.UDPConn
	stop    chan struct{}
	done    sync.WaitGroup // receivers
	sender  chan struct{}  // closed when the sender returned
	paused  atomic.Bool
	lastRx  atomic.Int64
	sendErr error
}

// StreamResult is what a stopped stream counted.
type StreamResult struct {
	Sent, Received, Lost, Dup uint64
}

func (r StreamResult) String() string {
	return fmt.Sprintf("sent %d, received %d, lost %d, duplicated %d", r.Sent, r.Received, r.Lost, r.Dup)
}

// StartStream starts the peer -> gateways stream (StreamSrc to
// StreamDst:StreamPort) at rate datagrams a second (paced; under TCG keep it
// in the hundreds).
func (l *Lab) StartStream(rate int) (*Stream, error) {
	return StartStream(l.Peer, l.StreamSrc, l.GWs, netip.AddrPortFrom(l.StreamDst, StreamPort), rate)
}

// StartFlow streams to flow i (FlowSAs): port FlowPort+i, SA
// FlowSPIBase+i.
func (l *Lab) StartFlow(i, rate int) (*Stream, error) {
	return StartStream(l.Peer, l.StreamSrc, l.GWs, netip.AddrPortFrom(l.StreamDst, uint16(FlowPort+i)), rate)
}

// StartReverse starts the stream the other way: from the owner (the VIP
// or its inner address) to the peer, through the outbound SA.
func (l *Lab) StartReverse(rate int) (*Stream, error) {
	return StartStream(l.OwnerHost(), l.StreamDst, []*lab.Host{l.Peer}, netip.AddrPortFrom(l.StreamSrc, StreamPort), rate)
}

// StartStream sends from host from (bound to src) to dst at rate a
// second, received on every host of to.
func StartStream(from *lab.Host, src netip.Addr, to []*lab.Host, dst netip.AddrPort, rate int) (*Stream, error) {
	if rate <= 0 {
		return nil, errors.New("esplab: stream rate must be positive")
	}
	s := &Stream{got: map[uint64]int{}, stop: make(chan struct{}), sender: make(chan struct{})}
	netw := "udp4"
	if dst.Addr().Is6() {
		netw = "udp6"
	}
	for _, h := range to {
		var c *net.UDPConn
		if err := h.Do(func() (err error) {
			c, err = net.ListenUDP(netw, &net.UDPAddr{Port: int(dst.Port())})
			return err
		}); err != nil {
			s.close()
			return nil, fmt.Errorf("esplab: stream receiver on %s: %w", h.Name, err)
		}
		c.SetReadBuffer(4 << 20)
		s.rx = append(s.rx, c)
	}
	if err := from.Do(func() (err error) {
		s.tx, err = net.ListenUDP(netw, &net.UDPAddr{IP: src.AsSlice()})
		return err
	}); err != nil {
		s.close()
		return nil, fmt.Errorf("esplab: stream sender on %s: %w", from.Name, err)
	}
	for _, c := range s.rx {
		s.done.Add(1)
		go s.receive(c)
	}
	go s.send(net.UDPAddrFromAddrPort(dst), time.Second/time.Duration(rate))
	return s, nil
}

func (s *Stream) send(to *net.UDPAddr, every time.Duration) {
	defer close(s.sender)
	t := time.NewTicker(every)
	defer t.Stop()
	b := make([]byte, 64)
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if s.paused.Load() {
			continue
		}
		n := s.sent.Load()
		binary.BigEndian.PutUint64(b, n)
		if _, err := s.tx.WriteToUDP(b, to); err != nil {
			// The kernel refuses a write while the policy has no SA
			// (EAGAIN while it acquires one): counted as sent and lost.
			if s.sendErr == nil {
				s.sendErr = err
			}
		}
		s.sent.Add(1)
	}
}

func (s *Stream) receive(c *net.UDPConn) {
	defer s.done.Done()
	b := make([]byte, 2048)
	for {
		n, err := c.Read(b)
		if err != nil {
			return
		}
		if n < 8 {
			continue
		}
		s.lastRx.Store(time.Now().UnixNano())
		s.mu.Lock()
		s.got[binary.BigEndian.Uint64(b)]++
		s.mu.Unlock()
	}
}

// Pause stops sending until Resume (the receivers keep counting).
func (s *Stream) Pause()  { s.paused.Store(true) }
func (s *Stream) Resume() { s.paused.Store(false) }

// Sent is the number of datagrams sent so far.
func (s *Stream) Sent() uint64 { return s.sent.Load() }

// Received is the number of distinct datagrams received so far.
func (s *Stream) Received() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.got))
}

// WaitReceived waits until n distinct datagrams arrived, or timeout.
func (s *Stream) WaitReceived(n uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for s.Received() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("esplab: stream received %d of %d in %s", s.Received(), n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Stop stops sending, waits until every datagram sent has arrived or
// nothing arrived for settle (a datagram in flight under TCG can take a
// while), and returns the counts.
func (s *Stream) Stop(settle time.Duration) StreamResult {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.sender
	stopped := time.Now()
	for {
		if s.Received() >= s.sent.Load() {
			break
		}
		last := time.Unix(0, max(s.lastRx.Load(), stopped.UnixNano()))
		if time.Since(last) > settle {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.close()
	s.done.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := StreamResult{Sent: s.sent.Load(), Received: uint64(len(s.got))}
	for _, c := range s.got {
		r.Dup += uint64(c - 1)
	}
	if r.Sent > r.Received {
		r.Lost = r.Sent - r.Received
	}
	return r
}

// Err is the first send error, if any (each counts as a lost datagram);
// read it after Stop.
func (s *Stream) Err() error { return s.sendErr }

func (s *Stream) close() {
	for _, c := range s.rx {
		c.Close()
	}
	if s.tx != nil {
		s.tx.Close()
	}
}
