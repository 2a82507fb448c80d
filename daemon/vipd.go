package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

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
	sd     *syncd       // its metrics export the election (syncd.election)
	role   chan bool    // the sync role the election wants (true: primary)
	broken atomic.Value // string: the daemon's last datapath problem

	sock      string // the control socket's path
	gid       int    // the control group, or -1: root only
	listen    string // where the adverts arrive
	reloadErr func() string
	gateMu    sync.Mutex
	gate      *ebpf.Map // the pinned VIP gate; reopen swaps it
	vips      []netip.Addr
	owned     bool // what the election last wrote into the gate
}

// AdvertRealtime is the SCHED_FIFO priority of the election's advert
// sender thread: above every ordinary task, below the kernel's own
// threaded interrupts (50).
const AdvertRealtime = 10

// ControlSocket is where the daemon answers `tandem vip`.
func ControlSocket(stateDir string) string { return filepath.Join(stateDir, "vip.sock") }

// ElectionStatus is the control socket's answer to "status": the
// election's status, and the daemon's last reload that failed (the
// running config carries on; empty once a reload succeeds).
type ElectionStatus struct {
	vip.Status
	ReloadError string `json:"reload_error,omitempty"`
}

// prepareVipd is newVipd up to what opens anything: the vipd and the
// election's config, checked by what can fail without the kernel.
func prepareVipd(c Config, sd *syncd, log *slog.Logger) (*vipd, vip.Config, error) {
	e := c.Elect
	secret, err := loader.ReadSecret(e.SecretFile(&c))
	if err != nil {
		return nil, vip.Config{}, fmt.Errorf("election: %w", err)
	}
	name := c.Sync.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	peerName, err := e.PeerNameFor(&c, name)
	if err != nil {
		return nil, vip.Config{}, fmt.Errorf("election: %w", err)
	}
	gid, err := ControlGID(c.ControlGroup)
	if err != nil {
		return nil, vip.Config{}, err
	}
	o := c.Options()
	d := &vipd{role: make(chan bool, 1), done: make(chan struct{}), gid: gid, vips: c.GateVIPs(), listen: e.Listen}
	d.broken.Store("")
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
	syncOn := c.Sync.Role != ""
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
	flush := func(ctx context.Context) error { return syncFlush(ctx, sd.current()) }
	vcfg := vip.Config{
		Name: name, PeerName: peerName, Priority: e.Priority, Preempt: e.Preempt, Interval: e.Interval, Dead: e.Dead,
		Secret: secret, Listen: e.Listen, Peers: e.Peers, Addrs: e.Addrs,
		Gate: d.setGate, Health: health, Sync: syncState, Flush: flush,
		// Before the VIPs are served: the IPsec SAs resume where the
		// old owner stopped (daemon/esp.go).
		Claim: func() {
			if sd != nil {
				sd.esp.Load().claim()
			}
		},
		Role: func(primary bool) {
			select {
			case <-d.role:
			default:
			}
			d.role <- primary
		},
		Log: log,
		// The adverts leave on time on a busy CPU (docs/failover.md,
		// "Short intervals"); without the privilege the daemon warns.
		Realtime: AdvertRealtime,
	}
	return d, vcfg, nil
}

// checkElection checks what can be checked of c's election without
// stopping the running one (nil: none): its config, and its advert
// listener when that moves (the running one holds its own).
func checkElection(c Config, running *vipd) error {
	_, vcfg, err := prepareVipd(c, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if err := vip.Check(vcfg); err != nil {
		return err
	}
	if running == nil || running.listen != c.Elect.Listen {
		pc, err := net.ListenPacket("udp", c.Elect.Listen)
		if err != nil {
			return fmt.Errorf("vip: listen for adverts on %s: %w", c.Elect.Listen, err)
		}
		pc.Close()
	}
	return nil
}

func newVipd(c Config, sd *syncd, log *slog.Logger, reloadErr func() string) (*vipd, error) {
	if len(c.Elect.Addrs) == 0 {
		return nil, nil
	}
	d, vcfg, err := prepareVipd(c, sd, log)
	if err != nil {
		return nil, err
	}
	d.reloadErr = reloadErr
	if d.gate, err = ebpf.LoadPinnedMap(c.Datapath.Pins.Map(maps.MapVIPGate), nil); err != nil {
		return nil, fmt.Errorf("election: open the VIP gate: %w (is the datapath up?)", err)
	}
	// Until the election says otherwise, the gate follows the addresses:
	// a host that holds them (a restarted owner) keeps serving.
	held := true
	for _, a := range c.Elect.Addrs {
		held = held && vip.HasAddr(a)
	}
	if err := d.setGate(held); err != nil {
		d.closeGate()
		return nil, fmt.Errorf("election: %w", err)
	}
	m, err := vip.New(vcfg)
	if err != nil {
		d.closeGate()
		return nil, err
	}
	d.m = m
	d.sock = ControlSocket(c.StateDir)
	if d.ln, err = listenControl(d.sock, d.gid); err != nil {
		d.closeGate()
		return nil, fmt.Errorf("election: control socket: %w", err)
	}
	d.sd = sd
	sd.election.Store(m)
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	go d.serve(ctx)
	go func() {
		defer close(d.done)
		defer d.closeGate()
		if err := m.Run(ctx); err != nil {
			log.Error("election", "err", err)
		}
	}()
	return d, nil
}

// setGate writes what the election decided into the gate.
func (d *vipd) setGate(owned bool) error {
	d.gateMu.Lock()
	defer d.gateMu.Unlock()
	d.owned = owned
	return d.writeGate(owned)
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
			// The request first (one short line, soon), then the answer:
			// closing on an unread request would reset the connection
			// before the caller reads why it was refused.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Time{})
			if err := d.allowed(c); err != nil {
				fmt.Fprintln(c, "error: "+err.Error())
				return
			}
			switch strings.TrimSpace(line) {
			case "status":
				st := ElectionStatus{Status: d.m.Status()}
				if d.reloadErr != nil {
					st.ReloadError = d.reloadErr()
				}
				json.NewEncoder(c).Encode(st)
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
	os.Remove(d.sock)
	d.stop()
	<-d.done
	d.sd.election.CompareAndSwap(d.m, nil)
}

// writeGate sets the gate of every VIP the election moves; gateMu held.
func (d *vipd) writeGate(owned bool) error {
	if d.gate == nil {
		return nil // closed: the election stopped
	}
	var errs []error
	for _, a := range d.vips {
		k := maps.KeyOf(a)
		var v maps.VIPEntry
		if err := d.gate.Lookup(k, &v); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		v.Owned = 0
		if owned {
			v.Owned = 1
		}
		if err := d.gate.Put(k, v); err != nil {
			errs = append(errs, fmt.Errorf("gate %s: %w", a, err))
		}
	}
	return errors.Join(errs...)
}

func (d *vipd) closeGate() {
	d.gateMu.Lock()
	defer d.gateMu.Unlock()
	if d.gate != nil {
		d.gate.Close()
		d.gate = nil
	}
}

// reopen moves the election to the VIP gate pinned now (the one it held
// was replaced) and writes this host's ownership into it.
func (d *vipd) reopen(o loader.Options) error {
	if d == nil {
		return nil
	}
	gate, err := ebpf.LoadPinnedMap(o.Pins.Map(maps.MapVIPGate), nil)
	if err != nil {
		return fmt.Errorf("open the VIP gate: %w", err)
	}
	d.gateMu.Lock()
	defer d.gateMu.Unlock()
	if d.gate != nil {
		d.gate.Close()
	}
	d.gate = gate
	return d.writeGate(d.owned)
}

// repairGate puts back the election's gate entries that an up removed (up
// sets the gate to its --vip list): what the election last decided, never
// another state.
func (d *vipd) repairGate() error {
	if d == nil {
		return nil
	}
	d.gateMu.Lock()
	defer d.gateMu.Unlock()
	if d.gate == nil {
		return nil
	}
	for _, a := range d.vips {
		var v maps.VIPEntry
		if err := d.gate.Lookup(maps.KeyOf(a), &v); errors.Is(err, ebpf.ErrKeyNotExist) {
			return d.writeGate(d.owned)
		}
	}
	return nil
}

// listenControl makes the control socket with its mode set before anyone
// can connect: bound in a private directory, given mode 0600 (0660 and
// the control group), then renamed into place. The umask plays no part.
func listenControl(path string, gid int) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".control-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, filepath.Base(path))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // it is renamed; close() removes it
	mode := os.FileMode(0o600)
	if gid >= 0 {
		mode = 0o660
		err = os.Chown(tmp, 0, gid)
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		// A dead daemon's socket: the state lock says no live one owns it.
		os.Remove(path)
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// allowed admits root and members of the control group, by the
// credentials the kernel recorded when the peer connected (SO_PEERCRED,
// SO_PEERGROUPS): the socket's mode is the first gate, this the second.
func (d *vipd) allowed(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("permission denied: not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var groups []uint32
	var cerr error
	raw.Control(func(fd uintptr) {
		if cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); cerr == nil {
			groups = peerGroups(int(fd))
		}
	})
	if cerr != nil {
		return fmt.Errorf("permission denied: peer credentials: %v", cerr)
	}
	if cred.Uid == 0 {
		return nil
	}
	if d.gid >= 0 && (cred.Gid == uint32(d.gid) || slices.Contains(groups, uint32(d.gid))) {
		return nil
	}
	if d.gid < 0 {
		return fmt.Errorf("permission denied: uid %d is not root (the daemon has no control_group)", cred.Uid)
	}
	return fmt.Errorf("permission denied: uid %d is neither root nor in the control group (gid %d)", cred.Uid, d.gid)
}

// peerGroups is the peer's supplementary groups (SO_PEERGROUPS).
func peerGroups(fd int) []uint32 {
	buf := make([]uint32, 256)
	n := uint32(len(buf) * 4)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return nil
	}
	return buf[:n/4]
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

// syncFlush waits until the peer acknowledged everything the primary n
// had to send when it was called (syncer.Node.Flush); nothing to do
// without a primary.
func syncFlush(ctx context.Context, n *syncer.Node) error {
	if n == nil {
		return nil
	}
	return n.Flush(ctx)
}
