package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
)

// syncd is the daemon's state sync and metrics endpoint: it starts the
// sync node the options ask for and restarts it when a reload changes
// them.
type syncd struct {
	log     *slog.Logger
	cur     syncKey
	node    *syncer.Node
	live    atomic.Pointer[syncer.Node] // node, for other goroutines
	primary bool                        // the election made this host the owner (what --sync-role auto follows)
	esp     atomic.Pointer[espd]        // the ESP side, whose replicated state a takeover installs
	stop    context.CancelFunc
	done    chan error
	reg     atomic.Pointer[prometheus.Registry]
	extra   prometheus.Gatherers // served with reg (the migration control's); set before apply
	srv     *http.Server
	addr    string
	bound   string // the metrics listener's address (addr may say port 0)
	// election is the running election, for its metrics (daemonMetrics).
	election atomic.Pointer[vip.Manager]
}

// metricsLimits bound what clients of --metrics-addr can hold: a
// connection that never finishes its headers, idles between scrapes or
// reads its answer forever is cut, and at most Conns are open at once
// (more wait in the listen backlog), so clients cannot use up the
// daemon's file descriptors. Tests shorten them.
var metricsLimits = struct {
	ReadHeader, Read, Write, Idle time.Duration
	MaxHeaderBytes, Conns         int
}{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 30 * time.Second, Idle: 60 * time.Second, MaxHeaderBytes: 8 << 10, Conns: 16}

// syncKey is what, changed by a reload, restarts the node.
type syncKey struct {
	Sync     SyncOptions
	Root     string
	StateDir string
	Ring     uint32
}

func newSyncd(log *slog.Logger) *syncd {
	d := &syncd{log: log}
	idle := prometheus.NewRegistry()
	idle.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.reg.Store(idle)
	return d
}

// gather serves g's metrics with the sync's; before the endpoint serves.
func (d *syncd) gather(g prometheus.Gatherer) { d.extra = append(d.extra, g) }

// Done reports a node that stopped on its own (an error).
func (d *syncd) Done() <-chan error { return d.done }

// apply makes the running sync and metrics endpoint match o.
func (d *syncd) apply(c Config) error {
	if err := d.serveMetrics(c.MetricsAddr); err != nil {
		return err
	}
	o := c.Datapath
	if c.Sync.Role == SyncAuto {
		// The election decides: primary (to --sync-peer) while this
		// host owns the VIPs, standby (on --sync-listen) otherwise.
		c.Sync.Role = SyncStandby
		if d.primary {
			c.Sync.Role = SyncPrimary
		}
	}
	key := syncKey{Sync: c.Sync, Root: o.Pins.Root, StateDir: c.StateDir, Ring: o.RingBytes}
	if d.node != nil && reflect.DeepEqual(key, d.cur) {
		return nil
	}
	d.shutdown()
	if c.Sync.Role == "" {
		return nil
	}
	name, peerName, inferred, tlsCfg, err := SyncTLS(c)
	if err != nil {
		return err
	}
	if inferred {
		d.log.Info("sync: the peer's certificate name is the other one in the certs directory; set --sync-peer-name to pin it", "peer_name", peerName, "certs", c.Sync.Certs)
	}
	certEnd, caEnd, err := syncer.CertExpiry(c.Sync.Certs, name)
	if err != nil {
		return fmt.Errorf("sync: read certificate dates: %w", err)
	}
	node, err := syncer.OpenNode(syncer.NodeConfig{
		Role: syncer.Role(c.Sync.Role), Listen: c.Sync.Listen, Peer: c.Sync.Peer, PeerName: peerName, TLS: tlsCfg,
		CertNotAfter: certEnd, CANotAfter: caEnd,
		Pins: o.Pins, RingBytes: o.RingBytes, StateDir: c.StateDir, Interval: c.Sync.Interval,
		Journal: c.Sync.Journal, JournalMiB: c.Sync.JournalMiB, Log: d.log,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.node, d.stop, d.cur, d.done = node, cancel, key, make(chan error, 1)
	d.live.Store(node)
	d.reg.Store(node.Metrics().Reg)
	done := d.done
	go func() {
		err := node.Run(ctx)
		node.Close()
		done <- err
	}()
	return nil
}

// current is the running node, or nil; safe from any goroutine.
func (d *syncd) current() *syncer.Node { return d.live.Load() }

// setPrimary switches a --sync-role auto node to the role the election
// wants.
func (d *syncd) setPrimary(primary bool, c Config) error {
	if d.primary == primary {
		return nil
	}
	d.primary = primary
	if c.Sync.Role != SyncAuto {
		return nil
	}
	return d.apply(c)
}

func (d *syncd) shutdown() {
	if d.node == nil {
		return
	}
	d.live.Store(nil)
	d.stop()
	if err := <-d.done; err != nil {
		d.log.Warn("sync stopped", "err", err)
	}
	d.node, d.done = nil, nil
}

func (d *syncd) serveMetrics(addr string) error {
	if addr == d.addr {
		return nil
	}
	if d.srv != nil {
		d.srv.Close()
		d.srv = nil
	}
	d.addr = addr
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		d.addr = ""
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g := append(prometheus.Gatherers{d.reg.Load()}, d.extra...)
		promhttp.HandlerFor(g, promhttp.HandlerOpts{}).ServeHTTP(w, r)
	}))
	l := metricsLimits
	ln = &limitListener{Listener: ln, slots: make(chan struct{}, max(l.Conns, 1))}
	d.srv = &http.Server{Handler: mux, ReadHeaderTimeout: l.ReadHeader, ReadTimeout: l.Read, WriteTimeout: l.Write,
		IdleTimeout: l.Idle, MaxHeaderBytes: l.MaxHeaderBytes, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}
	srv := d.srv
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics endpoint", "err", err)
		}
	}()
	d.bound = ln.Addr().String()
	d.log.Info("serving metrics", "addr", d.bound, "path", "/metrics")
	return nil
}

// limitListener accepts a connection only while fewer than cap(slots)
// are open; the others wait in the kernel's listen backlog.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, free: func() { <-l.slots }}, nil
}

type limitConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}

func (d *syncd) close() {
	d.shutdown()
	if d.srv != nil {
		d.srv.Close()
	}
}
