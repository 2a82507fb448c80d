package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-net/tandem/tools/gwpair"
	"github.com/tandem-net/tandem/tools/lab"
)

// Both ends of every connection send a counter stream: the n-th 8-byte
// word is n XOR a salt made of the client's port and the direction, so a
// byte lost, doubled, reordered or taken from another connection is seen
// by the reader.
const (
	chunk            = 1024                   // bytes per write
	every            = 200 * time.Millisecond // a write per connection and direction
	upSalt, downSalt = 0x5550 << 48, 0x444f << 48
)

// counter writes and checks one direction's stream.
type counter struct{ salt, off uint64 }

func (c *counter) next(b []byte) {
	for i := range b {
		w := (c.off / 8) ^ c.salt
		b[i] = byte(w >> (56 - 8*(c.off%8)))
		c.off++
	}
}

// check compares b with the stream's next bytes.
func (c *counter) check(b []byte) error {
	want := make([]byte, len(b))
	at := c.off
	c.next(want)
	for i := range b {
		if b[i] != want[i] {
			return fmt.Errorf("byte %d of the stream is %#x, want %#x", at+uint64(i), b[i], want[i])
		}
	}
	return nil
}

// end is one side of a connection: it writes its stream every `every`
// and checks what it reads, until the connection fails or is closed.
type end struct {
	c    net.Conn
	recv atomic.Uint64 // bytes read and checked
	err  atomic.Pointer[error]
	bad  atomic.Bool // the stream it read was wrong: never allowed
	done chan struct{}
	once sync.Once // closes done: the cleanup and a failing reader or writer race
}

func runEnd(c net.Conn, out, in uint64) *end {
	e := &end{c: c, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		w := counter{salt: out}
		buf := make([]byte, chunk)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-e.done:
				return
			case <-t.C:
			}
			w.next(buf)
			if _, err := c.Write(buf); err != nil {
				e.fail(fmt.Errorf("write: %w", err))
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		r := counter{salt: in}
		buf := make([]byte, 4*chunk)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if err := r.check(buf[:n]); err != nil {
					e.bad.Store(true)
					e.fail(err)
					return
				}
				e.recv.Add(uint64(n))
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				e.fail(fmt.Errorf("read: %w", err))
				return
			}
		}
	}()
	go func() { wg.Wait(); c.Close() }()
	return e
}

func (e *end) fail(err error) {
	if e.err.CompareAndSwap(nil, &err) {
		e.close()
	}
}

func (e *end) close() {
	e.once.Do(func() {
		close(e.done)
		e.c.Close()
	})
}

// Err is why the end stopped, or nil while it runs.
func (e *end) Err() error {
	if p := e.err.Load(); p != nil {
		return *p
	}
	return nil
}

// backends serve the streams on both backends; they keep the backend end
// of every connection by the client's address (the proxy keeps it).
type backends struct {
	mu   sync.Mutex
	ends map[string]*end
	lns  []net.Listener
}

func serve(hosts []*lab.Host) (*backends, error) {
	b := &backends{ends: map[string]*end{}}
	for _, h := range hosts {
		var ln net.Listener
		if err := h.Do(func() (err error) {
			ln, err = net.Listen("tcp", "[::]:"+strconv.Itoa(gwpair.BackendPort))
			return err
		}); err != nil {
			b.close()
			return nil, err
		}
		b.lns = append(b.lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				port := uint64(c.RemoteAddr().(*net.TCPAddr).Port)
				e := runEnd(c, downSalt^port, upSalt^port)
				b.mu.Lock()
				b.ends[c.RemoteAddr().String()] = e
				b.mu.Unlock()
			}
		}()
	}
	return b, nil
}

func (b *backends) end(client string) *end {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ends[client]
}

func (b *backends) forget(client string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.ends[client]; e != nil {
		e.close()
	}
	delete(b.ends, client)
}

func (b *backends) close() {
	for _, ln := range b.lns {
		ln.Close()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.ends {
		e.close()
	}
}

// conn is one client connection through the VIP and its backend end.
type conn struct {
	name   string // the client's address and port
	client *end
	be     *backends
}

// dial opens a connection to vip through the SYN proxy and starts its
// streams; it waits until the backend has accepted it.
func dial(client *lab.Host, be *backends, vip string) (*conn, error) {
	var c net.Conn
	if err := client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(vip, strconv.Itoa(gwpair.Port)), 10*time.Second)
		return err
	}); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", vip, err)
	}
	port := uint64(c.LocalAddr().(*net.TCPAddr).Port)
	x := &conn{name: c.LocalAddr().String(), be: be, client: runEnd(c, upSalt^port, downSalt^port)}
	if err := gwpair.WaitFor(20*time.Second, "the backend accepted "+x.name, func() (bool, string) {
		return be.end(x.name) != nil, ""
	}); err != nil {
		x.close()
		return nil, err
	}
	return x, nil
}

// progress is how many bytes each end has read and checked.
func (x *conn) progress() (up, down uint64) {
	if e := x.be.end(x.name); e != nil {
		up = e.recv.Load()
	}
	return up, x.client.recv.Load()
}

// broken says why the connection stopped at either end, or "".
func (x *conn) broken() string {
	if err := x.client.Err(); err != nil {
		return "client: " + err.Error()
	}
	if e := x.be.end(x.name); e != nil && e.Err() != nil {
		return "backend: " + e.Err().Error()
	}
	return ""
}

// corrupt says whether either end read a wrong stream.
func (x *conn) corrupt() bool {
	e := x.be.end(x.name)
	return x.client.bad.Load() || (e != nil && e.bad.Load())
}

func (x *conn) close() {
	x.client.close()
	x.be.forget(x.name)
}
