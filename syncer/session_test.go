package syncer_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
)

// pairCerts makes a pair CA with certificates for "primary" and "standby".
func pairCerts(t *testing.T) string { return pairCertsTB(t) }

func pairCertsTB(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := syncer.MakeCerts(dir, map[string][]net.IP{"primary": {net.IPv4(127, 0, 0, 1)}, "standby": {net.IPv4(127, 0, 0, 1)}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	return dir
}

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
	c, err := syncer.TLSConfig(dir, name)
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
