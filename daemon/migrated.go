package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/loader"
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
	// The forward caches' next-hop generation (mig_nh_gen), moved on
	// every routing change (loader.WatchNextHops) or, when the watcher
	// is lost, every upkeep tick; nil with programs from before it.
	nhGen  *ebpf.Map
	nhStop context.CancelFunc
	nhLost atomic.Bool
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
	d.watchNextHops(c.Datapath.Pins, log)
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

// watchNextHops moves mig_nh_gen on every routing change: the stage's
// forward caches keep a FIB answer until then (bpf/migrate.c, mig_fast).
func (d *migrated) watchNextHops(pins maps.Pins, log *slog.Logger) {
	m, err := ebpf.LoadPinnedMap(pins.Map(bpf.MigrateMapMigNhGen), nil)
	if errors.Is(err, os.ErrNotExist) {
		return // programs from before the generation: they read the clock
	}
	if err != nil {
		log.Warn("migrate next hops: open the generation; forward caches follow no routing change", "err", err)
		return
	}
	d.nhGen = m
	w, err := loader.WatchNextHops(m)
	if err != nil {
		log.Warn("migrate next hops: no routing-change subscription; the generation moves every second instead", "err", err)
		d.nhLost.Store(true)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.nhStop = cancel
	go func() {
		if err := w.Run(ctx); err != nil {
			log.Warn("migrate next hops: routing-change subscription ended; the generation moves every second instead", "err", err)
		}
		d.nhLost.Store(true)
	}()
}

// tick (the daemon's upkeep, every second) moves the next-hop generation
// when the watcher is lost: a routing change is then followed within it.
func (d *migrated) tick(log *slog.Logger) {
	if d == nil || d.nhGen == nil || !d.nhLost.Load() {
		return
	}
	if err := loader.BumpNextHopGen(d.nhGen); err != nil {
		log.Warn("migrate next hops", "err", err)
	}
}

func (d *migrated) close() {
	if d == nil {
		return
	}
	if d.nhStop != nil {
		d.nhStop()
	}
	if d.nhGen != nil {
		d.nhGen.Close()
	}
	d.ln.Close()
	os.Remove(d.sock)
	d.ctl.Close()
}
