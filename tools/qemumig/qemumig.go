// Package qemumig is the QEMU live migration lab: a small guest (a
// Debian kernel and an initramfs whose /init echoes UDP, see guest/) runs
// in QEMU (TCG) on lab host hs, a second QEMU waits for it on host hd, and
// a live migration (QMP migrate tcp:...) moves it while a client streams
// sequence-numbered UDP to it through the gateway gw. The guest has no
// root file system and no 9p mount (9p blocks migration).
//
//	client 10.88.1.2 --- 10.88.1.1 gw 10.88.2.1 --- 10.88.2.2 hs [tap0: QEMU source]
//	                               gw 10.88.3.1 --- 10.88.3.2 hd [tap0: QEMU destination]
//
// The guest is 10.88.0.5; the gateway routes it via hs, and after the move
// via hd (the baseline flips that route when the source reports the move
// completed; with tandem the gateway's migration stage does it). Each
// host's tap0 has the same MAC and answers ARP for everything by proxy,
// so the guest's neighbour entry stays right on either host.
package qemumig

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/tandem-net/tandem/migrate/qmp"
	"github.com/tandem-net/tandem/tools/lab"
)

// Addresses of the lab.
const (
	GuestAddr  = "10.88.0.5"
	GuestMAC   = "52:54:00:88:00:05"
	TapMAC     = "02:00:00:88:00:01"
	ClientAddr = "10.88.1.2"
	SrcHop     = "10.88.2.2" // hs on the gateway's segment
	DstHop     = "10.88.3.2" // hd on the gateway's segment
	EchoPort   = 7
	migPort    = 4444
)

// KernelCache is where tools/vmtest (and make deps) keep Debian kernels.
const KernelCache = "/var/cache/tandem/kernels"

// ErrNoKernel: no kernel to boot the guest with.
var ErrNoKernel = errors.New("no Debian kernel under " + KernelCache + " (make deps, or a tools/vmtest run, fetches linux-image-6.1; or set TANDEM_QEMUMIG_KERNEL to an unpacked linux-image directory)")

// Kernel is a vmlinuz and the directory of its modules.
type Kernel struct {
	Vmlinuz, Modules string
}

// FindKernel finds an unpacked Debian linux-image: $TANDEM_QEMUMIG_KERNEL,
// else the newest under KernelCache.
func FindKernel() (*Kernel, error) {
	dirs := []string{os.Getenv("TANDEM_QEMUMIG_KERNEL")}
	if dirs[0] == "" {
		m, _ := filepath.Glob(filepath.Join(KernelCache, "linux-image-*"))
		dirs = m
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		vm, _ := filepath.Glob(filepath.Join(dirs[i], "boot", "vmlinuz-*"))
		mods, _ := filepath.Glob(filepath.Join(dirs[i], "lib", "modules", "*", "kernel"))
		if len(vm) == 1 && len(mods) == 1 {
			return &Kernel{Vmlinuz: vm[0], Modules: mods[0]}, nil
		}
	}
	return nil, ErrNoKernel
}

// guestModules are the guest's drivers (guest/main.go loads them in this
// order).
var guestModules = []string{"virtio_ring.ko", "virtio.ko", "virtio_pci_legacy_dev.ko", "virtio_pci_modern_dev.ko",
	"virtio_pci.ko", "failover.ko", "net_failover.ko", "virtio_net.ko"}

// BuildInitramfs builds the guest's /init (static, from ./guest) and
// writes a newc cpio with it and the virtio network modules of k to out.
func BuildInitramfs(ctx context.Context, repo string, k *Kernel, out string) error {
	bin := out + ".init"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./tools/qemumig/guest")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the guest's init: %w: %s", err, b)
	}
	defer os.Remove(bin)
	files := map[string]string{"init": bin}
	for _, m := range guestModules {
		var found string
		filepath.WalkDir(k.Modules, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() == m {
				found = p
				return filepath.SkipAll
			}
			return nil
		})
		if found == "" {
			return fmt.Errorf("module %s not under %s (its kernel must build virtio-net as modules)", m, k.Modules)
		}
		files["modules/"+m] = found
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := cpio.NewWriter(f)
	now := time.Now()
	for _, d := range []string{"dev", "proc", "sys", "modules"} {
		if err := w.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755, ModTime: now, Links: 2}); err != nil {
			return err
		}
	}
	for name, src := range files {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		mode := cpio.FileMode(0o644)
		if name == "init" {
			mode = 0o755
		}
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: int64(len(data)), ModTime: now, Links: 1}); err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

// Spec is the lab's topology.
func Spec() lab.Spec {
	return lab.Spec{
		Hosts: []lab.HostSpec{
			{Name: "client", Routes: []string{"10.88.0.0/16 via 10.88.1.1"}},
			{Name: "gw", Forward: true, Routes: []string{GuestAddr + "/32 via " + SrcHop}},
			{Name: "hs", Forward: true, Routes: []string{"default via 10.88.2.1"}},
			{Name: "hd", Forward: true, Routes: []string{"default via 10.88.3.1"}},
		},
		// Tx checksum offload off: the gateway's XDP redirect drops the
		// partial-checksum mark of the client's locally sent datagrams.
		Links: []lab.LinkSpec{
			{A: lab.End{Host: "client", Iface: "eth0", Addrs: []string{ClientAddr + "/24"}}, B: lab.End{Host: "gw", Iface: "eth0", Addrs: []string{"10.88.1.1/24"}}, TxOff: true},
			{A: lab.End{Host: "gw", Iface: "eth1", Addrs: []string{"10.88.2.1/24"}}, B: lab.End{Host: "hs", Iface: "eth0", Addrs: []string{SrcHop + "/24"}}, TxOff: true},
			{A: lab.End{Host: "gw", Iface: "eth2", Addrs: []string{"10.88.3.1/24"}}, B: lab.End{Host: "hd", Iface: "eth0", Addrs: []string{DstHop + "/24"}}, TxOff: true},
		},
	}
}

// Lab is a built topology with its two QEMU processes.
type Lab struct {
	L        *lab.Lab
	Dir      string
	Src, Dst *QEMU
}

// QEMU is one QEMU process in a lab host: ctl.sock is the lab's QMP
// connection, follow.sock is free for a follower (QEMU serves one client
// per QMP socket).
type QEMU struct {
	Host    *lab.Host
	Ctl     *qmp.Conn
	Follow  string // the second QMP socket
	Console string // the serial console's log
	cmd     *exec.Cmd
	done    chan error
}

// New builds the topology and the hosts' tap devices; Start boots the
// guests.
func New(dir string) (*Lab, error) {
	l, err := lab.New(Spec())
	if err != nil {
		return nil, err
	}
	ml := &Lab{L: l, Dir: dir}
	for _, name := range []string{"hs", "hd"} {
		h := l.Host(name)
		for _, args := range [][]string{
			{"tuntap", "add", "tap0", "mode", "tap"},
			{"link", "set", "tap0", "address", TapMAC, "up"},
			{"addr", "add", "10.88.0.1/32", "dev", "tap0"},
			{"route", "add", GuestAddr + "/32", "dev", "tap0"},
			{"neigh", "replace", GuestAddr, "lladdr", GuestMAC, "dev", "tap0", "nud", "permanent"},
		} {
			if err := h.IP(args...); err != nil {
				ml.Close()
				return nil, fmt.Errorf("host %s: ip %s: %w", name, strings.Join(args, " "), err)
			}
		}
		// proxy_delay 0: the guest's ARP for the client is answered at
		// once, not after up to 0.8 s.
		for k, v := range map[string]string{"net.ipv4.conf.tap0.proxy_arp": "1", "net.ipv4.neigh.tap0.proxy_delay": "0", "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.tap0.rp_filter": "0"} {
			if err := h.Sysctl(k, v); err != nil {
				ml.Close()
				return nil, err
			}
		}
	}
	return ml, nil
}

// Close stops the QEMUs and removes the lab.
func (l *Lab) Close() {
	for _, q := range []*QEMU{l.Src, l.Dst} {
		if q != nil {
			q.Stop()
		}
	}
	l.L.Close()
}

// Start boots the guest on hs and a QEMU on hd that waits for it.
func (l *Lab) Start(ctx context.Context, k *Kernel, initrd string) error {
	var err error
	if l.Dst, err = l.start(ctx, "hd", k, initrd, true); err != nil {
		return err
	}
	if l.Src, err = l.start(ctx, "hs", k, initrd, false); err != nil {
		return err
	}
	if err := l.Src.WaitConsole(ctx, "echoing UDP"); err != nil {
		return err
	}
	return l.WaitEcho(ctx)
}

// WaitEcho waits until a datagram from the client comes back from the
// guest: every neighbour on the path is resolved, so a stream started
// now loses nothing before the move.
func (l *Lab) WaitEcho(ctx context.Context) error {
	var c net.Conn
	err := l.L.Host("client").Do(func() (err error) {
		c, err = net.Dial("udp4", net.JoinHostPort(GuestAddr, fmt.Sprint(EchoPort)))
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "ping" {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no echo from the guest at %s: %w", GuestAddr, ctx.Err())
		}
	}
}

func (l *Lab) start(ctx context.Context, host string, k *Kernel, initrd string, incoming bool) (*QEMU, error) {
	h := l.L.Host(host)
	base := filepath.Join(l.Dir, host)
	q := &QEMU{Host: h, Follow: base + "-follow.sock", Console: base + "-console.log", done: make(chan error, 1)}
	ctl := base + "-ctl.sock"
	args := []string{
		"-accel", "tcg", "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "file:" + q.Console,
		"-kernel", k.Vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet qemumig.addr=" + GuestAddr + "/8",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + GuestMAC + ",romfile=",
		"-qmp", "unix:" + ctl + ",server=on,wait=off",
		"-qmp", "unix:" + q.Follow + ",server=on,wait=off",
	}
	if incoming {
		args = append(args, "-incoming", fmt.Sprintf("tcp:%s:%d", DstHop, migPort))
	}
	q.cmd = h.Cmd("qemu-system-x86_64", args...)
	out, err := os.Create(base + "-qemu.log")
	if err != nil {
		return nil, err
	}
	q.cmd.Stdout, q.cmd.Stderr = out, out
	if err := q.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start QEMU on %s: %w", host, err)
	}
	go func() { q.done <- q.cmd.Wait(); out.Close() }()
	for {
		if q.Ctl, err = qmp.Dial(ctx, ctl, false); err == nil {
			return q, nil
		}
		select {
		case err := <-q.done:
			q.done <- err
			b, _ := os.ReadFile(base + "-qemu.log")
			return nil, fmt.Errorf("QEMU on %s exited: %v: %s", host, err, b)
		case <-ctx.Done():
			q.Stop()
			return nil, fmt.Errorf("QEMU on %s: QMP: %w", host, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitConsole waits for the guest's console to show s.
func (q *QEMU) WaitConsole(ctx context.Context, s string) error {
	for {
		b, _ := os.ReadFile(q.Console)
		if strings.Contains(string(b), s) {
			return nil
		}
		if strings.Contains(string(b), "qemumig guest: error:") {
			return fmt.Errorf("guest: %s", b)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("guest console %s never showed %q: %s", q.Console, s, b)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop kills the QEMU process.
func (q *QEMU) Stop() {
	if q.Ctl != nil {
		q.Ctl.Close()
	}
	if q.cmd != nil && q.cmd.Process != nil {
		q.cmd.Process.Kill()
		<-q.done
		q.cmd = nil
	}
}

// MigrationResult is what the source reports of a finished move.
type MigrationResult struct {
	Status     string
	DowntimeMS int64 // the guest's stop-and-copy, as QEMU measured it
	TotalMS    int64
	Completed  time.Time // when the lab saw completed (and ran onCompleted)
	Trace      []string  // query-migrate's answers as they changed
}

// Migrate moves the guest from hs to hd and waits for the source to
// report the end. onCompleted runs when the source reports the move
// completed (the baseline flips the gateway's route there).
func (l *Lab) Migrate(ctx context.Context, onCompleted func()) (MigrationResult, error) {
	var r MigrationResult
	if _, err := l.Src.Ctl.Execute("migrate", map[string]any{"uri": fmt.Sprintf("tcp:%s:%d", DstHop, migPort)}); err != nil {
		return r, fmt.Errorf("migrate: %w", err)
	}
	for {
		raw, err := l.Src.Ctl.Execute("query-migrate", nil)
		if err != nil {
			return r, err
		}
		var m struct {
			Status    string `json:"status"`
			Downtime  int64  `json:"downtime"`
			TotalTime int64  `json:"total-time"`
			Expected  int64  `json:"expected-downtime"`
			ErrorDesc string `json:"error-desc"`
			RAM       struct {
				Remaining int64 `json:"remaining"`
				Syncs     int64 `json:"dirty-sync-count"`
			} `json:"ram"`
		}
		json.Unmarshal(raw, &m)
		if s := fmt.Sprintf("%s remaining=%d syncs=%d expected=%dms", m.Status, m.RAM.Remaining, m.RAM.Syncs, m.Expected); len(r.Trace) == 0 || r.Trace[len(r.Trace)-1][13:] != s {
			r.Trace = append(r.Trace, time.Now().Format("15:04:05.000")+" "+s)
		}
		switch m.Status {
		case "completed":
			at := time.Now()
			if onCompleted != nil {
				onCompleted()
			}
			return MigrationResult{Status: m.Status, DowntimeMS: m.Downtime, TotalMS: m.TotalTime, Completed: at, Trace: r.Trace}, nil
		case "failed", "cancelled":
			return MigrationResult{Status: m.Status}, fmt.Errorf("migration %s: %s", m.Status, m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("migration still %s: %w", m.Status, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ConsoleTail is the last lines of q's console, for failure messages.
func (q *QEMU) ConsoleTail() string {
	f, err := os.Open(q.Console)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		lines = append(lines, s.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
