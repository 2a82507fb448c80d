// Package gwpair runs tandem on the failover lab (lab.GatewayPair): both
// gateways' daemons with the SYN proxy, the election and the state sync,
// and reads what they say (tandem vip) and hold (the connection table).
// The failover tests, their benchmark and the soak (tools/soak) share it.
package gwpair

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/loader"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
	"github.com/tandem-net/tandem/tools/lab"
)

// The lab's service addresses (see lab.GatewayPair).
const (
	VIP         = "10.79.1.100" // the service VIP, on the client segment
	VIP6        = "fd79:1::100"
	Inner       = "10.79.2.1" // the backends' gateway, on the backend segment
	Inner6      = "fd79:2::1"
	Port        = 80
	BackendPort = 8080
)

// Pair is a built GatewayPair lab with what its daemons need: the pair's
// secret, sync certificates and a state directory per gateway.
type Pair struct {
	*lab.Lab
	Client   *lab.Host
	GW       map[string]*lab.Host // "a", "b"
	Backends []*lab.Host
	Bin      string             // the tandem binary
	Secret   string             // the proxy's and the adverts' secret
	Certs    string             // the sync certificates
	State    map[string]string  // each gateway's --state-dir
	Daemons  map[string]*Daemon // the running daemons, by gateway
	Interval time.Duration      // --vip-interval
	// StartWait is how long Start waits for "daemon running" (0: 30 s).
	// Longer under emulation, where the datapath's verification shares
	// two slow CPUs with the other daemon (TANDEM_TEST_SCALE).
	StartWait time.Duration
	links     []link.Link
}

// New builds the lab under dir (which it fills: secret, certificates,
// state directories) for the tandem binary bin, with adverts every
// interval. On error nothing is left.
func New(bin, dir string, interval time.Duration) (_ *Pair, err error) {
	l, err := lab.New(lab.GatewayPair())
	if err != nil {
		return nil, err
	}
	p := &Pair{Lab: l, Client: l.Host("client"), GW: map[string]*lab.Host{"a": l.Host("gwa"), "b": l.Host("gwb")},
		Backends: []*lab.Host{l.Host("be1"), l.Host("be2")}, Bin: bin, State: map[string]string{},
		Daemons: map[string]*Daemon{}, Interval: interval}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	// Frames a gateway's XDP sends into its veth need XDP on the peer end
	// (the switch's port).
	for _, port := range []string{"af", "bf", "ab", "bb"} {
		x, err := XDPPass(l.Host("sw"), port)
		if err != nil {
			return nil, err
		}
		p.links = append(p.links, x)
	}
	p.Secret = filepath.Join(dir, "pair.key")
	if err := os.WriteFile(p.Secret, []byte("the pair's shared secret for cookies and adverts"), 0o600); err != nil {
		return nil, err
	}
	p.Certs = filepath.Join(dir, "certs")
	if err := syncer.MakeCerts(p.Certs, map[string][]net.IP{"a": {net.IPv4(10, 79, 9, 1)}, "b": {net.IPv4(10, 79, 9, 2)}}, 24*time.Hour); err != nil {
		return nil, err
	}
	for _, g := range []string{"a", "b"} {
		p.State[g] = filepath.Join(dir, "state-"+g)
	}
	return p, nil
}

// Close kills the daemons, takes both datapaths down and removes the lab.
func (p *Pair) Close() error {
	for _, d := range p.Daemons {
		d.Kill()
	}
	var errs []error
	for _, g := range p.GW {
		if r := p.Tandem(g, "down", "--bpffs", g.BPFFS()); r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	for _, x := range p.links {
		x.Close()
	}
	return errors.Join(append(errs, p.Lab.Close())...)
}

// Other is the other gateway's name.
func Other(g string) string { return map[string]string{"a": "b", "b": "a"}[g] }

// Args is gateway g's daemon command line: the proxy on both sides, the
// election over the sync link and the front segment (gwa priority 200,
// gwb 100), the sync following ownership.
func (p *Pair) Args(g string, extra ...string) []string {
	self, peer, prio := "10.79.9.1", "10.79.9.2", "200"
	front := "10.79.1.3"
	if g == "b" {
		self, peer, prio, front = "10.79.9.2", "10.79.9.1", "100", "10.79.1.2"
	}
	return append([]string{"up", "--bpffs", p.GW[g].BPFFS(), "-v", "--state-dir", p.State[g],
		"--proxy-iface", "eth0,eth1", "--proxy-secret", p.Secret,
		"--service", fmt.Sprintf("%s:%d=10.79.2.11:%d,10.79.2.12:%d", VIP, Port, BackendPort, BackendPort),
		"--service", fmt.Sprintf("[%s]:%d=[fd79:2::11]:%d,[fd79:2::12]:%d", VIP6, Port, BackendPort, BackendPort),
		"--vip-addr", VIP + "/24@eth0", "--vip-addr", Inner + "/24@eth1",
		"--vip-addr", VIP6 + "/64@eth0", "--vip-addr", Inner6 + "/64@eth1",
		"--vip-peer", peer + ":7401," + front + ":7401", "--vip-priority", prio, "--vip-interval", p.Interval.String(),
		"--sync-role", "auto", "--sync-peer", peer + ":7400", "--sync-listen", self + ":7400",
		"--sync-name", g, "--sync-certs", p.Certs, "--sync-interval", "10ms"}, extra...)
}

// Daemon is one run of `tandem up` on a gateway.
type Daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	copy io.Writer // also gets the log, when set
	done chan struct{}
	once sync.Once
}

func (d *Daemon) Write(b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.copy != nil {
		d.copy.Write(b)
	}
	return d.log.Write(b)
}

// Log is everything the daemon wrote so far.
func (d *Daemon) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

// Pid is the daemon's process id (nsenter executes tandem in its place).
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig syscall.Signal) error { return d.cmd.Process.Signal(sig) }

// Exited is closed when the daemon has exited.
func (d *Daemon) Exited() <-chan struct{} { return d.done }

// Kill SIGKILLs the daemon and waits for it; a stopped one too.
func (d *Daemon) Kill() {
	d.once.Do(func() {
		d.cmd.Process.Kill()
		<-d.done
	})
}

// Start runs gateway g's daemon (Args plus extra) and waits until it
// says it runs. Its output goes to Daemon.Log and, when log is not nil,
// to log too.
func (p *Pair) Start(g string, log io.Writer, extra ...string) (*Daemon, error) {
	d := &Daemon{copy: log, done: make(chan struct{})}
	d.cmd = p.GW[g].Cmd(p.Bin, p.Args(g, extra...)...)
	d.cmd.Stdout, d.cmd.Stderr = d, d
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the daemon on gw%s: %w", g, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	p.Daemons[g] = d
	wait := p.StartWait
	if wait == 0 {
		wait = 30 * time.Second
	}
	deadline := time.After(wait)
	for !strings.Contains(d.Log(), "daemon running") {
		select {
		case <-deadline:
			return d, fmt.Errorf("the daemon on gw%s is not running after %v:\n%s", g, wait, d.Log())
		case <-d.done:
			return d, fmt.Errorf("the daemon on gw%s exited (%v):\n%s", g, d.cmd.ProcessState, d.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return d, nil
}

// Result is a finished tandem command.
type Result struct {
	Stdout, Stderr string
	Code           int
	Err            error // it did not run, or was killed
}

// Tandem runs the tandem binary in host h.
func (p *Pair) Tandem(h *lab.Host, args ...string) Result {
	return Run(p.Bin, h, args...)
}

// RunTimeout bounds every tandem command Run runs: a command that asks a
// stopped daemon (SIGSTOP) would wait for ever.
const RunTimeout = time.Minute

// Run runs the tandem binary bin in host h, killing it after RunTimeout.
func Run(bin string, h *lab.Host, args ...string) Result {
	cmd := h.Cmd(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return Result{Err: fmt.Errorf("run tandem %v: %w", args, err)}
	}
	t := time.AfterFunc(RunTimeout, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	t.Stop()
	r := Result{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		r.Code = ee.ExitCode()
	} else if err != nil {
		r.Err = fmt.Errorf("run tandem %v: %w", args, err)
	}
	return r
}

// VIPStatus asks gateway g's daemon (tandem vip --json).
func (p *Pair) VIPStatus(g string) (vip.Status, error) {
	r := p.Tandem(p.GW[g], "vip", "--json", "--state-dir", p.State[g])
	var st vip.Status
	if r.Err != nil {
		return st, r.Err
	}
	if r.Code != 0 {
		return st, fmt.Errorf("tandem vip on gw%s: exit %d: %s", g, r.Code, strings.TrimSpace(r.Stderr))
	}
	return st, json.Unmarshal([]byte(r.Stdout), &st)
}

// Owners reports which running daemons say they own the VIPs and which
// have caught up, and a line that says it all.
func (p *Pair) Owners() (own, caught map[string]bool, state string) {
	own, caught = map[string]bool{}, map[string]bool{}
	var parts []string
	for _, g := range []string{"a", "b"} {
		if _, ok := p.Daemons[g]; !ok {
			continue
		}
		st, err := p.VIPStatus(g)
		if err != nil {
			parts = append(parts, err.Error())
			continue
		}
		own[g], caught[g] = st.Owner, st.CaughtUp
		parts = append(parts, fmt.Sprintf("gw%s owner=%v caught_up=%v (%s)", g, st.Owner, st.CaughtUp, st.Why))
	}
	return own, caught, strings.Join(parts, "; ")
}

// Settled reports whether exactly want owns and every other running
// daemon has caught up.
func (p *Pair) Settled(want string) (bool, string) {
	own, caught, state := p.Owners()
	for g := range p.Daemons {
		if _, ok := own[g]; !ok {
			return false, state // no answer
		}
		if own[g] != (g == want) || (g != want && !caught[g]) {
			return false, state
		}
	}
	return own[want], state
}

// WaitFor polls cond every 20 ms until it holds or d passes.
func WaitFor(d time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s; last: %s", d, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ConnTable reads a gateway's connection entries without the host-local
// queued epoch and sequence tracking (the RST/SYN checks' state: moved by
// every segment but replicated only with the entry's other changes, and
// re-anchored by the host that takes over, see docs/synproxy.md).
func ConnTable(h *lab.Host) (map[maps.ConnKey]maps.ConnVal, error) {
	px, err := loader.OpenProxy(maps.Pins{Root: h.BPFFS()})
	if err != nil {
		return nil, err
	}
	defer px.Close()
	out := map[maps.ConnKey]maps.ConnVal{}
	var (
		k maps.ConnKey
		v maps.ConnVal
	)
	it := px.Conns.Iterate()
	for it.Next(&k, &v) {
		v.Sync.QueuedEpoch = 0
		v.Cnxt, v.Cuna, v.Bnxt, v.Buna, v.Cmaxwin, v.Bmaxwin, v.Cwin, v.Bwin, v.Trk, v.ChalT = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
		// The cached next hops are this host's own (a fill marks
		// nothing for the sync; the peer's never match the generation).
		v.NhGen, v.NhMtu, v.NhIfindex, v.NhMac = 0, [2]uint16{}, [2]uint32{}, [2][12]uint8{}
		out[k] = v
	}
	return out, it.Err()
}

// ProxyStats reads the SYN proxy's counters on gateway h.
func ProxyStats(h *lab.Host) (map[string]uint64, error) {
	px, err := loader.OpenProxy(maps.Pins{Root: h.BPFFS()})
	if err != nil {
		return nil, err
	}
	defer px.Close()
	return px.ProxyStats()
}

// XDPPass attaches a program that passes everything to h's iface. Frames
// XDP sends into a veth are only picked up promptly by a peer that runs
// an XDP program itself. The link lets a caller swap the program.
func XDPPass(h *lab.Host, iface string) (link.Link, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		return nil, err
	}
	defer prog.Close()
	var l link.Link
	if err := h.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index})
		return err
	}); err != nil {
		return nil, fmt.Errorf("XDP_PASS on %s %s: %w", h.Name, iface, err)
	}
	return l, nil
}
