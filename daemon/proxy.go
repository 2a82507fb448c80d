package daemon

import (
	"log/slog"
	"time"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
)

// proxyKeeper is the daemon's work for the SYN proxy: the cookie keys of
// the current period and the expiry of idle connection entries.
type proxyKeeper struct {
	log    *slog.Logger
	secret []byte
	p      *loader.Proxy
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
	return &proxyKeeper{log: log, secret: secret, p: p}, nil
}

func (k *proxyKeeper) tick(now time.Time) {
	if k == nil {
		return
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

func (k *proxyKeeper) close() {
	if k != nil {
		k.p.Close()
	}
}
