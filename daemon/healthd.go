package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

// healthd runs the services' backend health checks (health.Runner) and
// decides which verdict each backend has on this host:
//
//   - the owner (sync primary; with --sync-role auto, the election's
//     winner; a host with no sync) uses its own checks' verdicts and
//     publishes them in sp_health through sp_health_ctl, so the state sync
//     replicates them;
//   - a standby runs the same checks (so its verdicts are warm when it
//     takes over) but uses the owner's verdicts, which the sync writes
//     into its sp_health; for a backend the owner has published nothing
//     about, its own.
//
// When a standby becomes the owner it publishes its own verdicts at once
// (those equal to the map's write nothing) and uses them from then on.
// Every change of the verdict in use goes to the observer (OnHealth): the
// backend choice is built from it.
type healthd struct {
	log      *slog.Logger
	stateDir string
	checks   map[netip.AddrPort]health.Check // by service VIP:port
	obs      health.Observer
	runner   *health.Runner
	hm       *maps.HealthMaps
	p        serviceLister

	mu      sync.Mutex
	owner   bool
	targets map[health.Key]health.Check
	own     map[health.Key]bool // this host's checks' verdicts
	inUse   map[health.Key]bool // what the observer was last told
	source  map[health.Key]string
	// unapplied: verdicts in use the table refused (retried each tick).
	unapplied map[health.Key]bool
	events    map[string]uint64 // "down", "up": verdict changes in use
	lastErr   string            // the last publish error, logged once
}

// newHealthd starts the checks of c.Health on the services pinned under
// c's root; nil when no check is configured (or no SYN proxy runs).
func newHealthd(c Config, owner bool, obs health.Observer, log *slog.Logger) (*healthd, error) {
	if len(c.Health) == 0 || len(c.Datapath.Proxy.Ifaces) == 0 {
		return nil, nil
	}
	p, err := loader.OpenProxy(c.Datapath.Pins)
	if err != nil {
		return nil, err
	}
	hm, err := maps.OpenHealth(c.Datapath.Pins)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("health checks: %w", err)
	}
	return startHealthd(c, owner, obs, log, p, hm, nil), nil
}

// serviceLister reads the services (loader.Proxy; tests fake it).
type serviceLister interface {
	ListServices() ([]maps.Service, error)
	Close()
}

// startHealthd starts the checks on open maps; newChecker nil: the real
// checkers (tests fake them).
func startHealthd(c Config, owner bool, obs health.Observer, log *slog.Logger, p serviceLister, hm *maps.HealthMaps, newChecker func(health.Check) health.Checker) *healthd {
	h := &healthd{log: log, stateDir: c.StateDir, checks: c.Health, obs: obs, hm: hm, p: p, owner: owner,
		targets: map[health.Key]health.Check{}, own: map[health.Key]bool{}, inUse: map[health.Key]bool{},
		source: map[health.Key]string{}, unapplied: map[health.Key]bool{}, events: map[string]uint64{}}
	h.runner = health.New(health.Options{Log: log, OnHealth: health.ObserverFunc(h.ownVerdict), NewChecker: newChecker})
	h.tick(time.Now())
	return h
}

// ownVerdict is the runner's report of this host's verdict (its own
// goroutine: never the daemon's loop).
func (h *healthd) ownVerdict(service, backend netip.AddrPort, up bool) {
	k := health.Key{Service: service, Backend: backend}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.targets[k]; !ok {
		return // removed meanwhile
	}
	h.own[k] = up
	if h.owner {
		h.publish(k, up)
		h.use(k, up, health.SourceOwn)
	}
}

// publish writes an owner's verdict for the sync; h.mu held.
func (h *healthd) publish(k health.Key, up bool) {
	if _, err := h.hm.Set(k.Service, k.Backend, up, time.Now()); err != nil {
		if msg := err.Error(); msg != h.lastErr {
			h.log.Warn("publish backend health", "service", k.Service, "backend", k.Backend, "err", err)
			h.lastErr = msg
		}
	}
}

// use makes up the verdict in use for k and tells the observer when it
// changed; h.mu held.
func (h *healthd) use(k health.Key, up bool, source string) {
	h.source[k] = source
	if was, ok := h.inUse[k]; ok && was == up {
		if h.unapplied[k] {
			h.apply(k, up) // the table refused it last time: again, each tick
		}
		return
	}
	_, known := h.inUse[k]
	h.inUse[k] = up
	if known || !up {
		if up {
			h.events["up"]++
		} else {
			h.events["down"]++
		}
	}
	if source == health.SourceOwner && known {
		h.log.Info("backend verdict from the owner", "service", k.Service, "backend", k.Backend, "up", up)
	}
	h.apply(k, up)
	if h.obs != nil {
		h.obs.OnHealth(k.Service, k.Backend, up)
	}
}

// apply writes the verdict in use into the service's Maglev table, which
// leaves a down backend out (and takes it back when up): new flows go by
// the verdict in use. A write that fails is retried at each tick until
// one succeeds (logged once per failure run); h.mu held.
func (h *healthd) apply(k health.Key, up bool) {
	a, ok := h.p.(tableWriter)
	if !ok {
		return
	}
	if err := a.SetBackendHealth(k.Service, k.Backend, up); err != nil {
		if !h.unapplied[k] {
			h.log.Warn("apply backend health to the table (retried each second)", "service", k.Service, "backend", k.Backend, "up", up, "err", err)
		}
		h.unapplied[k] = true
		return
	}
	if h.unapplied[k] {
		h.log.Info("applied backend health to the table", "service", k.Service, "backend", k.Backend, "up", up)
		delete(h.unapplied, k)
	}
}

// tableWriter rebuilds a service's backend table from a verdict
// (loader.Proxy).
type tableWriter interface {
	SetBackendHealth(vip, backend netip.AddrPort, healthy bool) error
}

// chooseVerdict is the verdict a host uses for k, and its source: the
// owner its own checks'; a standby the owner's (peer: what the sync wrote
// into sp_health), or its own for a backend the owner published nothing
// about. ok is false before any verdict exists.
func chooseVerdict(owner bool, own, peer map[health.Key]bool, k health.Key) (up bool, source string, ok bool) {
	if !owner {
		if up, ok := peer[k]; ok {
			return up, health.SourceOwner, true
		}
	}
	up, ok = own[k]
	return up, health.SourceOwn, ok
}

// setOwner switches between the owner's and the standby's way (see
// healthd); on the daemon's loop.
func (h *healthd) setOwner(owner bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	changed := h.owner != owner
	h.owner = owner
	h.mu.Unlock()
	if changed {
		h.log.Info("backend health: verdicts in use", "source", map[bool]string{true: "own checks", false: "the owner's"}[owner])
		h.tick(time.Now())
	}
}

// tick follows the services (tandem service add/del change them), reads
// the replicated verdicts on a standby, and writes the status file. Once
// a second, on the daemon's loop; it never waits for a check.
func (h *healthd) tick(now time.Time) {
	if h == nil {
		return
	}
	svcs, err := h.p.ListServices()
	if err != nil {
		h.log.Warn("health checks: read services", "err", err)
		return
	}
	var published []maps.Verdict
	if published, err = h.hm.List(); err != nil {
		h.log.Warn("health checks: read verdicts", "err", err)
	}
	down := map[health.Key]bool{}
	for _, v := range published {
		down[health.Key{Service: v.Service, Backend: v.Backend}] = !v.Up
	}
	targets := map[health.Key]health.Check{}
	var ts []health.Target
	for _, s := range svcs {
		c, ok := h.checks[s.VIP]
		if !ok {
			continue
		}
		for _, b := range s.Backends {
			k := health.Key{Service: s.VIP, Backend: b}
			targets[k] = c
			// A backend published down (by this host before a restart,
			// or by the owner) starts down: rise passes bring it up.
			ts = append(ts, health.Target{Service: s.VIP, Backend: b, Check: c, StartDown: down[k]})
		}
	}
	h.mu.Lock()
	h.targets = targets
	for k := range h.own {
		if _, ok := targets[k]; !ok {
			delete(h.own, k)
			delete(h.inUse, k)
			delete(h.source, k)
			delete(h.unapplied, k)
		}
	}
	peer := map[health.Key]bool{}
	for _, v := range published {
		k := health.Key{Service: v.Service, Backend: v.Backend}
		if _, ok := targets[k]; !ok && h.owner {
			// A backend no longer checked: its verdict goes (on the
			// peer too).
			if err := h.hm.Del(v.Service, v.Backend); err != nil {
				h.log.Warn("health checks: remove verdict", "service", v.Service, "backend", v.Backend, "err", err)
			}
			continue
		}
		peer[k] = v.Up
	}
	for k := range targets {
		own, checked := h.own[k]
		if h.owner && checked {
			if up, ok := peer[k]; !ok || up != own {
				h.publish(k, own)
			}
		}
		if up, src, ok := chooseVerdict(h.owner, h.own, peer, k); ok {
			h.use(k, up, src)
		}
	}
	h.mu.Unlock()
	h.runner.Set(ts)
	if err := health.WriteStatus(h.stateDir, h.status(now)); err != nil {
		h.log.Debug("health status", "err", err)
	}
}

// status is the status file's content.
func (h *healthd) status(now time.Time) *health.StatusFile {
	st := h.runner.Status()
	h.mu.Lock()
	defer h.mu.Unlock()
	out := &health.StatusFile{Updated: now, Owner: h.owner}
	for _, s := range st {
		k := health.Key{Service: s.Service, Backend: s.Backend}
		up, ok := h.inUse[k]
		if !ok {
			up = s.Up
		}
		src := h.source[k]
		if src == "" {
			src = health.SourceOwn
		}
		out.Backends = append(out.Backends, health.BackendStatus{Service: s.Service, Backend: s.Backend,
			Check: h.checks[s.Service].String(), Up: up, Source: src, OwnUp: s.Up, Checked: s.Checked,
			LastError: s.LastErr, Changed: s.Changed, Checks: s.Checks, Failed: s.Failed})
	}
	return out
}

// HealthVerdicts are the backends' verdicts in use now (up or down, by
// service and backend), for a backend choice built from scratch; later
// changes go to Config.HealthObserver. Nil when no checks run.
func (d *Daemon) HealthVerdicts() map[health.Key]bool { return d.hd.Load().verdicts() }

// verdicts are the verdicts in use, for a table built from scratch.
func (h *healthd) verdicts() map[health.Key]bool {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[health.Key]bool, len(h.inUse))
	for k, v := range h.inUse {
		out[k] = v
	}
	return out
}

func (h *healthd) close() {
	if h == nil {
		return
	}
	h.runner.Close()
	h.hm.Close()
	h.p.Close()
}

// healthCollector serves the checks' metrics from the daemon's current
// healthd at each scrape.
type healthCollector struct{ d *Daemon }

var (
	descBackendUp = prometheus.NewDesc("tandem_synproxy_backend_up", "1 when the backend's verdict in use is up (source: own checks or the owner's).", []string{"service", "backend", "source"}, nil)
	descChecks    = prometheus.NewDesc("tandem_health_checks_total", "Health checks this host ran on the backend.", []string{"service", "backend"}, nil)
	descFailed    = prometheus.NewDesc("tandem_health_check_failures_total", "Health checks of the backend that failed.", []string{"service", "backend"}, nil)
	descLast      = prometheus.NewDesc("tandem_health_last_check_seconds", "Unix time of the backend's last check.", []string{"service", "backend"}, nil)
	descEvents    = prometheus.NewDesc("tandem_synproxy_backend_events_total", "Changes of backend verdicts in use, by direction.", []string{"to"}, nil)
)

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBackendUp, descChecks, descFailed, descLast, descEvents} {
		ch <- d
	}
}

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.d.hd.Load()
	if h == nil {
		return
	}
	st := h.status(time.Now())
	for _, b := range st.Backends {
		s, bk := b.Service.String(), b.Backend.String()
		up := 0.0
		if b.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descBackendUp, prometheus.GaugeValue, up, s, bk, b.Source)
		ch <- prometheus.MustNewConstMetric(descChecks, prometheus.CounterValue, float64(b.Checks), s, bk)
		ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(b.Failed), s, bk)
		if !b.Checked.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLast, prometheus.GaugeValue, float64(b.Checked.UnixNano())/1e9, s, bk)
		}
	}
	h.mu.Lock()
	ev := map[string]uint64{"down": h.events["down"], "up": h.events["up"]}
	h.mu.Unlock()
	for _, to := range slices.Sorted(func(yield func(string) bool) {
		for k := range ev {
			if !yield(k) {
				return
			}
		}
	}) {
		ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(ev[to]), to)
	}
}

// healthOwner says whether c's host uses its own verdicts: no sync, the
// primary, or (auto) the election's owner.
func healthOwner(c Config, primary bool) bool {
	switch c.Sync.Role {
	case SyncStandby:
		return false
	case SyncAuto:
		return primary
	}
	return true
}

// healthRegistry serves healthCollector for d.
func healthRegistry(d *Daemon) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(healthCollector{d})
	return reg
}

// reloadHealth restarts the checks when a reload changed them (or the
// root, the state directory, whether the proxy runs); unchanged, they run
// on with their counts and verdicts. On the daemon's loop.
func (d *Daemon) reloadHealth(no Config) error {
	cur := d.cfg
	if reflect.DeepEqual(cur.Health, no.Health) && cur.Datapath.Pins == no.Datapath.Pins && cur.StateDir == no.StateDir &&
		(len(cur.Datapath.Proxy.Ifaces) == 0) == (len(no.Datapath.Proxy.Ifaces) == 0) && d.hd.Load() != nil {
		return nil
	}
	if no.HealthObserver == nil {
		no.HealthObserver = cur.HealthObserver
	}
	nh, err := newHealthd(no, healthOwner(no, d.sd.primary), no.HealthObserver, d.log)
	if err != nil {
		return err
	}
	d.hd.Swap(nh).close()
	return nil
}
