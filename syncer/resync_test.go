package syncer_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/syncer"
)

// pair is a primary and a standby that can be disconnected and restarted.
type pair struct {
	t       *testing.T
	h       *host
	e       *syncer.Engine
	j       *syncer.Journal
	meta    syncer.Meta // the primary's
	peer    syncer.Map
	certs   string
	rcv     *syncer.Receiver
	ln      net.Listener
	s       *syncer.Sender
	nextKey uint32
}

func newPair(t *testing.T, journal int) *pair {
	h := newHost(t, 8<<20)
	e, err := syncer.NewEngine(h.sync, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := syncer.LoadMeta(filepath.Join(t.TempDir(), "none"))
	m.Generation = 1
	return &pair{t: t, h: h, e: e, j: syncer.NewJournal(journal, 64<<20), meta: m, peer: newPeerMap(t, h), certs: pairCerts(t)}
}

// startStandby starts a receiver from the standby's saved metadata.
func (p *pair) startStandby(meta syncer.Meta) {
	p.rcv = &syncer.Receiver{TLS: tlsConfig(p.t, p.certs, "standby"), Applier: syncer.NewApplier(p.peer), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p.rcv.Restore(meta)
	var err error
	if p.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		p.t.Fatal(err)
	}
	go p.rcv.Serve(p.ln)
}

// stopStandby kills the session and returns the standby's metadata.
func (p *pair) stopStandby() syncer.Meta {
	if p.s != nil {
		p.s.Close()
		p.s = nil
	}
	p.ln.Close()
	time.Sleep(50 * time.Millisecond)
	var m syncer.Meta
	m.LastApplied, m.PeerGeneration = p.rcv.State()
	return m
}

// connect dials the standby and resyncs; it returns the mode chosen.
func (p *pair) connect() syncer.Mode {
	var err error
	p.s, err = syncer.Dial(context.Background(), p.ln.Addr().String(), tlsConfig(p.t, p.certs, "primary"), syncer.Hello{Node: p.meta.Node, Generation: p.meta.Generation}, 1<<22)
	if err != nil {
		p.t.Fatal(err)
	}
	mode, why, err := syncer.Resync(p.meta, p.j, p.e, p.s)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("resync: %s (%s)", mode, why)
	return mode
}

// change makes n new entries and updates some old ones, one tick; the
// deltas go to the journal and, when connected, to the standby.
func (p *pair) change(n uint32) {
	for k := p.nextKey; k < p.nextKey+n; k += 32 {
		p.h.send(p.t, frame(bpf.SynctestSynctestOpST_UPSERT, k, 32, 1), 1)
	}
	if p.nextKey > 64 {
		p.h.send(p.t, frame(bpf.SynctestSynctestOpST_UPSERT, 0, 32, 5), 1)
		p.h.send(p.t, frame(bpf.SynctestSynctestOpST_DELETE, p.nextKey-64, 16, 0), 1)
	}
	p.nextKey += n
	err := p.e.Tick(func(d syncer.Delta) error {
		p.j.Add(d)
		if p.s != nil {
			return p.s.Send(d)
		}
		return nil
	})
	if err != nil {
		p.t.Fatal(err)
	}
	if p.s != nil {
		p.s.Flush()
	}
}

func (p *pair) converge() {
	if err := p.s.WaitAcked(p.e.Seq(), 30*time.Second); err != nil {
		p.t.Fatal(err)
	}
	equalMaps(p.t, p.h.objs.SyncTest, p.peer.M)
	if _, gen := p.rcv.State(); gen != p.meta.Generation {
		p.t.Fatalf("standby's state is of generation %d after the resync, want %d", gen, p.meta.Generation)
	}
}

// TestResyncModes: each way a standby comes back picks its mode, and each
// converges to equal maps.
func TestResyncModes(t *testing.T) {
	cases := []struct {
		name    string
		journal int
		between func(p *pair, standbyMeta *syncer.Meta) // while the standby is away
		want    syncer.Mode
	}{
		{"restarted mid-stream: journal", 1 << 20, func(p *pair, _ *syncer.Meta) { p.change(3000) }, syncer.ModeJournal},
		{"down past the journal: incremental", 500, func(p *pair, _ *syncer.Meta) { p.change(5000); p.change(5000) }, syncer.ModeIncremental},
		{"maps wiped: full", 1 << 20, func(p *pair, _ *syncer.Meta) {
			p.change(1000)
			var k uint32
			for p.peer.M.NextKey(nil, &k) == nil {
				p.peer.M.Delete(k)
			}
		}, syncer.ModeFull},
		{"primary's generation changed: full", 1 << 20, func(p *pair, _ *syncer.Meta) { p.meta.Generation++; p.change(1000) }, syncer.ModeFull},
		{"corrupt standby metadata: full", 1 << 20, func(p *pair, m *syncer.Meta) {
			p.change(1000)
			path := filepath.Join(p.t.TempDir(), "standby.json")
			os.WriteFile(path, []byte("{\"node\": [1,2"), 0o644)
			fresh, err := syncer.LoadMeta(path)
			if err == nil {
				p.t.Fatal("corrupt metadata accepted")
			}
			*m = fresh
		}, syncer.ModeFull},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPair(t, c.journal)
			p.startStandby(syncer.Meta{})
			if mode := p.connect(); mode != syncer.ModeFull {
				t.Fatalf("first contact: %s, want full", mode)
			}
			p.change(2000)
			p.converge()
			sm := p.stopStandby()
			c.between(p, &sm)
			p.startStandby(sm)
			if mode := p.connect(); mode != c.want {
				t.Fatalf("mode %s, want %s", mode, c.want)
			}
			p.change(500) // streaming goes on after the resync
			p.converge()
			// And an aligned reconnect sends nothing.
			sm = p.stopStandby()
			p.startStandby(sm)
			before := p.e.Seq()
			if mode := p.connect(); mode != syncer.ModeAligned || p.e.Seq() != before {
				t.Fatalf("reconnect when aligned: %s, %d deltas", mode, p.e.Seq()-before)
			}
			p.s.Close()
		})
	}
}
