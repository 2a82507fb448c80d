package daemon

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-net/tandem/syncer"
)

// TestReadiness: a standby is ready only once a session is up and a
// complete generation is applied; a primary and a daemon without sync as
// soon as they run (the datapath is attached before the daemon runs).
func TestReadiness(t *testing.T) {
	for _, tc := range []struct {
		name   string
		st     *syncer.NodeStatus
		ready  bool
		status string
	}{
		{"no sync", nil, true, "no state sync"},
		{"primary, session down", &syncer.NodeStatus{Role: syncer.RolePrimary, Session: "down", Peer: "192.0.2.2:7400"}, true, "primary"},
		{"standby, no primary", &syncer.NodeStatus{Role: syncer.RoleStandby, Session: "down", Listen: "0.0.0.0:7400"}, false, "waiting for the primary to connect on 0.0.0.0:7400"},
		{"standby, resync running", &syncer.NodeStatus{Role: syncer.RoleStandby, Session: "up", SessionPeer: "192.0.2.1:5555"}, false, "resync from 192.0.2.1:5555 in progress"},
		{"standby, caught up", &syncer.NodeStatus{Role: syncer.RoleStandby, Session: "up", SessionPeer: "192.0.2.1:5555", PeerGeneration: 7, LastApplied: 42}, true, "caught up"},
		{"standby, restarted, primary gone", &syncer.NodeStatus{Role: syncer.RoleStandby, Session: "down", PeerGeneration: 7}, false, "waiting for the primary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready, status := readiness(tc.st)
			if ready != tc.ready || !strings.Contains(status, tc.status) {
				t.Errorf("readiness = %v %q, want %v and %q", ready, status, tc.ready, tc.status)
			}
		})
	}
}

// TestNotify: the datagram reaches $NOTIFY_SOCKET, a path or an abstract
// name ('@'); without the variable nothing is sent and nothing fails.
func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		name := filepath.Join(t.TempDir(), "notify")
		env := name
		if abstract {
			name = "@tandem-notify-test-" + strings.ReplaceAll(t.Name(), "/", "-") + time.Now().Format("150405.000000")
			env = name
		}
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", env)
		if err := Notify("READY=1\nSTATUS=x\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("abstract %v: %v", abstract, err)
		}
		if got := string(buf[:n]); got != "READY=1\nSTATUS=x\n" {
			t.Errorf("abstract %v: got %q", abstract, got)
		}
		c.Close()
	}
	os.Unsetenv("NOTIFY_SOCKET")
	if err := Notify("READY=1\n"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
}
