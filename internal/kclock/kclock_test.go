package kclock

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestSleepIdle: with every ring empty it sleeps its whole budget of
// steps; a record in any ring ends it at the next step; without rings it
// is one sleep.
func TestSleepIdle(t *testing.T) {
	const step = int64(time.Millisecond)
	pos := make([]uint64, 4)
	rings := []Ring{{&pos[0], &pos[1]}, {&pos[2], &pos[3]}}
	start := Now()
	last, err := SleepIdle(start+step, step, 20, rings)
	if err != nil {
		t.Fatal(err)
	}
	if got := (last - start) / step; got != 20 {
		t.Errorf("empty rings: woke after %d steps, want 20", got)
	}
	if Now() < last {
		t.Errorf("returned before its last deadline")
	}

	// A record in the second ring (its producer moves on): the sleep ends
	// at a step, long before its budget of 100,000 steps (100 s).
	go func() {
		time.Sleep(30 * time.Millisecond)
		atomic.AddUint64(&pos[2], 16)
	}()
	start = Now()
	last, err = SleepIdle(start+step, step, 100_000, rings)
	if err != nil {
		t.Fatal(err)
	}
	if got := (last - start) / step; got >= 100_000 || (last-start)%step != 0 {
		t.Errorf("a ring with a record: woke at %d ns, after %d steps", last-start, got)
	}

	start = Now()
	if last, _ = SleepIdle(start+step, step, 50, nil); last != start+step {
		t.Errorf("no rings: woke at %d ns, want one step", last-start)
	}
}
