package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
)

// vipd is the daemon's VIP election: the vip.Manager wired to the gate
// map, the interfaces' health, the state sync and a control socket for
// `tandem vip`.
type vipd struct {
	m      *vip.Manager
	stop   context.CancelFunc
	done   chan struct{}
	ln     net.Listener
	role   chan bool    // the sync role the election wants (true: primary)
	broken atomic.Value // string: the daemon's last datapath problem
}

// ControlSocket is where the daemon answers `tandem vip`.
func ControlSocket(stateDir string) string { return filepath.Join(stateDir, "vip.sock") }

func newVipd(o loader.Options, sd *syncd, log *slog.Logger) (*vipd, error) {
	e := o.Elect
	if len(e.Addrs) == 0 {
		return nil, nil
	}
	secret, err := loader.ReadSecret(e.SecretFile(&o))
	if err != nil {
		return nil, fmt.Errorf("election: %w", err)
	}
	gate, err := ebpf.LoadPinnedMap(o.Pins.Map(maps.MapVIPGate), nil)
	if err != nil {
		return nil, fmt.Errorf("election: open the VIP gate: %w (is the datapath up?)", err)
	}
	name := o.Sync.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	peerName, err := e.PeerNameFor(&o, name)
	if err != nil {
		gate.Close()
		return nil, fmt.Errorf("election: %w", err)
	}
	d := &vipd{role: make(chan bool, 1), done: make(chan struct{})}
	d.broken.Store("")
	vips := o.GateVIPs()
	setGate := func(owned bool) error {
		var errs []error
		for _, a := range vips {
			k := maps.KeyOf(a)
			var v maps.VIPEntry
			if err := gate.Lookup(k, &v); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
				continue
			}
			v.Owned = 0
			if owned {
				v.Owned = 1
			}
			if err := gate.Put(k, v); err != nil {
				errs = append(errs, fmt.Errorf("gate %s: %w", a, err))
			}
		}
		return errors.Join(errs...)
	}
	// Until the election says otherwise, the gate follows the addresses:
	// a host that holds them (a restarted owner) keeps serving.
	held := true
	for _, a := range e.Addrs {
		held = held && vip.HasAddr(a)
	}
	if err := setGate(held); err != nil {
		gate.Close()
		return nil, fmt.Errorf("election: %w", err)
	}
	ifaces := map[string]bool{}
	for _, a := range e.Addrs {
		ifaces[a.Iface] = true
	}
	for _, i := range append(append([]string(nil), o.Interfaces...), o.Proxy.Ifaces...) {
		ifaces[i] = true
	}
	health := func() error {
		for i := range ifaces {
			if err := vip.IfaceUp(i); err != nil {
				return err
			}
		}
		if p := d.broken.Load().(string); p != "" {
			return errors.New("datapath: " + p)
		}
		return nil
	}
	syncOn := o.Sync.Role != ""
	syncState := func(peer vip.Advert) (bool, uint64, uint64) {
		n := sd.current()
		if !syncOn {
			return true, 0, 0 // nothing to catch up on
		}
		if n == nil {
			return false, 0, 0
		}
		st := n.Status()
		if st.Role == syncer.RolePrimary {
			return true, st.Generation, st.Acked
		}
		return st.Session == "up" && peer.Generation != 0 && st.PeerGeneration == peer.Generation, st.Generation, st.LastApplied
	}
	flush := func(ctx context.Context) error {
		n := sd.current()
		if n == nil || n.Status().Role != syncer.RolePrimary {
			return nil
		}
		// Everything the rings held when the flush began is sent within
		// two ticks; then wait for its acknowledgement.
		time.Sleep(2 * o.Sync.Interval)
		want := n.Status().LastSent
		for {
			st := n.Status()
			if st.Session == "up" && st.Acked >= want {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (acked %d of %d; session %s)", ctx.Err(), st.Acked, want, st.Session)
			case <-time.After(o.Sync.Interval / 2):
			}
		}
	}
	m, err := vip.New(vip.Config{
		Name: name, PeerName: peerName, Priority: e.Priority, Preempt: e.Preempt, Interval: e.Interval, Dead: e.Dead,
		Secret: secret, Listen: e.Listen, Peers: e.Peers, Addrs: e.Addrs,
		Gate: setGate, Health: health, Sync: syncState, Flush: flush,
		Role: func(primary bool) {
			select {
			case <-d.role:
			default:
			}
			d.role <- primary
		},
		Log: log,
	})
	if err != nil {
		gate.Close()
		return nil, err
	}
	d.m = m
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		gate.Close()
		return nil, fmt.Errorf("election: state directory: %w", err)
	}
	sock := ControlSocket(o.StateDir)
	os.Remove(sock) // a dead daemon's
	if d.ln, err = net.Listen("unix", sock); err != nil {
		gate.Close()
		return nil, fmt.Errorf("election: control socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	go d.serve(ctx)
	go func() {
		defer close(d.done)
		defer gate.Close()
		if err := m.Run(ctx); err != nil {
			log.Error("election", "err", err)
		}
	}()
	return d, nil
}

// serve answers the control socket: one request line, "status" or
// "handover"; progress lines, then "ok" or "error: ...".
func (d *vipd) serve(ctx context.Context) {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			switch strings.TrimSpace(line) {
			case "status":
				writeJSON(c, d.m.Status())
			case "handover":
				err := d.m.Handover(ctx, func(s string) { fmt.Fprintln(c, s) })
				if err != nil {
					fmt.Fprintln(c, "error: "+err.Error())
					return
				}
				fmt.Fprintln(c, "ok")
			default:
				fmt.Fprintln(c, "error: unknown request (status, handover)")
			}
		}()
	}
}

func (d *vipd) close() {
	if d == nil {
		return
	}
	d.ln.Close()
	d.stop()
	<-d.done
}

// roles is the channel of sync roles the election asks for; nil without
// an election.
func (d *vipd) roles() <-chan bool {
	if d == nil {
		return nil
	}
	return d.role
}

func (d *vipd) setBroken(problem string) {
	if d != nil {
		d.broken.Store(problem)
	}
}
