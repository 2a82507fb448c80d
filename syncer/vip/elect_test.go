package vip

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	a := Self{Name: "a", Priority: 100, Generation: 5, Healthy: true, CaughtUp: true}
	peer := func(f func(*Peer)) Peer {
		p := Peer{Alive: true, Advert: Advert{Name: "b", Priority: 100, Generation: 5, Healthy: true, CaughtUp: true}}
		if f != nil {
			f(&p)
		}
		return p
	}
	self := func(f func(*Self)) Self {
		s := a
		if f != nil {
			f(&s)
		}
		return s
	}
	for _, c := range []struct {
		name string
		self Self
		peer Peer
		own  bool
		why  string
	}{
		{"unhealthy never owns", self(func(s *Self) { s.Healthy = false; s.Owner = true }), peer(func(p *Peer) { p.Alive = false }), false, "unhealthy"},
		{"handing over lets go", self(func(s *Self) { s.Owner = true; s.Yielding = true }), peer(nil), false, "handing over"},
		{"silent peer", self(nil), peer(func(p *Peer) { p.Alive = false; p.Owner = true }), true, "peer silent"},
		{"silent peer, catching up: nothing better", self(func(s *Self) { s.CaughtUp = false }), peer(func(p *Peer) { p.Alive = false }), true, "peer silent"},
		{"unhealthy peer", self(nil), peer(func(p *Peer) { p.Owner = true; p.Healthy = false }), true, "unhealthy"},
		{"peer hands over", self(nil), peer(func(p *Peer) { p.Owner = true; p.Yield = true }), true, "hands over"},
		{"owner keeps", self(func(s *Self) { s.Owner = true; s.Priority = 1 }), peer(nil), true, "owner"},
		{"no preemption: a better standby waits", self(func(s *Self) { s.Priority = 200 }), peer(func(p *Peer) { p.Owner = true }), false, "owns"},
		{"catching up while a healthy owner exists", self(func(s *Self) { s.CaughtUp = false; s.Priority = 200 }), peer(func(p *Peer) { p.Owner = true }), false, "owns"},
		{"split brain: priority", self(func(s *Self) { s.Owner = true; s.Priority = 50; s.Generation = 9 }), peer(func(p *Peer) { p.Owner = true }), false, "priority"},
		{"split brain: priority wins", self(func(s *Self) { s.Owner = true; s.Priority = 150 }), peer(func(p *Peer) { p.Owner = true; p.Generation = 9 }), true, "priority"},
		{"split brain: generation", self(func(s *Self) { s.Owner = true; s.Generation = 7 }), peer(func(p *Peer) { p.Owner = true; p.Generation = 6 }), true, "generation"},
		{"split brain: generation loses", self(func(s *Self) { s.Owner = true; s.Generation = 6 }), peer(func(p *Peer) { p.Owner = true; p.Generation = 7 }), false, "generation"},
		{"split brain: name", self(func(s *Self) { s.Owner = true }), peer(func(p *Peer) { p.Owner = true }), false, "name"},
		{"nobody: caught up first", self(func(s *Self) { s.Priority = 1 }), peer(func(p *Peer) { p.CaughtUp = false }), true, "catching up"},
		{"nobody: self catching up", self(func(s *Self) { s.CaughtUp = false; s.Priority = 200 }), peer(nil), false, "catching up"},
		{"nobody: better priority", self(func(s *Self) { s.Priority = 101 }), peer(nil), true, "priority"},
		{"nobody: worse priority", self(func(s *Self) { s.Priority = 99 }), peer(nil), false, "priority"},
	} {
		t.Run(c.name, func(t *testing.T) {
			own, why := Decide(c.self, c.peer)
			if own != c.own || !strings.Contains(why, c.why) {
				t.Errorf("Decide = %v %q, want %v ~%q", own, why, c.own, c.why)
			}
		})
	}
}

// TestDecideSettles: from every pair of (owner, priority, generation)
// states two live, healthy hosts converge to exactly one owner within two
// rounds of each applying Decide to the other's last state.
func TestDecideSettles(t *testing.T) {
	for _, ownA := range []bool{false, true} {
		for _, ownB := range []bool{false, true} {
			for _, pri := range [][2]uint8{{100, 100}, {100, 200}} {
				for _, gen := range [][2]uint64{{1, 1}, {2, 1}, {1, 2}} {
					a := Self{Name: "a", Priority: pri[0], Generation: gen[0], Owner: ownA, Healthy: true, CaughtUp: true}
					b := Self{Name: "b", Priority: pri[1], Generation: gen[1], Owner: ownB, Healthy: true, CaughtUp: true}
					adv := func(s Self) Peer {
						return Peer{Alive: true, Advert: Advert{Name: s.Name, Priority: s.Priority, Generation: s.Generation, Owner: s.Owner, Healthy: true, CaughtUp: true}}
					}
					for range 2 {
						oa, _ := Decide(a, adv(b))
						ob, _ := Decide(b, adv(a))
						a.Owner, b.Owner = oa, ob
					}
					if a.Owner == b.Owner {
						t.Errorf("start owners %v/%v priorities %v generations %v: ended %v/%v", ownA, ownB, pri, gen, a.Owner, b.Owner)
					}
				}
			}
		}
	}
}

func TestAdvert(t *testing.T) {
	key := []byte("the pair's shared secret, 32 bytes")
	a := Advert{Name: "gw-a", Boot: 7, Seq: 42, SentNanos: time.Now().UnixNano(), Priority: 150, Generation: 9,
		Owner: true, Healthy: true, CaughtUp: true, Yield: true, Applied: 1234}
	b, err := a.Marshal(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != AdvertLen {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := UnmarshalAdvert(b, key)
	if err != nil || got != a {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if _, err := UnmarshalAdvert(b, []byte("another pair's secret, 32 bytes!!")); !errors.Is(err, ErrAuth) {
		t.Errorf("foreign key: %v", err)
	}
	for i := range b {
		bad := bytes.Clone(b)
		bad[i] ^= 0x40
		if _, err := UnmarshalAdvert(bad, key); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	for _, n := range []int{0, 1, AdvertLen - 1, AdvertLen + 1} {
		if _, err := UnmarshalAdvert(make([]byte, n), key); err == nil {
			t.Errorf("%d bytes accepted", n)
		}
	}
	if _, err := (Advert{Name: strings.Repeat("x", 33)}).Marshal(key); err == nil {
		t.Error("a 33-byte name was accepted")
	}
}

// TestAcceptReplay: within a boot only newer adverts count; a duplicate
// over a second path is harmless; a new boot needs a current clock.
func TestAcceptReplay(t *testing.T) {
	m := &Manager{boot: 1, now: time.Now}
	now := time.Now().UnixNano()
	if err := m.accept(Advert{Boot: 2, Seq: 10, SentNanos: now}); err != nil {
		t.Fatal(err)
	}
	if err := m.accept(Advert{Boot: 2, Seq: 10, SentNanos: now}); err != nil {
		t.Errorf("same advert over a second path: %v", err)
	}
	if err := m.accept(Advert{Boot: 2, Seq: 9, SentNanos: now, Owner: true}); err != nil || m.last.Owner {
		t.Errorf("a slightly older advert over a slower path: %v; recorded %v", err, m.last.Owner)
	}
	if err := m.accept(Advert{Boot: 2, Seq: 100, SentNanos: now}); err != nil {
		t.Fatal(err)
	}
	if err := m.accept(Advert{Boot: 2, Seq: 3, SentNanos: now}); err == nil {
		t.Error("a replay far behind the sequence was accepted")
	}
	if err := m.accept(Advert{Boot: 3, Seq: 1, SentNanos: now - int64(time.Hour)}); err == nil {
		t.Error("an hour-old advert from another boot was accepted")
	}
	if err := m.accept(Advert{Boot: 1, Seq: 99, SentNanos: now}); err == nil {
		t.Error("our own advert was accepted")
	}
	if err := m.accept(Advert{Boot: 3, Seq: 1, SentNanos: now}); err != nil {
		t.Errorf("a restarted peer: %v", err)
	}
}

// FuzzUnmarshalAdvert: any bytes, signed or not, decode to an error or
// to an advert that re-encodes to the same bytes; nothing panics.
func FuzzUnmarshalAdvert(f *testing.F) {
	key := []byte("the pair's shared secret, 32 bytes")
	good, _ := Advert{Name: "gw-a", Boot: 1, Seq: 2, Priority: 3, Owner: true}.Marshal(key)
	f.Add(good)
	f.Add([]byte{})
	f.Add(make([]byte, AdvertLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := UnmarshalAdvert(b, key)
		if err != nil {
			return
		}
		again, err := a.Marshal(key)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decoded %+v re-encodes differently", a)
		}
	})
}
