package syncer_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
)

// pairCerts makes a pair CA with certificates for "primary" and "standby",
// and for "third", a host of the same CA that is neither.
func pairCerts(t *testing.T) string { return pairCertsTB(t) }

func pairCertsTB(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := syncer.MakeCerts(dir, map[string][]net.IP{"primary": {net.IPv4(127, 0, 0, 1)}, "standby": {net.IPv4(127, 0, 0, 1)}, "third": {net.IPv4(127, 0, 0, 1)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tlsConfig is the configuration of "primary" or "standby", each
// admitting the other.
func tlsConfig(t *testing.T, dir, name string) *tls.Config { return tlsConfigTB(t, dir, name) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func listen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func tlsConfigTB(t testing.TB, dir, name string) *tls.Config {
	t.Helper()
	peer := map[string]string{"primary": "standby", "standby": "primary"}[name]
	c, err := syncer.TLSConfig(dir, name, peer)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// standby starts a receiver on loopback applying to a fresh peer map.
func standby(t *testing.T, h *host, cfg *tls.Config) (*syncer.Receiver, syncer.Map, string) {
	t.Helper()
	peer := newPeerMap(t, h)
	r := &syncer.Receiver{TLS: cfg, Applier: syncer.NewApplier(peer), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if testing.Verbose() {
		r.Log = slog.Default()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(ln)
	t.Cleanup(func() { ln.Close() })
	return r, peer, ln.Addr().String()
}

// TestSessionReplicates: deltas from the engine cross a mutual-TLS 1.3
// session and the standby's map ends equal to the primary's.
func TestSessionReplicates(t *testing.T) {
	h := newHost(t, 4<<20)
	dir := pairCerts(t)
	rcv, peer, addr := standby(t, h, tlsConfig(t, dir, "standby"))
	s, err := syncer.Dial(context.Background(), addr, tlsConfig(t, dir, "primary"), syncer.Hello{Generation: 1}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, _ := syncer.NewEngine(h.sync, h.reg)
	var last uint64
	emit := func(d syncer.Delta) error { last = d.Seq; return s.Send(d) }
	for k := uint32(0); k < 50_000; k += 64 {
		h.send(t, frame(bpf.SynctestSynctestOpST_UPSERT, k, 64, 1), 1)
		if k%6400 == 0 {
			if err := e.Tick(emit); err != nil {
				t.Fatal(err)
			}
			s.Flush()
		}
	}
	h.send(t, frame(bpf.SynctestSynctestOpST_DELETE, 0, 64, 0), 1)
	if err := e.Tick(emit); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	if err := s.WaitAcked(last, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	equalMaps(t, h.objs.SyncTest, peer.M)
	if rcv.LastApplied() != last || s.Unacked() != 0 {
		t.Fatalf("applied %d of %d, %d unacked", rcv.LastApplied(), last, s.Unacked())
	}
}

// TestForeignCARefused: a primary whose certificate another CA signed is
// refused at the handshake and changes nothing.
func TestForeignCARefused(t *testing.T) {
	h := newHost(t, 1<<16)
	rcv, peer, addr := standby(t, h, tlsConfig(t, pairCerts(t), "standby"))
	other := pairCerts(t) // same names, another CA
	s, err := syncer.Dial(context.Background(), addr, tlsConfig(t, other, "primary"), syncer.Hello{}, 16)
	if err == nil {
		s.Send(syncer.Delta{Seq: 1, Map: 1, Op: syncer.OpDelete, Key: []byte{1, 0, 0, 0}})
		s.Flush()
		s.Close()
		t.Fatal("a primary from another CA got a session")
	}
	deadline := time.Now().Add(5 * time.Second)
	for rcv.Refused() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if rcv.Refused() != 1 || rcv.LastApplied() != 0 || len(dump(t, peer.M)) != 0 {
		t.Fatalf("refused %d, applied %d, standby entries %d", rcv.Refused(), rcv.LastApplied(), len(dump(t, peer.M)))
	}
}

// TestBadFramesCloseSession: after a valid handshake and hello, a
// truncated or garbage frame closes the session; the frames before it
// were applied, the bad one and anything after it were not.
func TestBadFramesCloseSession(t *testing.T) {
	key := []byte{5, 0, 0, 0}
	val := make([]byte, 32)
	val[0] = 1
	good := syncer.AppendDelta(nil, syncer.Delta{Seq: 1, Map: 1, Op: syncer.OpUpsert, Key: key, Value: val})
	after := syncer.AppendDelta(nil, syncer.Delta{Seq: 3, Map: 1, Op: syncer.OpUpsert, Key: []byte{6, 0, 0, 0}, Value: val})
	cases := map[string][]byte{
		"garbage":                 []byte("GET / HTTP/1.1\r\n\r\n"),
		"truncated":               syncer.AppendDelta(nil, syncer.Delta{Seq: 2, Map: 1, Op: syncer.OpUpsert, Key: key, Value: val})[:20],
		"wrong value size":        syncer.AppendDelta(nil, syncer.Delta{Seq: 2, Map: 1, Op: syncer.OpUpsert, Key: key, Value: val[:7]}),
		"unknown map":             syncer.AppendDelta(nil, syncer.Delta{Seq: 2, Map: 9, Op: syncer.OpUpsert, Key: key, Value: val}),
		"gap in sequence":         syncer.AppendDelta(nil, syncer.Delta{Seq: 7, Map: 1, Op: syncer.OpUpsert, Key: key, Value: val}),
		"hello again after hello": syncer.AppendHello(nil, syncer.Hello{Version: 1}),
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, 1<<16)
			dir := pairCerts(t)
			rcv, peer, addr := standby(t, h, tlsConfig(t, dir, "standby"))
			c, err := tls.Dial("tcp", addr, tlsConfig(t, dir, "primary"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			w := bufio.NewWriter(c)
			w.Write(syncer.AppendHello(nil, syncer.Hello{Version: syncer.ProtocolVersion}))
			w.Write(good)
			w.Write(bad)
			if name != "truncated" {
				w.Write(after)
			}
			w.Flush()
			if name == "truncated" {
				c.CloseWrite()
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, c) // until the standby closes
			if rcv.Closed() != 1 {
				t.Fatalf("closed %d sessions, want 1", rcv.Closed())
			}
			got := dump(t, peer.M)
			if len(got) != 1 || got[5] == nil {
				t.Fatalf("standby holds %v: want only the good delta", got)
			}
		})
	}
}

// tlsPeer is name's configuration that admits only peer.
func tlsPeer(t testing.TB, dir, name, peer string) *tls.Config {
	t.Helper()
	c, err := syncer.TLSConfig(dir, name, peer)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientAs presents name's certificate and accepts any server the pair's
// CA signed: an impostor that checks nothing itself.
func clientAs(t testing.TB, dir, name string) *tls.Config {
	t.Helper()
	c, err := syncer.TLSConfig(dir, name, "any-other-name")
	if err != nil {
		t.Fatal(err)
	}
	c.VerifyConnection = nil
	return c
}

// receiver starts a standby receiver (this host "standby", admitting
// "primary") on loopback; set adjusts it before it serves.
func receiver(t *testing.T, h *host, dir string, set func(*syncer.Receiver)) (*syncer.Receiver, syncer.Map, string) {
	t.Helper()
	peer := newPeerMap(t, h)
	r := &syncer.Receiver{TLS: tlsPeer(t, dir, "standby", "primary"), Applier: syncer.NewApplier(peer), Log: discard}
	if testing.Verbose() {
		r.Log = slog.Default()
	}
	if set != nil {
		set(r)
	}
	ln := listen(t)
	done := make(chan struct{})
	go func() { r.Serve(ln); close(done) }()
	t.Cleanup(func() { ln.Close(); r.Stop(); <-done })
	return r, peer, ln.Addr().String()
}

// stillOpen: the standby has not closed c (a read times out rather than
// ending).
func stillOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestIdleConnDoesNotBlockPrimary: a connection that holds the listener
// (an idle TCP connection, or a client with a good certificate that
// says hello and then nothing) does not keep the real primary out: its
// session comes up and replicates while that connection is still open.
// The primary's dial has a generous timeout; what is checked is the
// order of events, not how long they took.
func TestIdleConnDoesNotBlockPrimary(t *testing.T) {
	cases := map[string]func(t *testing.T, dir, addr string) net.Conn{
		"idle tcp": func(t *testing.T, dir, addr string) net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		"tls hello then idle": func(t *testing.T, dir, addr string) net.Conn {
			c, err := tls.Dial("tcp", addr, tlsPeer(t, dir, "primary", "standby"))
			if err != nil {
				t.Fatal(err)
			}
			c.Write(syncer.AppendHello(nil, syncer.Hello{Version: syncer.ProtocolVersion}))
			if _, err := syncer.NewReader(c).Next(); err != nil {
				t.Fatalf("the standby did not answer the idle client's hello: %v", err)
			}
			return c
		},
	}
	for name, hold := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, 1<<16)
			dir := pairCerts(t)
			rcv, peer, addr := receiver(t, h, dir, func(r *syncer.Receiver) {
				// Long enough that only the primary's arrival could end it.
				setLongTimeouts(r)
			})
			idle := hold(t, dir, addr)
			defer idle.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := syncer.Dial(ctx, addr, tlsPeer(t, dir, "primary", "standby"), syncer.Hello{Generation: 1}, 16)
			if err != nil {
				t.Fatalf("the primary could not connect while %s was held: %v", name, err)
			}
			defer s.Close()
			val := make([]byte, 32)
			val[0] = 7
			s.Send(syncer.Delta{Seq: 1, Map: 1, Op: syncer.OpUpsert, Key: []byte{3, 0, 0, 0}, Value: val})
			s.Flush()
			if err := s.WaitAcked(1, time.Minute); err != nil {
				t.Fatal(err)
			}
			if got := dump(t, peer.M); got[3] == nil {
				t.Fatalf("standby holds %v: want key 3", got)
			}
			if name == "idle tcp" && !stillOpen(idle) {
				t.Fatal("the idle connection was closed before the primary got in: it was served in turn, not at once")
			}
			if rcv.Sessions() < 1 {
				t.Fatalf("%d sessions", rcv.Sessions())
			}
		})
	}
}

// TestNewestSessionWins: a primary that reconnects while its old session
// is half-dead (open, silent) gets the new session at once; the old one
// is closed, and only the new one applies.
func TestNewestSessionWins(t *testing.T) {
	h := newHost(t, 1<<16)
	dir := pairCerts(t)
	rcv, peer, addr := receiver(t, h, dir, setLongTimeouts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := tlsPeer(t, dir, "primary", "standby")
	old, err := syncer.Dial(ctx, addr, cfg, syncer.Hello{Generation: 1}, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	s, err := syncer.Dial(ctx, addr, cfg, syncer.Hello{Generation: 1}, 16)
	if err != nil {
		t.Fatalf("the reconnecting primary: %v", err)
	}
	defer s.Close()
	select {
	case <-old.Done():
	case <-ctx.Done():
		t.Fatal("the old session is still open after the new one came up")
	}
	val := make([]byte, 32)
	val[0] = 1
	s.Send(syncer.Delta{Seq: 1, Map: 1, Op: syncer.OpUpsert, Key: []byte{4, 0, 0, 0}, Value: val})
	s.Flush()
	if err := s.WaitAcked(1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, peer.M); len(got) != 1 || got[4] == nil || rcv.Sessions() != 2 {
		t.Fatalf("standby holds %v after %d sessions", got, rcv.Sessions())
	}
}

// TestPeerNameRefused: certificates the pair's CA signed for anyone but
// the configured peer are refused at the handshake, counted, and change
// nothing: a third host's, and the standby's own.
func TestPeerNameRefused(t *testing.T) {
	for _, name := range []string{"third", "standby"} {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, 1<<16)
			dir := pairCerts(t)
			rcv, peer, addr := receiver(t, h, dir, nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := syncer.Dial(ctx, addr, clientAs(t, dir, name), syncer.Hello{}, 16)
			if err == nil {
				s.Send(syncer.Delta{Seq: 1, Map: 1, Op: syncer.OpUpsert, Key: []byte{1, 0, 0, 0}, Value: make([]byte, 32)})
				s.Flush()
				s.WaitAcked(1, 5*time.Second)
				s.Close()
			}
			for rcv.Refused() == 0 && rcv.Sessions() == 0 && ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
			}
			if rcv.RefusedFor(syncer.RefuseName) != 1 || rcv.Refused() != 1 || rcv.Sessions() != 0 || rcv.LastApplied() != 0 || len(dump(t, peer.M)) != 0 {
				t.Fatalf("%s's certificate: refused %d, sessions %d, applied %d, standby entries %d",
					name, rcv.Refused(), rcv.Sessions(), rcv.LastApplied(), len(dump(t, peer.M)))
			}
		})
	}
}

// TestPrimaryRefusesWrongStandby: the primary checks the name of the
// standby it dialled too: a host of the same CA listening at the
// standby's address gets no session (and no deltas).
func TestPrimaryRefusesWrongStandby(t *testing.T) {
	dir := pairCerts(t)
	ln := listen(t)
	defer ln.Close()
	go func() {
		// The impostor admits the primary (its own check is not the point).
		cfg := tlsPeer(t, dir, "third", "primary")
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					return
				}
				syncer.NewReader(tc).Next()
				tc.Write(syncer.AppendHello(nil, syncer.Hello{Version: syncer.ProtocolVersion}))
				io.Copy(io.Discard, tc)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := syncer.Dial(ctx, ln.Addr().String(), tlsPeer(t, dir, "primary", "standby"), syncer.Hello{}, 16)
	if err == nil {
		s.Close()
		t.Fatal("the primary opened a session with a host that is not its standby")
	}
	t.Logf("refused: %v", err)
}

// setLongTimeouts keeps held connections open through a test: what ends
// them must be the event under test, not a deadline.
func setLongTimeouts(r *syncer.Receiver) { r.HelloTimeout, r.IdleTimeout = time.Hour, time.Hour }

func tlsServer(c net.Conn, cfg *tls.Config) error {
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	_, err := tc.Read(make([]byte, 1)) // the client's close
	if err == io.EOF {
		err = nil
	}
	return err
}

func tlsDialCfg(addr string, cfg *tls.Config) (*tls.Conn, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	// TLS 1.3: the server's verdict on the client comes with its first
	// answer; a read that times out means it accepted.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = nil
	}
	if err != nil {
		c.Close()
	}
	return c, err
}

// TestDeadlines: a connection that does not finish its handshake and
// hello within HelloTimeout is refused and closed; a session that sends
// nothing for IdleTimeout is closed; one that sends keepalives stays; more
// connections in their handshake than MaxPending are refused as busy.
func TestDeadlines(t *testing.T) {
	h := newHost(t, 1<<16)
	dir := pairCerts(t)
	rcv, _, addr := receiver(t, h, dir, func(r *syncer.Receiver) {
		r.HelloTimeout, r.IdleTimeout, r.MaxPending = 300*time.Millisecond, 300*time.Millisecond, 2
	})
	closedBy := func(c net.Conn) error {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		_, err := io.Copy(io.Discard, c)
		return err
	}
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := closedBy(idle); err != nil {
		t.Fatalf("idle TCP connection: %v, want closed by the standby", err)
	}
	if rcv.RefusedFor(syncer.RefuseHandshake) != 1 {
		t.Fatalf("refused for the handshake %d, want 1", rcv.RefusedFor(syncer.RefuseHandshake))
	}

	// Hello, then silence: the session opens and is closed.
	silent, err := tls.Dial("tcp", addr, tlsConfig(t, dir, "primary"))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.Write(syncer.AppendHello(nil, syncer.Hello{Version: syncer.ProtocolVersion}))
	if err := closedBy(silent); err != nil {
		t.Fatalf("silent session: %v, want closed by the standby", err)
	}
	if rcv.Sessions() != 1 || rcv.Closed() != 1 {
		t.Fatalf("sessions %d, closed %d: want the silent one opened and closed", rcv.Sessions(), rcv.Closed())
	}

	// A primary that sends keepalives outlives many idle timeouts.
	s, err := syncer.Dial(context.Background(), addr, tlsConfig(t, dir, "primary"), syncer.Hello{}, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Peer.Flags&syncer.HelloKeepalive == 0 {
		t.Fatal("the standby's hello does not ask for keepalives")
	}
	for i := 0; i < 30; i++ {
		if err := s.Keepalive(0); err != nil {
			t.Fatal(err)
		}
		select {
		case <-s.Done():
			t.Fatalf("a session with keepalives was closed: %v", s.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}

	// More than MaxPending connections in their handshake at once: one is
	// refused at once. (They are opened without waiting, so more than two
	// are pending whatever the machine's speed; each holds 300 ms.)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; rcv.RefusedFor(syncer.RefuseBusy) == 0; i++ {
		if i == 1000 {
			t.Fatal("1000 connections and none refused as busy")
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		time.Sleep(time.Millisecond)
	}
	// The slots free when the held connections time out.
	for _, c := range held {
		closedBy(c)
	}
	s2, err := syncer.Dial(context.Background(), addr, tlsConfig(t, dir, "primary"), syncer.Hello{}, 16)
	if err != nil {
		t.Fatalf("after the flood: %v", err)
	}
	s2.Close()
}
