package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/syncer"
)

// syncd is the daemon's state sync and metrics endpoint: it starts the
// sync node the options ask for and restarts it when a reload changes
// them.
type syncd struct {
	log     *slog.Logger
	cur     syncKey
	node    *syncer.Node
	live    atomic.Pointer[syncer.Node] // node, for other goroutines
	primary bool                        // --sync-role auto: the election made this host the owner
	stop    context.CancelFunc
	done    chan error
	reg     atomic.Pointer[prometheus.Registry]
	srv     *http.Server
	addr    string
	bound   string // the metrics listener's address (addr may say port 0)
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
	Sync     loader.SyncOptions
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

// Done reports a node that stopped on its own (an error).
func (d *syncd) Done() <-chan error { return d.done }

// apply makes the running sync and metrics endpoint match o.
func (d *syncd) apply(o loader.Options) error {
	if err := d.serveMetrics(o.MetricsAddr); err != nil {
		return err
	}
	if o.Sync.Role == loader.SyncAuto {
		// The election decides: primary (to --sync-peer) while this
		// host owns the VIPs, standby (on --sync-listen) otherwise.
		o.Sync.Role = loader.SyncStandby
		if d.primary {
			o.Sync.Role = loader.SyncPrimary
		}
	}
	key := syncKey{Sync: o.Sync, Root: o.Pins.Root, StateDir: o.StateDir, Ring: o.RingBytes}
	if d.node != nil && reflect.DeepEqual(key, d.cur) {
		return nil
	}
	d.shutdown()
	if o.Sync.Role == "" {
		return nil
	}
	name, peerName, inferred, tlsCfg, err := syncTLS(o)
	if err != nil {
		return err
	}
	if inferred {
		d.log.Info("sync: the peer's certificate name is the other one in the certs directory; set --sync-peer-name to pin it", "peer_name", peerName, "certs", o.Sync.Certs)
	}
	certEnd, caEnd, err := syncer.CertExpiry(o.Sync.Certs, name)
	if err != nil {
		return fmt.Errorf("sync: read certificate dates: %w", err)
	}
	node, err := syncer.OpenNode(syncer.NodeConfig{
		Role: syncer.Role(o.Sync.Role), Listen: o.Sync.Listen, Peer: o.Sync.Peer, PeerName: peerName, TLS: tlsCfg,
		CertNotAfter: certEnd, CANotAfter: caEnd,
		Pins: o.Pins, RingBytes: o.RingBytes, StateDir: o.StateDir, Interval: o.Sync.Interval,
		Journal: o.Sync.Journal, JournalMiB: o.Sync.JournalMiB, Log: d.log,
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
func (d *syncd) setPrimary(primary bool, o loader.Options) error {
	if d.primary == primary {
		return nil
	}
	d.primary = primary
	if o.Sync.Role != loader.SyncAuto {
		return nil
	}
	return d.apply(o)
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
		promhttp.HandlerFor(d.reg.Load(), promhttp.HandlerOpts{}).ServeHTTP(w, r)
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

// statusJSON is tandem status --json: the datapath and, when a daemon
// syncs, its sync status.
type statusJSON struct {
	*loader.Status
	Sync  *syncStatus  `json:"sync,omitempty"`
	Proxy *ProxyStatus `json:"proxy,omitempty"`
}

type syncStatus struct {
	*syncer.NodeStatus
	Running bool `json:"running"` // the daemon that wrote it is alive and writing
	// Unavailable says why the status file could not be read (torn by a
	// crash, garbled, unreadable); NodeStatus is nil then.
	Unavailable string `json:"unavailable,omitempty"`
}

// readSyncStatus reads the status a sync daemon writes to stateDir; nil
// when no daemon ever synced there. A file that cannot be read or parsed
// is reported in Unavailable, never as an error: it says nothing about
// the datapath, whose health alone sets tandem status's exit status.
func readSyncStatus(stateDir string) (*syncStatus, error) {
	st, err := syncer.ReadNodeStatus(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return &syncStatus{Unavailable: err.Error()}, nil
	}
	alive := st.PID > 0 && syscallKill0(st.PID) == nil
	return &syncStatus{NodeStatus: st, Running: alive && time.Since(st.Updated) < 5*time.Second}, nil
}

func printSyncStatus(w io.Writer, ss *syncStatus) {
	if ss == nil {
		return
	}
	fmt.Fprintln(w, "\nSync:")
	if ss.NodeStatus == nil {
		fmt.Fprintf(w, "warning: daemon status unavailable: %s (a running daemon rewrites it every second)\n", ss.Unavailable)
		return
	}
	st := ss.NodeStatus
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if !ss.Running {
		fmt.Fprintf(tw, "daemon\tnot running (pid %d; status from %s)\n", st.PID, st.Updated.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "role\t%s (node %s, generation %d)\n", st.Role, short(st.Node), st.Generation)
	fmt.Fprintf(tw, "maps\t%s\n", strings.Join(st.Maps, ", "))
	peer := st.Peer
	if st.Role == syncer.RoleStandby {
		peer = "listening on " + st.Listen
	}
	since := time.Since(st.Since).Round(time.Second)
	fmt.Fprintf(tw, "session\t%s for %s (%s)\n", st.Session, since, peer)
	if st.PeerName != "" {
		fmt.Fprintf(tw, "peer name\t%s (the only certificate admitted)\n", st.PeerName)
	}
	now := time.Now()
	if line := certLine(now, st.CertNotAfter, st.CANotAfter); line != "" {
		fmt.Fprintf(tw, "certificates\t%s\n", line)
	}
	if st.Role == syncer.RolePrimary {
		fmt.Fprintf(tw, "sent / acked\t%d / %d (%d unacked)\n", st.LastSent, st.Acked, st.Unacked)
		fmt.Fprintf(tw, "lag\tp50 %.1f ms, p99 %.1f ms (%d samples; interval %s)\n", st.LagP50ms, st.LagP99ms, st.LagSamples, st.Interval)
		fmt.Fprintf(tw, "journal\t%d deltas, %d bytes\n", st.JournalEntries, st.JournalBytes)
		if r := st.LastResync; r != nil {
			fmt.Fprintf(tw, "last resync\t%s at %s, %d deltas: %s\n", r.Mode, r.At.Format(time.RFC3339), r.Deltas, r.Why)
		}
		fmt.Fprintf(tw, "rings\t%d records, %d overflows, %d rescans\n", st.RingRecords, st.Overflows, st.Rescans)
	} else {
		fmt.Fprintf(tw, "applied\t%d deltas, last seq %d (generation %d)\n", st.DeltasApplied, st.LastApplied, st.PeerGeneration)
		by := ""
		for _, r := range syncer.RefuseReasons {
			if n := st.RefusedBy[r]; n > 0 {
				by += fmt.Sprintf(", %s %d", r, n)
			}
		}
		if by != "" {
			by = " (" + by[2:] + ")"
		}
		fmt.Fprintf(tw, "refused\t%d peers%s, %d sessions closed for bad frames or silence\n", st.Refused, by, st.Closed)
	}
	tw.Flush()
}

// certLine says how long this host's certificate and the pair's CA have
// left, with a warning inside syncer.ExpiryWarning.
func certLine(now, host, ca time.Time) string {
	var parts []string
	for _, c := range []struct {
		what string
		at   time.Time
	}{{"host", host}, {"CA", ca}} {
		if c.at.IsZero() {
			continue
		}
		left := c.at.Sub(now)
		s := fmt.Sprintf("%s until %s (%d days left)", c.what, c.at.Format(time.DateOnly), int(left.Hours()/24))
		switch {
		case left <= 0:
			s = fmt.Sprintf("%s EXPIRED on %s", c.what, c.at.Format(time.DateOnly))
		case left < syncer.ExpiryWarning:
			s += " WARNING: renew with tandem certs"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func short(node string) string {
	if len(node) > 12 {
		return node[:12]
	}
	return node
}

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }

// syncTLS is the sync's TLS setup from o: this host's certificate name
// (--sync-name, else the hostname), the peer's (--sync-peer-name, else
// the one other host certificate in --sync-certs: inferred), and the
// config that admits exactly that peer. Errors say how to fix them.
func syncTLS(o loader.Options) (name, peer string, inferred bool, cfg *tls.Config, err error) {
	name = o.Sync.Name
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return "", "", false, nil, fmt.Errorf("sync: no --sync-name and no hostname: %w", err)
		}
	}
	peer = o.Sync.PeerName
	if peer == "" {
		// The lab layout of tandem certs: this host's and the peer's.
		if peer, err = syncer.PeerName(o.Sync.Certs, name); err != nil {
			return "", "", false, nil, fmt.Errorf("sync: %w (create lab certificates with tandem certs --dir %s %s PEER, or name the peer with --sync-peer-name)", err, o.Sync.Certs, name)
		}
		inferred = true
	}
	if cfg, err = syncer.TLSConfig(o.Sync.Certs, name, peer); err != nil {
		return "", "", false, nil, fmt.Errorf("sync: %w (create lab certificates with tandem certs --dir %s %s)", err, o.Sync.Certs, name)
	}
	return name, peer, inferred, cfg, nil
}
