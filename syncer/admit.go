package syncer

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// Admission is how tandem's TLS listeners (the sync receiver, the
// migration control) admit connections: each on its own goroutine, at
// most MaxPending at once in their handshake (more are closed at once
// and reported to Busy), every open one tracked so Stop ends them all.
// A connection that never finishes its handshake delays nobody: the
// handler bounds it with Handshake's deadline and calls release once it
// is past its opening (handshake plus the protocol's first message).
type Admission struct {
	MaxPending int              // default DefaultMaxPending
	Busy       func(c net.Conn) // a connection refused because too many are pending; nil: nothing

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	stopping bool
	wg       sync.WaitGroup
	pending  chan struct{}
	once     sync.Once
}

func (a *Admission) init() {
	a.once.Do(func() {
		if a.MaxPending <= 0 {
			a.MaxPending = DefaultMaxPending
		}
		a.pending = make(chan struct{}, a.MaxPending)
		a.conns = map[net.Conn]struct{}{}
	})
}

// Serve accepts connections until ln closes and runs handle for each on
// its own goroutine; handle calls release (idempotent) when c is past
// its opening, and release runs anyway when handle returns, which
// closes c. Serve returns when every connection is done.
func (a *Admission) Serve(ln net.Listener, handle func(c net.Conn, release func())) error {
	a.init()
	defer a.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		select {
		case a.pending <- struct{}{}:
		default:
			// Many connections in their handshake at once are a flood: the
			// slots free within the handshake deadline, and clients retry.
			c.Close()
			if a.Busy != nil {
				a.Busy(c)
			}
			continue
		}
		if !a.track(c) {
			<-a.pending
			c.Close()
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer a.untrack(c)
			defer c.Close()
			released := false
			release := func() {
				if !released {
					released = true
					<-a.pending
				}
			}
			defer release()
			handle(c, release)
		}()
	}
}

// Stop ends every open connection and makes Serve return once its
// listener is closed (the caller closes it).
func (a *Admission) Stop() {
	a.init()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopping = true
	for c := range a.conns {
		c.Close()
	}
}

// Stopping is whether Stop was called: a handler whose read failed tells
// a stopping daemon from a peer that went away.
func (a *Admission) Stopping() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopping
}

func (a *Admission) track(c net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

func (a *Admission) untrack(c net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.conns, c)
}

// Handshake runs the TLS server handshake on c under a deadline of
// timeout, which stays set for the protocol's opening message (the
// caller moves it on once that is read). A certificate refused by name
// comes back as a *PeerNameError.
func Handshake(c net.Conn, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	c.SetDeadline(time.Now().Add(timeout))
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return tc, nil
}
