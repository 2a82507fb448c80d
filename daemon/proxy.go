package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/health"
	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

// proxyKeeper is the daemon's work for the SYN proxy: the cookie keys of
// the current period, the expiry of idle connection entries, and the
// next-hop generation (moved on every routing change, so established
// segments look their cached next hop up again: loader.WatchNextHops).
type proxyKeeper struct {
	log    *slog.Logger
	secret []byte
	p      *loader.Proxy
	nhGen  *ebpf.Map // nil: programs from before the next-hop cache
	stop   context.CancelFunc
	// nhLost: the watcher ended; every tick moves the generation instead,
	// so a change is still followed within a tick.
	nhLost atomic.Bool
}

func newProxyKeeper(c Config, log *slog.Logger) (*proxyKeeper, error) {
	o := c.Datapath
	if len(o.Proxy.Ifaces) == 0 {
		return nil, nil
	}
	secret, err := loader.ReadSecret(o.Proxy.SecretFile)
	if err != nil {
		return nil, err
	}
	p, err := loader.OpenProxy(o.Pins)
	if err != nil {
		return nil, err
	}
	k := &proxyKeeper{log: log, secret: secret, p: p}
	k.watchNextHops(o.Pins)
	return k, nil
}

// watchNextHops starts the routing-change watcher; without it (no
// sp_nh_gen pinned, or no subscription) every tick moves the generation.
func (k *proxyKeeper) watchNextHops(pins maps.Pins) {
	m, err := ebpf.LoadPinnedMap(pins.Map(bpf.SynproxyMapSpNhGen), nil)
	if errors.Is(err, os.ErrNotExist) {
		return // programs from before the next-hop cache: nothing to move
	}
	if err != nil {
		k.log.Warn("SYN proxy next hops: open the generation; established segments look up every next hop once per second", "err", err)
		return
	}
	k.nhGen = m
	w, err := loader.WatchNextHops(m)
	if err != nil {
		k.log.Warn("SYN proxy next hops: no routing-change subscription; the generation moves every second instead", "err", err)
		k.nhLost.Store(true)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.stop = cancel
	go func() {
		if err := w.Run(ctx); err != nil {
			k.log.Warn("SYN proxy next hops: routing-change subscription ended; the generation moves every second instead", "err", err)
		}
		k.nhLost.Store(true)
	}()
}

func (k *proxyKeeper) tick(now time.Time) {
	if k == nil {
		return
	}
	if k.nhGen != nil && k.nhLost.Load() {
		if err := loader.BumpNextHopGen(k.nhGen); err != nil {
			k.log.Warn("SYN proxy next hops", "err", err)
		}
	}
	rotated, expired, err := k.p.Maintain(k.secret, now, maps.DefaultTimeouts)
	if err != nil {
		k.log.Warn("SYN proxy upkeep", "err", err)
		return
	}
	if rotated {
		k.log.Info("cookie key rotated", "period", maps.PeriodAt(now))
	}
	if expired > 0 {
		k.log.Debug("idle connections expired", "n", expired)
	}
}

// clearVerdicts forgets the health verdicts of the backends of every
// service without a configured check (checked: the checks by service
// VIP), at start and after a reload. A verdict is pinned and outlives the
// checks that made it: a backend once marked down, its check then
// removed from the config, would stay out of the table for ever, as
// nothing would check it again. The services with checks are healthd's.
func (k *proxyKeeper) clearVerdicts(checked map[netip.AddrPort]health.Check) {
	if k == nil {
		return
	}
	svcs, err := k.p.ListServices()
	if err != nil {
		k.log.Warn("health verdicts of unchecked services", "err", err)
		return
	}
	for _, s := range svcs {
		if _, ok := checked[s.VIP]; ok {
			continue
		}
		st, err := k.p.BackendStates(s)
		if err != nil {
			k.log.Warn("health verdicts of unchecked services", "service", s.VIP, "err", err)
			continue
		}
		for _, b := range st {
			if b.Health == maps.HealthUnchecked {
				continue
			}
			if err := k.p.ClearBackendHealth(s.VIP, b.Addr); err != nil {
				k.log.Warn("clear a health verdict", "service", s.VIP, "backend", b.Addr, "err", err)
				continue
			}
			k.log.Info("backend health verdict cleared: no check configured for its service", "event", "backend_unchecked",
				"service", s.VIP, "backend", b.Addr, "was", b.Health)
		}
	}
}

func (k *proxyKeeper) close() {
	if k != nil {
		if k.stop != nil {
			k.stop()
		}
		if k.nhGen != nil {
			k.nhGen.Close()
		}
		k.p.Close()
	}
}
