package daemon

import (
	"testing"
	"time"
)

// TestBeats: one ticker serves the datapath check and the upkeep every
// second, at the shorter of the two intervals.
func TestBeats(t *testing.T) {
	for _, c := range []struct {
		check                   time.Duration
		period                  time.Duration
		checkEvery, upkeepEvery int
	}{
		{time.Second, time.Second, 1, 1}, // the default: one wakeup a second for both
		{MinCheckInterval, MinCheckInterval, 1, 10},
		{300 * time.Millisecond, 300 * time.Millisecond, 1, 3},
		{2500 * time.Millisecond, time.Second, 3, 1},
		{MaxCheckInterval, time.Second, 3600, 1},
	} {
		period, ce, ue := beats(c.check)
		if period != c.period || ce != c.checkEvery || ue != c.upkeepEvery {
			t.Errorf("check every %s: a beat every %s, the check every %d, the upkeep every %d; want %s, %d, %d",
				c.check, period, ce, ue, c.period, c.checkEvery, c.upkeepEvery)
		}
	}
}
