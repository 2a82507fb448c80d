package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/migrate"
)

// MigrateSocket is where the daemon answers `tandem endpoint` and
// `tandem migrate` (migrate's control protocol).
func MigrateSocket(stateDir string) string { return filepath.Join(stateDir, "migrate.sock") }

// migrated runs the migration controller when the migrate feature is
// loaded: it owns the hold ring (re-injecting held packets at a switch)
// and answers the control socket.
type migrated struct {
	ctl  *migrate.Local
	ln   net.Listener
	sock string
	gid  int
}

// newMigrated starts the controller; nil (and no error) when the
// datapath has no migrate feature.
func newMigrated(c Config, log *slog.Logger) (*migrated, error) {
	m, err := maps.OpenMigrate(c.Datapath.Pins)
	if errors.Is(err, maps.ErrMigrateNotLoaded) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	// The owner of the state: a host without sync, or the primary. A
	// standby's controller only reads until the election makes it the
	// owner (setActive).
	active := c.Sync.Role == "" || c.Sync.Role == SyncPrimary
	ctl, err := migrate.NewLocalRole(m, log, active)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	gid, err := ControlGID(c.ControlGroup)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	d := &migrated{ctl: ctl, sock: MigrateSocket(c.StateDir), gid: gid}
	if d.ln, err = listenControl(d.sock, gid); err != nil {
		ctl.Close()
		return nil, fmt.Errorf("migrate: control socket: %w", err)
	}
	allow := (&vipd{gid: gid}).allowed
	go func() {
		for {
			conn, err := d.ln.Accept()
			if err != nil {
				return
			}
			go migrate.ServeConn(conn, ctl, allow)
		}
	}()
	return d, nil
}

// Controller is the daemon's migration controller; nil without the
// migrate feature. The remote control serves it too.
func (d *Daemon) Controller() migrate.Controller {
	if d.md == nil {
		return nil
	}
	return d.md.ctl
}

// setActive follows the sync role the election gave this host.
func (d *migrated) setActive(primary bool, log *slog.Logger) {
	if d == nil {
		return
	}
	if err := d.ctl.SetActive(primary); err != nil {
		log.Error("migrate: take over the migrations", "err", err)
	}
}

func (d *migrated) close() {
	if d == nil {
		return
	}
	d.ln.Close()
	os.Remove(d.sock)
	d.ctl.Close()
}
