package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-net/tandem/migrate/remote"
)

// migremote is the daemon's migration control listener (--migrate-listen):
// drivers on the hosts named by --migrate-clients send migration steps
// over mutual TLS. Its counters live in their own registry, served with
// the sync's at --metrics-addr, and survive a restart of the listener.
type migremote struct {
	log               *slog.Logger
	reg               *prometheus.Registry
	refused, requests *prometheus.CounterVec
	cur               migrateKey
	srv               *remote.Server
	ln                net.Listener
	done              chan struct{}
}

// migrateKey is what, changed by a reload, restarts the listener.
type migrateKey struct {
	listen, certs, name, clients string
	ctl                          remote.Controller
}

func keyOf(c Config) migrateKey {
	cl := slices.Clone(c.Migrate.Clients)
	slices.Sort(cl)
	return migrateKey{c.Migrate.Listen, c.Sync.Certs, c.Sync.Name, fmt.Sprint(cl), c.Migrate.Controller}
}

func newMigremote(log *slog.Logger) *migremote {
	m := &migremote{log: log, reg: prometheus.NewRegistry()}
	var s remote.Server
	s.NewMetrics(m.reg)
	m.refused, m.requests = s.Refused, s.Requests
	return m
}

// apply makes the listener match c: started, restarted or stopped.
func (m *migremote) apply(c Config) error {
	k := keyOf(c)
	if m.srv != nil && k == m.cur {
		return nil
	}
	var ln net.Listener
	var srv *remote.Server
	if c.Migrate.Listen != "" {
		cfg, err := MigrateTLS(c)
		if err != nil {
			return err
		}
		srv = &remote.Server{TLS: cfg, Controller: c.Migrate.Controller, Log: m.log.With("part", "migrate"), Refused: m.refused, Requests: m.requests}
		if m.srv != nil && m.cur.listen == k.listen {
			// The same address: the old listener must let go of it first.
			m.close()
		}
		if ln, err = net.Listen("tcp", c.Migrate.Listen); err != nil {
			return fmt.Errorf("migrate: listen %s: %w (is another daemon on it? --migrate-listen)", c.Migrate.Listen, err)
		}
	}
	m.close()
	m.cur = k
	if srv == nil {
		return nil
	}
	m.srv, m.ln, m.done = srv, ln, make(chan struct{})
	done := m.done
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil {
			m.log.Error("migration control listener", "err", err)
		}
	}()
	if c.Migrate.Controller == nil {
		m.log.Warn("migration control listening, but this daemon runs no migration datapath: every step is refused", "addr", ln.Addr().String())
	} else {
		m.log.Info("migration control listening", "addr", ln.Addr().String(), "clients", c.Migrate.Clients)
	}
	return nil
}

// addr is the listener's bound address, "" when none.
func (m *migremote) addr() string {
	if m == nil || m.ln == nil {
		return ""
	}
	return m.ln.Addr().String()
}

func (m *migremote) close() {
	if m.srv == nil {
		return
	}
	m.ln.Close()
	m.srv.Stop()
	<-m.done
	m.srv, m.ln, m.done = nil, nil, nil
}
