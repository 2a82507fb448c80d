// Package daemon is tandem's per-host daemon: it keeps the datapath as
// configured (re-applying it when an attachment breaks or a map is
// replaced under it), replicates the synced maps to the peer (syncer),
// runs the VIP election (syncer/vip) with its control socket, and keeps
// the SYN proxy's cookie keys and connection expiry. The CLI (tandem up)
// builds a Config, calls New, then Run; SIGHUP calls Reload.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

// Daemon is one running daemon. New starts its parts; Run keeps them
// until its context ends; Reload applies a new config while Run runs.
type Daemon struct {
	cfg  Config
	log  *slog.Logger
	held map[string]ebpf.MapID // the ids of the maps the daemon's handles are on
	sd   *syncd
	pk   *proxyKeeper
	vd   *vipd
	md   *migrated
	mr   *migremote
	hd   atomic.Pointer[healthd] // nil: no health checks; read by the metrics endpoint
	ed   *espd                   // the IPsec SAs' replay state (daemon/esp.go)

	reloads   chan reload
	done      chan struct{}          // closed when Run returns
	reloadErr atomic.Pointer[string] // the last reload's failure; nil: it worked
	told      atomic.Bool            // READY=1 went to the service manager (NotifyReady)
}

type reload struct {
	cfg   Config
	reply chan error
}

// New starts the daemon's parts on the datapath Up made for cfg (it is
// pinned already): the state sync and metrics endpoint, the SYN proxy's
// upkeep and the VIP election with its control socket. An error means
// the daemon could not start; nothing of it is left running. A Daemon
// that New returned must be Run (Run releases what New started).
func New(cfg Config) (*Daemon, error) {
	d := &Daemon{cfg: cfg, log: cfg.log(), reloads: make(chan reload), done: make(chan struct{})}
	// The ids of the pinned maps before any handle is opened: a map
	// replaced under the daemon shows as another id (see staleMaps).
	held, err := loader.PinnedMapIDs(cfg.Datapath.Pins)
	if err != nil {
		return nil, err
	}
	d.held = held
	d.sd = newSyncd(d.log)
	d.mr = newMigremote(d.log)
	d.sd.gather(d.mr.reg)
	d.sd.gather(newBackendMetrics(pinnedProxy(cfg.Datapath.Pins)).registry())
	d.sd.gather(healthRegistry(d))
	d.sd.gather(d.sd.daemonMetrics(cfg.Datapath.Pins))
	if err := d.sd.apply(cfg); err != nil {
		d.sd.close()
		return nil, err
	}
	if d.pk, err = newProxyKeeper(cfg, d.log); err != nil {
		d.sd.close()
		return nil, err
	}
	d.pk.tick(time.Now())
	hd, err := newHealthd(cfg, healthOwner(cfg, d.sd.primary), cfg.HealthObserver, d.log)
	if err != nil {
		d.pk.close()
		d.sd.close()
		return nil, err
	}
	d.hd.Store(hd)
	d.pk.clearVerdicts(cfg.Health)
	if d.ed, err = newEspd(cfg, espActive(cfg, false), d.log); err != nil {
		d.hd.Load().close()
		d.pk.close()
		d.sd.close()
		return nil, err
	}
	d.sd.esp.Store(d.ed)
	if d.vd, err = newVipd(cfg, d.sd, d.log, d.lastReloadError); err != nil {
		d.ed.close()
		d.hd.Load().close()
		d.pk.close()
		d.sd.close()
		return nil, err
	}
	if d.md, err = newMigrated(cfg, d.log); err != nil {
		d.vd.close()
		d.ed.close()
		d.hd.Load().close()
		d.pk.close()
		d.sd.close()
		return nil, err
	}
	if d.md != nil {
		d.cfg.Migrate.Controller = remoteController{d.md.ctl}
	}
	if err := d.mr.apply(d.cfg); err != nil {
		d.md.close()
		d.vd.close()
		d.ed.close()
		d.hd.Load().close()
		d.pk.close()
		d.sd.close()
		return nil, err
	}
	return d, nil
}

// Run keeps the datapath and the daemon's parts as configured until ctx
// ends; then it stops them and returns nil, leaving the datapath running.
// It returns an error when a part stops on its own and cannot go on.
func (d *Daemon) Run(ctx context.Context) error {
	defer close(d.done)
	defer func() {
		d.mr.close() // before md: it drives md's controller
		d.md.close()
		d.vd.close()
		d.ed.close()
		d.hd.Load().close()
		d.pk.close()
		d.sd.close()
	}()
	log := d.log
	log.Info("daemon running; SIGTERM stops it and leaves the datapath in place (tandem down removes it)", "bpffs", d.cfg.Datapath.Pins.Root, "sync", d.cfg.Sync.Role)
	// One ticker for the datapath check and the upkeep (the SYN proxy's
	// keys and expiry, the health checks' status, migration): an idle
	// daemon wakes once a second for both, not twice.
	period, checkEvery, upkeepEvery := beats(d.cfg.CheckInterval)
	t := time.NewTicker(period)
	defer t.Stop()
	for beat := 1; ; beat++ {
		select {
		case now := <-t.C:
			if beat%upkeepEvery == 0 {
				d.pk.tick(now)
				d.hd.Load().tick(now)
				d.md.tick(log)
			}
			if beat%checkEvery == 0 {
				if err := d.check(); err != nil {
					return err
				}
			}
		case <-ctx.Done():
			log.Info("daemon stopping; the datapath keeps running")
			return nil
		case err := <-d.sd.Done():
			return fmt.Errorf("state sync stopped: %w", err)
		case primary := <-d.vd.roles():
			if err := d.sd.setPrimary(primary, d.cfg); err != nil {
				log.Error("sync role", "primary", primary, "err", err)
			}
			d.md.setActive(primary, log)
			d.hd.Load().setOwner(healthOwner(d.cfg, primary))
			d.ed.setActive(espActive(d.cfg, primary))
		case r := <-d.reloads:
			err := d.reload(r.cfg)
			if err != nil {
				msg := err.Error()
				d.reloadErr.Store(&msg)
			} else {
				d.reloadErr.Store(nil)
			}
			r.reply <- err
		}
	}
}

// beats is Run's ticker period for a datapath check every check and the
// upkeep every second, and every how many beats each runs: the shorter
// of the two is the period, the longer runs on the nearest multiple.
func beats(check time.Duration) (period time.Duration, checkEvery, upkeepEvery int) {
	period = min(check, time.Second)
	round := func(d time.Duration) int { return max(1, int((d+period/2)/period)) }
	return period, round(check), round(time.Second)
}

// Reload applies cfg to the running daemon (SIGHUP): the datapath, then
// the sync, the SYN proxy's upkeep and the election. A part whose new
// config fails keeps running as it was; the error says which, and the
// election's status shows it (reload_error) until a reload succeeds.
func (d *Daemon) Reload(cfg Config) error {
	r := reload{cfg: cfg, reply: make(chan error, 1)}
	select {
	case d.reloads <- r:
	case <-d.done:
		return errors.New("the daemon is not running")
	}
	return <-r.reply
}

func (d *Daemon) lastReloadError() string {
	if p := d.reloadErr.Load(); p != nil {
		return *p
	}
	return ""
}

// reload runs in Run's loop.
func (d *Daemon) reload(no Config) error {
	log := d.log
	if no.Datapath.Log == nil {
		no.Datapath.Log = log
	}
	if _, err := loader.Up(no.Options()); err != nil {
		log.Error("reload: the datapath; everything keeps running as it was", "err", err)
		return fmt.Errorf("datapath: %w", err)
	}
	var errs []error
	if err := d.sd.apply(no); err != nil {
		log.Error("reload: state sync", "err", err)
		errs = append(errs, fmt.Errorf("state sync: %w", err))
	}
	if npk, err := newProxyKeeper(no, log); err != nil {
		log.Error("reload: SYN proxy; its upkeep keeps the running config", "err", err)
		errs = append(errs, fmt.Errorf("SYN proxy: %w", err))
	} else {
		d.pk.close()
		d.pk = npk
	}
	if err := d.reloadHealth(no); err != nil {
		log.Error("reload: health checks; the running checks carry on", "err", err)
		errs = append(errs, fmt.Errorf("health checks: %w", err))
	} else {
		d.pk.clearVerdicts(no.Health)
	}
	if espKey(no) != espKey(d.cfg) {
		if err := d.restartESP(no); err != nil {
			log.Error("reload: ESP SAs", "err", err)
			errs = append(errs, fmt.Errorf("ESP SAs: %w", err))
		}
	}
	no.Migrate.Controller = d.cfg.Migrate.Controller
	if no.HealthObserver == nil {
		no.HealthObserver = d.cfg.HealthObserver
	}
	if err := d.mr.apply(no); err != nil {
		log.Error("reload: migration control; the running listener carries on", "err", err)
		errs = append(errs, fmt.Errorf("migration control: %w", err))
	}
	electionErr := d.reloadElection(no)
	if err := electionErr; err != nil {
		log.Error("reload: election; the running election carries on", "err", err)
		errs = append(errs, fmt.Errorf("election: %w", err))
		// Up set the gate for the new config's addresses: put back the
		// entries of the election that runs on.
		if err := d.vd.repairGate(); err != nil {
			log.Warn("election: repair the VIP gate", "err", err)
		}
	}
	old := d.cfg
	d.cfg = no
	if electionErr != nil {
		// The election that runs on has the old config: the next reload
		// compares with that.
		d.cfg.Elect, d.cfg.ControlGroup = old.Elect, old.ControlGroup
	}
	if ids, err := loader.PinnedMapIDs(no.Datapath.Pins); err == nil {
		d.held = ids
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	log.Info("reloaded")
	return nil
}

// reloadElection moves the election to no's config when it changed. What
// can be checked without stopping the running election is checked first
// (the secret, the peer's name and addresses, the advert listener); only
// then does the running one stop. If the new one still fails to start,
// the previous config is started again: a host never silently runs on
// with no election.
func (d *Daemon) reloadElection(no Config) error {
	cur := d.cfg
	if d.vd != nil && electionKey(no) == electionKey(cur) {
		return nil
	}
	if len(no.Elect.Addrs) == 0 {
		d.vd.close()
		d.vd = nil
		return nil
	}
	if err := checkElection(no, d.vd); err != nil {
		return err
	}
	d.vd.close()
	vd, err := newVipd(no, d.sd, d.log, d.lastReloadError)
	if err == nil {
		d.vd = vd
		return nil
	}
	d.vd = nil
	if len(cur.Elect.Addrs) == 0 {
		return err
	}
	back, berr := newVipd(cur, d.sd, d.log, d.lastReloadError)
	if berr != nil {
		return fmt.Errorf("%w; starting the previous election again failed too: %v (this host runs no election: fix the config and send SIGHUP, or restart the daemon)", err, berr)
	}
	d.vd = back
	return fmt.Errorf("%w (the previous election config runs on)", err)
}

// electionKey is what, changed, restarts the election.
func electionKey(c Config) string {
	return fmt.Sprintf("%+v %v %s %s %s", c.Elect, c.GateVIPs(), c.ControlGroup, c.StateDir, c.Elect.SecretFile(&c))
}

// check is the periodic check: maps replaced under the daemon, the
// election's gate entries, broken attachments.
func (d *Daemon) check() error {
	log, o := d.log, d.cfg.Options()
	// Maps replaced under the daemon (unpinned, or pinned anew by another
	// up): every handle moves to the pinned maps, so the daemon never
	// works on a map no program uses.
	if stale, missing, err := staleMaps(o.Pins, d.held); err != nil {
		log.Warn("check maps", "err", err)
	} else if len(stale) > 0 {
		log.Warn("maps replaced under the daemon; re-opening every map handle", "maps", strings.Join(stale, ","))
		if missing {
			if _, err := loader.Up(o); err != nil {
				log.Error("re-apply", "err", err)
				d.vd.setBroken("maps unpinned: " + err.Error())
				return nil
			}
		}
		if d.held, err = loader.PinnedMapIDs(o.Pins); err != nil {
			log.Error("check maps", "err", err)
			return nil
		}
		if err := d.sd.restart(d.cfg); err != nil {
			return fmt.Errorf("state sync on the new maps: %w", err)
		}
		npk, err := newProxyKeeper(d.cfg, log)
		if err != nil {
			return fmt.Errorf("SYN proxy on the new maps: %w", err)
		}
		d.pk.close()
		d.pk = npk
		d.pk.tick(time.Now())
		if err := d.restartESP(d.cfg); err != nil {
			return fmt.Errorf("ESP SAs on the new maps: %w", err)
		}
		if err := d.vd.reopen(o); err != nil {
			return fmt.Errorf("election on the new maps: %w", err)
		}
	}
	if err := d.vd.repairGate(); err != nil {
		log.Warn("election: repair the VIP gate", "err", err)
	}
	problems, err := loader.Check(o)
	if err != nil {
		log.Warn("check", "err", err)
		return nil
	}
	if len(problems) == 0 {
		d.vd.setBroken("")
		return nil
	}
	for _, p := range problems {
		log.Warn("datapath broken; re-applying", "problem", p)
	}
	if _, err := loader.Up(o); err != nil {
		log.Error("re-apply", "err", err)
		// The election demotes a host that cannot repair its datapath.
		d.vd.setBroken(strings.Join(problems, "; "))
	}
	return nil
}

// staleMaps lists the maps the daemon opened (held: their ids then) that
// are no longer the pinned ones, and whether any pin is gone.
func staleMaps(pins maps.Pins, held map[string]ebpf.MapID) (stale []string, missing bool, err error) {
	now, err := loader.PinnedMapIDs(pins)
	if err != nil {
		return nil, false, err
	}
	for name, id := range held {
		switch cur, ok := now[name]; {
		case !ok:
			missing = true
			stale = append(stale, name)
		case cur != id:
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	return stale, missing, nil
}

// restartESP starts the ESP side anew on c (its options changed, or
// the maps were replaced), in the role this host has now.
func (d *Daemon) restartESP(c Config) error {
	d.sd.esp.Store(nil) // a takeover meanwhile installs nothing from a closed side
	d.ed.close()
	ed, err := newEspd(c, espActive(c, d.sd.primary), d.log)
	d.ed = ed
	d.sd.esp.Store(ed)
	return err
}

// restart stops the sync node and starts it on the maps pinned now.
func (d *syncd) restart(c Config) error {
	d.shutdown()
	return d.apply(c)
}
