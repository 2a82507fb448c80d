package loader_test

import (
	"fmt"
	"testing"

	"github.com/tandem-net/tandem/tools/bench"
)

// TestMigrateIPv6: TestMigrateStrictLoss for an IPv6 endpoint: the stream
// to E's IPv6 address (fd96::50) while E moves from S (fd96:2::2) to D
// (fd96:3::3) with a 300 ms blackout loses nothing, duplicates nothing
// and keeps its order with the hold; without it, it loses about the
// blackout's share (which proves the blackout was real).
func TestMigrateIPv6(t *testing.T) {
	skipTimingInVM(t)
	m := newMigLab(t)
	// The client's neighbour entry for the gateway, before the stream.
	if out, err := m.client.Cmd("ping", "-6", "-c", "1", "-W", "2", "fd96:1::1").CombinedOutput(); err != nil {
		t.Fatalf("ping the gateway: %v: %s", err, out)
	}
	m.cli(t, "endpoint", "set", migEP6.String(), migS6)
	mv := migMove{ep: migEP6, s: migS6, d: migD6, sIface: "eths"}
	rate := 100000 / testScale(t)
	sentH, lostH, dupH, reoH := moveRunOf(t, m, true, rate, mv)
	sentB, lostB, _, _ := moveRunOf(t, m, false, rate, mv)
	t.Logf("IPv6, with the hold:    sent %d, lost %d, duplicated %d, reordered %d", sentH, lostH, dupH, reoH)
	t.Logf("IPv6, without the hold: sent %d, lost %d (%.1f%%)", sentB, lostB, 100*float64(lostB)/float64(sentB))
	if _, err := bench.Record(bench.Result{Name: fmt.Sprintf("migrate: IPv6 datagrams lost across a move with a 300 ms blackout (%d pps UDP, 1.5 s, namespaces)", rate), Unit: "datagrams",
		Value: float64(lostH), Anchor: "the same move without the hold, same run", AnchorValue: float64(lostB), Goal: "zero lost, zero duplicated, order kept"}); err != nil {
		t.Fatal(err)
	}
	if lostH != 0 || dupH != 0 || reoH != 0 {
		t.Errorf("IPv6 with the hold: %d lost, %d duplicated, %d reordered of %d; want none", lostH, dupH, reoH, sentH)
	}
	if lostB < sentB/10 {
		t.Errorf("IPv6 without the hold only %d of %d lost: the blackout did not happen", lostB, sentB)
	}
}
