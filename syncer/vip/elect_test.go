package vip

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
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
		Owner: true, Healthy: true, CaughtUp: true, Yield: true, Applied: 1234, Challenge: 5, Echo: 6}
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
// over a second path is harmless; a new boot is heard only once it echoes
// our current challenge, whatever its clock says; the boots the peer left
// are refused as replays; our own adverts, strangers' and other names'
// are refused by reason.
func TestAcceptReplay(t *testing.T) {
	m := &Manager{boot: 1, chal: 111, now: time.Now, cfg: Config{Interval: time.Second, Dead: 3, Secret: testKey, PeerName: "b"},
		peer: []*net.UDPAddr{{IP: net.IPv4(127, 0, 0, 2), Port: 7401}}}
	hour := time.Now().Add(-time.Hour).UnixNano() // clocks play no part
	step := func(what string, a Advert, want refusal) {
		t.Helper()
		if r, _, err := m.accept(a); r != want {
			t.Errorf("%s: refusal %d (%v), want %d", what, r, err, want)
		}
	}
	step("a new boot, before it echoes our challenge", Advert{Boot: 2, Seq: 10, Challenge: 22, SentNanos: hour}, unanswered)
	if m.echo != 22 || m.lastBoot != 0 {
		t.Fatalf("the new boot's challenge is not echoed (%d) or the boot was heard (%x)", m.echo, m.lastBoot)
	}
	step("a wrong echo", Advert{Boot: 2, Seq: 11, Challenge: 22, Echo: 110}, unanswered)
	step("the echo", Advert{Boot: 2, Seq: 12, Challenge: 22, Echo: 111, SentNanos: hour}, accepted)
	if m.lastBoot != 2 || m.chal == 111 {
		t.Fatalf("boot 2 not heard (%x), or the challenge was not renewed (%d)", m.lastBoot, m.chal)
	}
	step("the same advert over a second path", Advert{Boot: 2, Seq: 12, Echo: 111}, accepted)
	step("a slightly older advert over a slower path", Advert{Boot: 2, Seq: 11, Owner: true}, accepted)
	if m.last.Owner {
		t.Error("a slightly older advert was recorded")
	}
	step("newer", Advert{Boot: 2, Seq: 100}, accepted)
	step("a replay far behind the sequence", Advert{Boot: 2, Seq: 3}, replay)
	step("a new boot echoing an old challenge", Advert{Boot: 3, Seq: 1, Echo: 111}, unanswered)
	step("a restarted peer", Advert{Boot: 3, Seq: 1, Challenge: 33, Echo: m.chal}, accepted)
	step("the old boot's advert, replayed", Advert{Boot: 2, Seq: 1000, Echo: 111}, replay)
	if m.lastBoot != 3 || m.echo != 33 {
		t.Errorf("after the replay: boot %x heard, echo %d (want 3, 33)", m.lastBoot, m.echo)
	}
	from := netip.MustParseAddr("127.0.0.2")
	for _, c := range []struct {
		what string
		a    Advert
		key  []byte
		from netip.Addr
		want refusal
	}{
		{"our own advert", Advert{Name: "b", Boot: 1, Seq: 5}, testKey, from, own},
		{"another name", Advert{Name: "c", Boot: 3, Seq: 500}, testKey, from, wrongName},
		{"a stranger", Advert{Name: "b", Boot: 3, Seq: 501}, testKey, netip.MustParseAddr("127.0.0.3"), wrongSource},
		{"another key", Advert{Name: "b", Boot: 3, Seq: 502}, []byte("another pair's secret, 32 bytes!!"), from, badMAC},
		{"the peer", Advert{Name: "b", Boot: 3, Seq: 503}, testKey, from, accepted},
	} {
		b, _ := c.a.Marshal(c.key)
		if r, _, err := m.check(b, c.from); r != c.want {
			t.Errorf("%s: refusal %d (%v), want %d", c.what, r, err, c.want)
		}
	}
	if r, _, _ := m.check([]byte("garbage"), from); r != malformed {
		t.Errorf("garbage: refusal %d, want malformed", r)
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
