package daemon

import (
	"slices"
	"testing"
	"time"
)

// TestDaemonDiff: a second up names exactly the daemon options that differ
// from the running daemon's (as that one wrote them, through JSON).
func TestDaemonDiff(t *testing.T) {
	base := DaemonInfoOf(Defaults())
	cases := []struct {
		name   string
		change func(*DaemonInfo)
		want   []string
	}{
		{"same", func(*DaemonInfo) {}, nil},
		{"pid only", func(d *DaemonInfo) { d.PID++ }, nil},
		{"metrics", func(d *DaemonInfo) { d.MetricsAddr = "127.0.0.1:9474" }, []string{"--metrics-addr"}},
		{"sync", func(d *DaemonInfo) { d.Sync.Role, d.Sync.Interval = "standby", time.Second }, []string{"--sync-interval", "--sync-role"}},
		{"state dir and election", func(d *DaemonInfo) { d.StateDir, d.Elect.Priority = "/tmp/x", 7 }, []string{"--state-dir", "--vip-priority"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := base
			c.change(&want)
			if got := InfoDiff(base, want); !slices.Equal(got, c.want) {
				t.Errorf("diff %v, want %v", got, c.want)
			}
		})
	}
}
