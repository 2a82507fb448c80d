package daemon

// Readiness for a service manager (systemd's Type=notify, sd_notify(3)):
// the daemon says READY=1 once its datapath is attached and, on a
// standby, once it holds a complete copy of the primary's state, and
// keeps STATUS= saying what it waits for. The protocol is a datagram of
// NAME=VALUE lines to the unix socket in $NOTIFY_SOCKET (a leading '@'
// names an abstract socket: Go's net package maps it), so a few lines
// here spare a dependency.

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-net/tandem/syncer"
)

// Notify sends state (NAME=VALUE lines) to the service manager; nothing
// when tandem was not started by one ($NOTIFY_SOCKET unset).
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify %s: %w", path, err)
	}
	return nil
}

// readiness says whether a daemon whose sync node has status st (nil:
// none runs, the daemon has no state sync) is ready to serve, and what it
// is doing.
// The datapath is attached before the daemon runs, so only the sync can
// hold readiness back: a standby is ready once a session is up and it has
// applied a complete generation of the primary's state (a finished
// resync, or the one it kept from before a restart, which the journal
// then tops up).
func readiness(st *syncer.NodeStatus) (bool, string) {
	switch {
	case st == nil:
		return true, "serving: datapath attached (no state sync)"
	case st.Role == syncer.RolePrimary:
		return true, fmt.Sprintf("serving as primary: datapath attached, sync to %s (session %s)", st.Peer, st.Session)
	case st.Session != "up":
		return false, fmt.Sprintf("standby: datapath attached; waiting for the primary to connect on %s", st.Listen)
	case st.PeerGeneration == 0:
		return false, fmt.Sprintf("standby: datapath attached; resync from %s in progress", st.SessionPeer)
	}
	return true, fmt.Sprintf("standby: caught up with %s (generation %d, applied %d)", st.SessionPeer, st.PeerGeneration, st.LastApplied)
}

// Readiness is the running daemon's readiness (see readiness).
func (d *Daemon) Readiness() (bool, string) {
	n := d.sd.current() // safe from any goroutine
	if n == nil {
		return readiness(nil)
	}
	st := n.Status()
	return readiness(&st)
}

// NotifyReady tells the service manager how the daemon is doing until
// ctx ends: STATUS= on every change, READY=1 once (see readiness). It
// returns at once when no service manager listens.
func (d *Daemon) NotifyReady(ctx context.Context, every time.Duration) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	ready, last := false, ""
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ok, status := d.Readiness()
		var msg string
		if ok && !ready {
			msg = "READY=1\n"
			ready = true
			d.told.Store(true)
			d.log.Info("ready", "event", "ready", "status", status)
		}
		if status != last {
			msg += "STATUS=" + status + "\n"
			last = status
		}
		if msg != "" {
			if err := Notify(msg); err != nil {
				d.log.Warn("service manager notification", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// NotifyReload runs reload (SIGHUP: read the config again and apply it)
// between RELOADING=1 and READY=1, so the service manager shows the
// service "reloading" meanwhile and `systemctl reload` means the reload
// has happened. MONOTONIC_USEC is the time the reload began, as
// Type=notify-reload (systemd 253) requires; Type=notify takes it too.
// READY=1 follows whether the reload worked or not: a part whose new
// config failed runs on as it was, and STATUS= says so. Before the first
// READY=1 nothing is sent: the manager still waits for that one.
func (d *Daemon) NotifyReload(reload func() error) error {
	if os.Getenv("NOTIFY_SOCKET") == "" || !d.told.Load() {
		return reload()
	}
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	if err := Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=reloading the config\n", ts.Nano()/1000)); err != nil {
		d.log.Warn("service manager notification", "err", err)
	}
	err := reload()
	_, status := d.Readiness()
	if err != nil {
		status += "; the last reload failed, the previous config runs on: " + err.Error()
	}
	if nerr := Notify("READY=1\nSTATUS=" + status + "\n"); nerr != nil {
		d.log.Warn("service manager notification", "err", nerr)
	}
	return err
}
