package cli

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/maps"
)

// TestPrintHealth: service list's health table, and the note when the
// daemon's status is old.
func TestPrintHealth(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	svc := netip.MustParseAddrPort("192.0.2.10:80")
	b1, b2 := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")
	svcs := []ServiceStatus{{Service: maps.Service{VIP: svc, Backends: []netip.AddrPort{b1, b2}}, Health: []health.BackendStatus{
		{Service: svc, Backend: b1, Check: "http", Up: true, Source: health.SourceOwner, OwnUp: false, Checked: now.Add(-time.Second), LastError: "status 500, want 200", Checks: 7, Failed: 7},
		{Service: svc, Backend: b2, Check: "http", Up: false, Source: health.SourceOwn, OwnUp: false, Checked: now.Add(-2 * time.Second), Checks: 9, Failed: 3},
	}}}
	for _, tc := range []struct {
		name    string
		updated time.Time
		want    []string
		notWant []string
	}{
		{"fresh", now.Add(-time.Second), []string{"HEALTH", "10.0.0.1:80  up      owner  down", "1s ago", "status 500, want 200", "10.0.0.2:80  DOWN    own "}, []string{"note:"}},
		{"stale", now.Add(-time.Minute), []string{"note: the daemon's health status is 1m0s old"}, nil},
	} {
		var b strings.Builder
		printHealth(&b, svcs, tc.updated, now)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", tc.name, w, b.String())
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(b.String(), w) {
				t.Errorf("%s: output has %q:\n%s", tc.name, w, b.String())
			}
		}
	}
	var b strings.Builder
	printHealth(&b, []ServiceStatus{{Service: maps.Service{VIP: svc}}}, now, now)
	if b.Len() != 0 {
		t.Errorf("no checked backend: printed %q", b.String())
	}
}
