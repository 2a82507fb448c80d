// Package lab builds network-namespace topologies for tandem's end-to-end
// tests, demo and benchmarks: hosts (namespaces), veth links, bridges,
// addresses and routes, from a small description. Every name carries the
// building process's pid, so labs of parallel runs never collide and Sweep
// can remove what a killed run left behind.
package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Spec describes a topology.
type Spec struct {
	Hosts   []HostSpec   `toml:"host"`
	Links   []LinkSpec   `toml:"link"`
	Bridges []BridgeSpec `toml:"bridge"`
}

// HostSpec is one network namespace.
type HostSpec struct {
	Name     string            `toml:"name"`
	Loopback []string          `toml:"loopback"` // extra addresses on lo, e.g. VIPs ("10.0.0.100/32")
	Routes   []string          `toml:"routes"`   // `ip route add` arguments: "10.2.0.0/24 via 10.1.0.1"
	Sysctls  map[string]string `toml:"sysctls"`  // e.g. net.ipv4.ip_forward = "1"
	Forward  bool              `toml:"forward"`  // shorthand: IPv4 and IPv6 forwarding on
}

// End is one side of a veth link.
type End struct {
	Host  string   `toml:"host"`
	Iface string   `toml:"iface"`
	Addrs []string `toml:"addrs"` // CIDR, e.g. "10.1.0.1/24", "fd00:1::1/64"
	MAC   string   `toml:"mac"`   // optional
}

// LinkSpec is a veth pair between two hosts.
type LinkSpec struct {
	A     End  `toml:"a"`
	B     End  `toml:"b"`
	TxOff bool `toml:"tx_off"` // turn off tx checksum offload on both ends
	MTU   int  `toml:"mtu"`
}

// BridgeSpec is a Linux bridge inside a host, enslaving some of its
// interfaces (a shared segment).
type BridgeSpec struct {
	Host  string   `toml:"host"`
	Name  string   `toml:"name"`
	Ports []string `toml:"ports"`
	Addrs []string `toml:"addrs"`
}

// Lab is a built topology. Close removes it.
type Lab struct {
	ID    string
	Hosts map[string]*Host
	once  sync.Once
}

// Host is one namespace of a lab.
type Host struct {
	Name string // as in the spec
	NS   string // the namespace's name under /run/netns
	lab  *Lab
}

const (
	nsPrefix    = "tl"
	bpffsParent = "/sys/fs/bpf/tandem-lab"
)

var seq atomic.Int32

// New builds spec. On any error everything built so far is removed.
func New(spec Spec) (_ *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: building namespaces needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("lab: the ip command (iproute2) is not installed")
	}
	l := &Lab{ID: fmt.Sprintf("%s%dx%d", nsPrefix, os.Getpid(), seq.Add(1)), Hosts: map[string]*Host{}}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	for _, hs := range spec.Hosts {
		if hs.Name == "" || strings.ContainsAny(hs.Name, "/ ") {
			return nil, fmt.Errorf("lab: bad host name %q", hs.Name)
		}
		if _, dup := l.Hosts[hs.Name]; dup {
			return nil, fmt.Errorf("lab: host %s declared twice", hs.Name)
		}
		h := &Host{Name: hs.Name, NS: l.ID + "-" + hs.Name, lab: l}
		if err := run("ip", "netns", "add", h.NS); err != nil {
			return nil, err
		}
		l.Hosts[hs.Name] = h
		if err := h.IP("link", "set", "lo", "up"); err != nil {
			return nil, err
		}
		if hs.Forward {
			hs.Sysctls = withDefaults(hs.Sysctls, map[string]string{"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
		}
		for k, v := range hs.Sysctls {
			if err := h.Sysctl(k, v); err != nil {
				return nil, err
			}
		}
	}
	host := func(name string) (*Host, error) {
		h, ok := l.Hosts[name]
		if !ok {
			return nil, fmt.Errorf("lab: unknown host %q", name)
		}
		return h, nil
	}
	for _, ls := range spec.Links {
		ha, err := host(ls.A.Host)
		if err != nil {
			return nil, err
		}
		hb, err := host(ls.B.Host)
		if err != nil {
			return nil, err
		}
		// Created directly inside both namespaces: no name ever exists in
		// the root namespace, so parallel labs cannot clash.
		if err := run("ip", "link", "add", "name", ls.A.Iface, "netns", ha.NS, "type", "veth", "peer", "name", ls.B.Iface, "netns", hb.NS); err != nil {
			return nil, err
		}
		for _, e := range []struct {
			h   *Host
			end End
		}{{ha, ls.A}, {hb, ls.B}} {
			if e.end.MAC != "" {
				if err := e.h.IP("link", "set", e.end.Iface, "address", e.end.MAC); err != nil {
					return nil, err
				}
			}
			if ls.MTU > 0 {
				if err := e.h.IP("link", "set", e.end.Iface, "mtu", strconv.Itoa(ls.MTU)); err != nil {
					return nil, err
				}
			}
			if err := e.h.addAddrs(e.end.Iface, e.end.Addrs); err != nil {
				return nil, err
			}
			if err := e.h.IP("link", "set", e.end.Iface, "up"); err != nil {
				return nil, err
			}
			if ls.TxOff {
				if out, err := e.h.Cmd("ethtool", "-K", e.end.Iface, "tx", "off").CombinedOutput(); err != nil {
					return nil, fmt.Errorf("lab: ethtool -K %s tx off: %v: %s", e.end.Iface, err, out)
				}
			}
		}
	}
	for _, bs := range spec.Bridges {
		h, err := host(bs.Host)
		if err != nil {
			return nil, err
		}
		if err := h.IP("link", "add", bs.Name, "type", "bridge"); err != nil {
			return nil, err
		}
		for _, p := range bs.Ports {
			if err := h.IP("link", "set", p, "master", bs.Name); err != nil {
				return nil, err
			}
		}
		if err := h.addAddrs(bs.Name, bs.Addrs); err != nil {
			return nil, err
		}
		if err := h.IP("link", "set", bs.Name, "up"); err != nil {
			return nil, err
		}
	}
	// Loopback addresses and routes last: routes need their links up.
	for _, hs := range spec.Hosts {
		h := l.Hosts[hs.Name]
		if err := h.addAddrs("lo", hs.Loopback); err != nil {
			return nil, err
		}
		for _, r := range hs.Routes {
			if err := h.IP(append([]string{"route", "add"}, strings.Fields(r)...)...); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

func withDefaults(m, d map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range d {
		out[k] = v
	}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (h *Host) addAddrs(iface string, addrs []string) error {
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return fmt.Errorf("lab: host %s: address %q: want CIDR", h.Name, a)
		}
		args := []string{"addr", "add", p.String(), "dev", iface}
		if p.Addr().Is6() {
			args = append(args, "nodad") // usable at once, no tentative state
		}
		if err := h.IP(args...); err != nil {
			return err
		}
	}
	return nil
}

// Host returns the named host or panics: specs are written by tests.
func (l *Lab) Host(name string) *Host {
	h, ok := l.Hosts[name]
	if !ok {
		panic("lab: no host " + name)
	}
	return h
}

// Close removes every namespace (and with them the veths and bridges) and
// the lab's bpffs directory. It is safe to call more than once.
func (l *Lab) Close() error {
	var errs []error
	l.once.Do(func() {
		for _, h := range l.Hosts {
			if err := run("ip", "netns", "del", h.NS); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.RemoveAll(filepath.Join(bpffsParent, l.ID)); err != nil {
			errs = append(errs, err)
		}
	})
	return errors.Join(errs...)
}

// BPFFS is a pin root for tandem on this host, unique to the lab, so two
// lab hosts never share pins (they share the machine's bpffs).
func (h *Host) BPFFS() string { return filepath.Join(bpffsParent, h.lab.ID, h.Name) }

// Cmd prepares a command that runs inside the host's network namespace.
// It enters the namespace only (not `ip netns exec`, which would also give
// the command a private /sys without the machine's bpffs).
func (h *Host) Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.NS, "--", name}, args...)...)
}

// IP runs `ip ARGS` in the host.
func (h *Host) IP(args ...string) error {
	return run("ip", append([]string{"-n", h.NS}, args...)...)
}

// Sysctl sets one sysctl in the host's namespace.
func (h *Host) Sysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return h.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("lab: host %s: sysctl %s=%s: %w", h.Name, key, value, err)
		}
		return nil
	})
}

// SNMP reads one counter of the host's /proc/net/snmp, e.g. ("Tcp",
// "PassiveOpens").
func (h *Host) SNMP(proto, name string) (int64, error) {
	var out []byte
	if err := h.Do(func() (err error) {
		// thread-self: /proc/self/net is the main thread's namespace.
		out, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	}); err != nil {
		return 0, fmt.Errorf("lab: host %s: %w", h.Name, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != proto+":" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == name && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("lab: host %s: no %s %s in /proc/net/snmp", h.Name, proto, name)
}

// Do runs f on an OS thread that has entered the host's namespace. Sockets
// f opens belong to the host and stay there after f returns; goroutines f
// starts do not run in the namespace.
func (h *Host) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("lab: open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+h.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("lab: open netns %s: %w", h.NS, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("lab: enter netns %s: %w", h.NS, err)
			return
		}
		ferr := f()
		// Only a thread that made it home may serve other goroutines;
		// otherwise it stays locked and dies with this goroutine.
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

func run(name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("lab: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Sweep removes namespaces and bpffs directories left by labs whose
// process is gone (a test killed by a timeout, an interrupted demo). It
// never touches a live process's lab.
func Sweep() error {
	var errs []error
	des, _ := os.ReadDir("/run/netns")
	for _, d := range des {
		if stale(d.Name()) {
			if err := run("ip", "netns", "del", d.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	des, _ = os.ReadDir(bpffsParent)
	for _, d := range des {
		if stale(d.Name()) {
			if err := os.RemoveAll(filepath.Join(bpffsParent, d.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// stale reports whether name is a lab name ("tl<pid>x<n>...") whose pid
// no longer runs.
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, nsPrefix)
	if !ok {
		return false
	}
	pidStr, _, ok := strings.Cut(rest, "x")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return false
	}
	return unix.Kill(pid, 0) == unix.ESRCH
}
