package vip

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"
)

// hostNet is the election's way to the kernel for the takeover: the
// interfaces' indexes and MACs resolved once, one rtnetlink socket, one
// packet socket to send the announcements from, and the announcement
// frames built once. Before, every takeover resolved the interface by
// name (net.InterfaceByName: a netlink dump of every link) twice per
// address, dialled an rtnetlink socket per address and opened a packet
// socket per announcement: eight dumps and twelve sockets for four
// addresses, between the peer declared dead and the gratuitous ARP.
//
// What it caches is refreshed where it costs the takeover nothing: the
// takeover probe, which runs during the peer's silence (before the dead
// interval ends), resolves its interfaces afresh and stores them, so a
// link that was re-created or changed its MAC is followed by the next
// takeover; an operation that fails on a cached entry forgets it and
// tries once more afresh. A new Manager (a reload) starts a new cache.
type hostNet struct {
	mu     sync.Mutex
	links  map[string]link
	frames map[Addr]frame // announcements, by address, for links[a.Iface]
	nl     *rtnetlink.Conn
	pkt    int // an unbound packet socket (protocol 0): sends, never receives; -1 until opened
}

// frame is an announcement ready to send.
type frame struct {
	b     []byte
	proto uint16
	dst   net.HardwareAddr
	index int
}

// newHostNet resolves the interfaces of addrs now, in the caller's
// network namespace (the sockets are opened there too, so they stay in
// it whatever thread uses them later). An interface missing now is
// resolved when first used.
func newHostNet(addrs []Addr) *hostNet {
	h := &hostNet{links: map[string]link{}, frames: map[Addr]frame{}, pkt: -1}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range addrs {
		if _, err := h.linkLocked(a.Iface); err == nil {
			h.frameLocked(a)
		}
	}
	if c, err := rtnetlink.Dial(nil); err == nil {
		h.nl = c
	}
	if fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err == nil {
		h.pkt = fd
	}
	return h
}

// Close releases the sockets.
func (h *hostNet) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.nl != nil {
		h.nl.Close()
		h.nl = nil
	}
	if h.pkt >= 0 {
		go unix.Close(h.pkt) // a packet socket's close waits for an RCU grace period
		h.pkt = -1
	}
}

func (h *hostNet) linkLocked(name string) (link, error) {
	if l, ok := h.links[name]; ok {
		return l, nil
	}
	l, err := lookupLink(name)
	if err != nil {
		return link{}, err
	}
	h.links[name] = l
	return l, nil
}

func (h *hostNet) frameLocked(a Addr) (frame, error) {
	l, err := h.linkLocked(a.Iface)
	if err != nil {
		return frame{}, err
	}
	if f, ok := h.frames[a]; ok && f.index == l.index {
		return f, nil
	}
	b, proto, dst, err := announceFrame(l.mac, a)
	if err != nil {
		return frame{}, err
	}
	f := frame{b: b, proto: proto, dst: dst, index: l.index}
	h.frames[a] = f
	return f, nil
}

// store records a freshly resolved link, and drops the frames built for
// an older one.
func (h *hostNet) store(l link) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.links[l.name]; ok && old.index == l.index && old.mac.String() == l.mac.String() {
		return
	}
	h.links[l.name] = l
	for a := range h.frames {
		if a.Iface == l.name {
			delete(h.frames, a)
		}
	}
}

// forgetLocked drops what is cached about interface name and the
// rtnetlink socket: the next use resolves and dials afresh.
func (h *hostNet) forgetLocked(name string) {
	delete(h.links, name)
	for a := range h.frames {
		if a.Iface == name {
			delete(h.frames, a)
		}
	}
	if h.nl != nil {
		h.nl.Close()
		h.nl = nil
	}
}

func (h *hostNet) connLocked() (*rtnetlink.Conn, error) {
	if h.nl == nil {
		c, err := rtnetlink.Dial(nil)
		if err != nil {
			return nil, fmt.Errorf("rtnetlink: %w", err)
		}
		h.nl = c
	}
	return h.nl, nil
}

// retry runs op on the cached state, and once more afresh if it fails.
func (h *hostNet) retry(name string, op func() error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	err := op()
	if err == nil {
		return nil
	}
	h.forgetLocked(name)
	return op()
}

// add adds a to its interface; an address already there is fine.
func (h *hostNet) add(a Addr) error {
	return h.retry(a.Iface, func() error {
		l, err := h.linkLocked(a.Iface)
		if err != nil {
			return fmt.Errorf("add %s: %w", a, err)
		}
		c, err := h.connLocked()
		if err != nil {
			return err
		}
		return newAddr(c, a, l.index)
	})
}

// del removes a; an address already gone, or its interface, is fine.
func (h *hostNet) del(a Addr) error {
	return h.retry(a.Iface, func() error {
		l, err := h.linkLocked(a.Iface)
		if err != nil {
			if isNoSuchIface(err) {
				return nil // the interface is gone, and the address with it
			}
			return fmt.Errorf("remove %s: %w", a, err)
		}
		c, err := h.connLocked()
		if err != nil {
			return err
		}
		return deleteAddr(c, a, l.index)
	})
}

// announce sends one gratuitous ARP (IPv4) or unsolicited NA (IPv6) for
// a: one sendto on the open socket, the frame built once.
func (h *hostNet) announce(a Addr) error {
	return h.retry(a.Iface, func() error {
		f, err := h.frameLocked(a)
		if err != nil {
			return err
		}
		if h.pkt < 0 {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("announce %s: packet socket: %w", a, err)
			}
			h.pkt = fd
		}
		if err := sendFrame(h.pkt, f.index, f.proto, f.b, f.dst); err != nil {
			return fmt.Errorf("announce %s: %w", a, err)
		}
		return nil
	})
}

// probe asks the segment whether anybody holds a, on the interface
// resolved afresh (the probe runs during the peer's silence: the
// takeover that follows uses what it found).
func (h *hostNet) probe(a Addr, deadline time.Time) (net.HardwareAddr, error) {
	l, err := lookupLink(a.Iface)
	if err != nil {
		return nil, err
	}
	h.store(l)
	return probeOn(l, a, deadline)
}

// probeSet is a takeover probe of every address, started before the
// peer's dead interval ends. Its goroutine sends the probes and listens
// until the deadline; but the election does not wait for that goroutine
// to be scheduled after the deadline (on a busy host it ran tens of
// milliseconds late, and the takeover waited: the log's probe_wait):
// once the deadline has passed, answer reads what the kernel queued on
// the probe sockets itself, as the election reads the advert socket.
type probeSet struct {
	addrs    []Addr
	deadline time.Time     // it listens at least until then
	until    time.Time     // and on until then, unless answered: an election round that runs late still reads a probe that listened until the round
	sent     chan struct{} // closed once every probe went out (or failed)
	done     chan struct{} // closed once the goroutine stopped listening

	mu     sync.Mutex // held while frames are read: its holder has seen every frame queued before
	conns  []*packetConn
	who    []net.HardwareAddr
	errs   []error
	closed bool
	end    time.Time // when it stopped listening (closed)
	buf    []byte
}

// startProbe probes addrs, resolving their interfaces afresh (it runs
// during the silence: the takeover after it uses what it found), and
// listens until deadline, and on until until unless answered.
// Its goroutine opens the sockets: in the daemon's network namespace,
// which is every thread's.
func (h *hostNet) startProbe(addrs []Addr, deadline, until time.Time) *probeSet {
	p := newProbeSet(addrs, deadline)
	p.until = until
	go p.run(h)
	return p
}

func newProbeSet(addrs []Addr, deadline time.Time) *probeSet {
	return &probeSet{addrs: addrs, deadline: deadline, sent: make(chan struct{}), done: make(chan struct{}),
		conns: make([]*packetConn, len(addrs)), who: make([]net.HardwareAddr, len(addrs)), errs: make([]error, len(addrs)), buf: make([]byte, 2048)}
}

func (p *probeSet) run(h *hostNet) {
	defer close(p.done)
	links := map[string]link{}
	for i, a := range p.addrs {
		l, ok := links[a.Iface]
		if !ok {
			var err error
			if l, err = lookupLink(a.Iface); err != nil {
				p.errs[i] = err
				continue
			}
			links[a.Iface] = l
			h.store(l)
		}
		c, err := sendProbe(l, a)
		p.mu.Lock()
		p.conns[i], p.errs[i] = c, err
		p.mu.Unlock()
	}
	close(p.sent)
	defer func() {
		p.mu.Lock()
		for _, c := range p.conns {
			if c != nil {
				c.Close()
			}
		}
		p.closed, p.end = true, time.Now()
		p.mu.Unlock()
	}()
	pfd := make([]unix.PollFd, 0, len(p.conns))
	for _, c := range p.conns {
		if c != nil {
			pfd = append(pfd, unix.PollFd{Fd: int32(c.fd), Events: unix.POLLIN})
		}
	}
	if len(pfd) == 0 {
		return
	}
	for {
		// ppoll: a high-resolution timeout (a socket's SO_RCVTIMEO
		// counts in jiffies).
		left := time.Until(later(p.deadline, p.until))
		if left <= 0 {
			return
		}
		ts := unix.NsecToTimespec(left.Nanoseconds())
		for i := range pfd {
			pfd[i].Revents = 0
		}
		if n, err := unix.Ppoll(pfd, &ts, nil); n == 0 || errors.Is(err, unix.EINTR) {
			continue
		} else if err != nil {
			p.mu.Lock()
			for i := range p.errs {
				if p.conns[i] != nil && p.errs[i] == nil && p.who[i] == nil {
					p.errs[i] = fmt.Errorf("probe %s: %w", p.addrs[i], err)
				}
			}
			p.mu.Unlock()
			return
		}
		p.mu.Lock()
		answered := p.readLocked()
		p.mu.Unlock()
		if answered {
			return
		}
	}
}

// readLocked reads every frame queued on the probe sockets; true once
// any address is answered (or a socket failed).
func (p *probeSet) readLocked() bool {
	stop := false
	for i, c := range p.conns {
		if c == nil {
			stop = stop || p.errs[i] != nil
			continue
		}
		for p.who[i] == nil && p.errs[i] == nil {
			n, _, err := unix.Recvfrom(c.fd, p.buf, unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				p.errs[i] = fmt.Errorf("probe %s: %w", p.addrs[i], err)
				break
			}
			p.who[i] = probeAnswer(c.ifc, p.addrs[i], p.buf[:n])
		}
		stop = stop || p.who[i] != nil || p.errs[i] != nil
	}
	return stop
}

// answer is what the probe found for every address (a MAC or an error
// each; both nil: nobody answered), once it has listened until its
// deadline: read here from the sockets while its goroutine still listens
// (not waiting for that goroutine to be scheduled), or from the goroutine
// once it has finished. listened is until when it listened. ok is false
// when the probe has not listened its time (the deadline is ahead, or
// its goroutine has not sent yet): wait on done and ask again.
func (p *probeSet) answer() (who []net.HardwareAddr, errs []error, listened time.Time, ok bool) {
	select {
	case <-p.sent:
	default:
		select {
		case <-p.done:
		default:
			return nil, nil, time.Time{}, false
		}
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	listened = p.end
	if !p.closed {
		if now.Before(p.deadline) {
			return nil, nil, time.Time{}, false
		}
		p.readLocked()
		listened = now
	}
	return append([]net.HardwareAddr(nil), p.who...), append([]error(nil), p.errs...), listened, true
}
