package main

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestPick: over many draws every enabled kind comes up, in proportion
// to its weight, and a skipped kind never does.
func TestPick(t *testing.T) {
	ks, err := enabled("partition, down-live")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	got := map[string]int{}
	const n = 20000
	for range n {
		got[pick(r, ks).name]++
	}
	total := 0
	for _, k := range ks {
		total += k.weight
	}
	for _, k := range ks {
		want := n * k.weight / total
		if got[k.name] < want*8/10 || got[k.name] > want*12/10 {
			t.Errorf("%s drawn %d times in %d, want about %d (weight %d of %d)", k.name, got[k.name], n, want, k.weight, total)
		}
	}
	for _, s := range []string{"partition", "down-live"} {
		if got[s] != 0 {
			t.Errorf("skipped %s drawn %d times", s, got[s])
		}
	}
}

func TestEnabledErrors(t *testing.T) {
	for _, tc := range []struct{ skip, want string }{
		{"kill,nope", "-skip nope: no such fault"},
		{strings.Join(names(kinds), ","), "leaves no fault"},
	} {
		if _, err := enabled(tc.skip); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("enabled(%q): %v, want %q", tc.skip, err, tc.want)
		}
	}
}

// TestLossPolicy: only restart and down-live may lose connections, and
// only when they hit the owner.
func TestLossPolicy(t *testing.T) {
	for _, k := range kinds {
		for _, owner := range []bool{false, true} {
			want := lossNone
			if owner && (k.name == "restart" || k.name == "down-live") {
				want = lossThrough
			}
			if got := k.lose(owner); got != want {
				t.Errorf("%s (owner %v): loss %d, want %d", k.name, owner, got, want)
			}
		}
	}
}

// TestCounterStream: the reader accepts the writer's stream however it
// is cut into reads, and refuses a byte changed, a byte missing, and
// another connection's stream.
func TestCounterStream(t *testing.T) {
	w := counter{salt: upSalt ^ 4242}
	stream := make([]byte, 3000)
	w.next(stream)
	r := counter{salt: upSalt ^ 4242}
	for _, n := range []int{1, 7, 8, 500, 1484, 1000} {
		if err := r.check(stream[:n]); err != nil {
			t.Fatalf("a good stream: %v", err)
		}
		stream = stream[n:]
	}
	for _, tc := range []struct {
		name string
		mut  func([]byte) []byte
		salt uint64
	}{
		{"a byte changed", func(b []byte) []byte { b[100] ^= 1; return b }, upSalt ^ 4242},
		{"a byte missing", func(b []byte) []byte { return append(b[:100:100], b[101:]...) }, upSalt ^ 4242},
		{"another connection's", func(b []byte) []byte { return b }, upSalt ^ 4243},
		{"the other direction's", func(b []byte) []byte { return b }, downSalt ^ 4242},
	} {
		w := counter{salt: tc.salt}
		b := make([]byte, 2000)
		w.next(b)
		r := counter{salt: upSalt ^ 4242}
		if err := r.check(tc.mut(b)); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// TestSummary: the table counts by kind, and a run with violations says
// so, lists them and how to repeat it.
func TestSummary(t *testing.T) {
	tl := newTally()
	tl.faults["kill"], tl.faults["restart"] = 3, 1
	tl.lost["restart"] = 100
	tl.check("after a heal: exactly one owner")
	s := tl.summary(77, 0)
	for _, want := range []string{"seed 77", "kill                3", "restart             1                100", "total               4", "violations: 0"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	tl.violate(3, "%s: 2 connection(s) lost", "flap")
	s = tl.summary(77, 0)
	for _, want := range []string{"violations: 1", "round 3: flap: 2 connection(s) lost", "-seed 77"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
}
