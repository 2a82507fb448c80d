package syncer

import (
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestStatusFileWrittenOnChange: the loops' status file is rewritten when
// what it says changes (not for the tick count or the time alone), when
// its heartbeat is due (readers take a file older than 5 s for a dead
// daemon's), and always when written on purpose (writeStatus).
func TestStatusFileWrittenOnChange(t *testing.T) {
	dir := t.TempDir()
	n := &Node{cfg: NodeConfig{StateDir: dir}, log: slog.New(slog.DiscardHandler)}
	n.status = NodeStatus{Role: RoleStandby, Session: "down"}
	// Every write is a new file renamed over the old one: a new inode.
	inode := func() uint64 {
		fi, err := os.Stat(StatusFile(dir))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	for i, c := range []struct {
		what    string
		change  func()
		write   func()
		written bool
	}{
		{"first", func() {}, n.refreshStatus, true},
		{"ticks only", func() { n.status.Ticks += 10 }, n.refreshStatus, false},
		{"nothing", func() {}, n.refreshStatus, false},
		{"session up", func() { n.status.Session = "up" }, n.refreshStatus, true},
		{"applied moved", func() { n.status.LastApplied++ }, n.refreshStatus, true},
		{"heartbeat due", func() { n.statusAt = time.Now().Add(-statusHeartbeat) }, n.refreshStatus, true},
		{"ticks only again", func() { n.status.Ticks++ }, n.refreshStatus, false},
		{"on purpose", func() {}, n.writeStatus, true},
	} {
		var before uint64
		if i > 0 {
			before = inode()
		}
		c.change()
		c.write()
		if got := inode() != before; got != c.written {
			t.Errorf("%s: written %v, want %v", c.what, got, c.written)
		}
	}
	st, err := ReadNodeStatus(dir)
	if err != nil || st.Session != "up" || st.LastApplied != 1 || st.Ticks != 11 {
		t.Errorf("the file says %+v (%v); want session up, last_applied 1, ticks 11", st, err)
	}
}
