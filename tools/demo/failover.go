package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/tandem-net/tandem/syncer"
	"github.com/tandem-net/tandem/syncer/vip"
	"github.com/tandem-net/tandem/tools/lab"
)

const (
	fvip   = "10.79.1.100"
	finner = "10.79.2.1"
	upload = 1 << 20
)

// failover is the demo's second part: two gateways running the SYN proxy
// with the election and the state sync; connections through the owner;
// the owner's daemon killed and its interfaces taken down; the
// connections finish through the other gateway with their contents
// intact. Then the old owner rejoins as standby and a planned handover
// moves the VIPs back without loss.
func failover(bin string, keep bool) error {
	step("building the failover lab: client -- [front] -- gwa, gwb -- [back] -- be1, be2; gwa -- gwb sync link")
	l, err := lab.New(lab.GatewayPair())
	if err != nil {
		return err
	}
	gw := map[string]*lab.Host{"a": l.Host("gwa"), "b": l.Host("gwb")}
	client := l.Host("client")
	dir, err := os.MkdirTemp("", "tandem-demo-")
	if err != nil {
		return err
	}
	daemons := map[string]*exec.Cmd{}
	defer func() {
		for _, c := range daemons {
			c.Process.Kill()
			c.Wait()
		}
		if keep {
			fmt.Printf("lab kept: namespaces %s-*, daemon logs in %s\n", l.ID, dir)
			return
		}
		for _, h := range gw {
			h.Cmd(bin, "down", "--bpffs", h.BPFFS()).Run()
		}
		l.Close()
		os.RemoveAll(dir)
	}()
	// Frames the gateways' XDP sends into their veths need XDP on the
	// switch's ends.
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		return err
	}
	defer pass.Close()
	var links []link.Link
	defer func() {
		for _, x := range links {
			x.Close()
		}
	}()
	for _, port := range []string{"af", "bf", "ab", "bb"} {
		if err := l.Host("sw").Do(func() error {
			i, err := net.InterfaceByName(port)
			if err != nil {
				return err
			}
			xl, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: i.Index})
			if err == nil {
				links = append(links, xl)
			}
			return err
		}); err != nil {
			return fmt.Errorf("XDP on the switch port %s: %w", port, err)
		}
	}
	secret := filepath.Join(dir, "pair.key")
	if err := os.WriteFile(secret, []byte("the demo pair's shared secret, 32+ bytes"), 0o600); err != nil {
		return err
	}
	certs := filepath.Join(dir, "certs")
	if err := syncer.MakeCerts(certs, map[string][]net.IP{"a": {net.IPv4(10, 79, 9, 1)}, "b": {net.IPv4(10, 79, 9, 2)}}, time.Hour); err != nil {
		return err
	}
	args := func(g string) []string {
		self, peer, prio, front := "10.79.9.1", "10.79.9.2", "200", "10.79.1.3"
		if g == "b" {
			self, peer, prio, front = "10.79.9.2", "10.79.9.1", "100", "10.79.1.2"
		}
		return []string{"up", "--bpffs", gw[g].BPFFS(), "--state-dir", filepath.Join(dir, "state-"+g),
			"--proxy-iface", "eth0,eth1", "--proxy-secret", secret,
			"--service", fvip + ":80=10.79.2.11:8080,10.79.2.12:8080",
			"--vip-addr", fvip + "/24@eth0", "--vip-addr", finner + "/24@eth1",
			"--vip-peer", peer + ":7401," + front + ":7401", "--vip-priority", prio, "--vip-interval", "50ms",
			"--sync-role", "auto", "--sync-peer", peer + ":7400", "--sync-listen", self + ":7400",
			"--sync-name", g, "--sync-certs", certs}
	}
	start := func(g string) error {
		logf, err := os.Create(filepath.Join(dir, "gw"+g+".log"))
		if err != nil {
			return err
		}
		cmd := gw[g].Cmd(bin, args(g)...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return err
		}
		daemons[g] = cmd
		// Running before the next one starts: a host that starts alone
		// and hears nobody takes the VIPs.
		for t0 := time.Now(); time.Since(t0) < 30*time.Second; time.Sleep(20 * time.Millisecond) {
			if b, _ := os.ReadFile(logf.Name()); bytes.Contains(b, []byte("daemon running")) {
				return nil
			}
		}
		return fmt.Errorf("the daemon on gw%s is not running after 30 s (log: %s)", g, logf.Name())
	}
	vipStatus := func(g string) (vip.Status, error) {
		var st vip.Status
		out, err := gw[g].Cmd(bin, "vip", "--json", "--state-dir", filepath.Join(dir, "state-"+g)).Output()
		if err != nil {
			return st, err
		}
		return st, json.Unmarshal(out, &st)
	}
	waitOwner := func(g string, caught string) (time.Duration, error) {
		t0 := time.Now()
		for time.Since(t0) < 30*time.Second {
			st, err := vipStatus(g)
			ok := err == nil && st.Owner
			if ok && caught != "" {
				o, err := vipStatus(caught)
				ok = err == nil && o.CaughtUp && !o.Owner
			}
			if ok {
				return time.Since(t0), nil
			}
			time.Sleep(10 * time.Millisecond)
		}
		return 0, fmt.Errorf("gw%s does not own the VIPs after 30 s (logs in %s)", g, dir)
	}
	show := func(g string) {
		cmd := gw[g].Cmd(bin, "vip", "--state-dir", filepath.Join(dir, "state-"+g))
		out, _ := cmd.CombinedOutput()
		fmt.Printf("    [gw%s] tandem vip\n", g)
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			fmt.Println("      " + line)
		}
	}
	for _, b := range []*lab.Host{l.Host("be1"), l.Host("be2")} {
		if err := serveUploads(b); err != nil {
			return err
		}
	}

	step("tandem up on both gateways: SYN proxy, election (50 ms adverts), state sync following the owner")
	if err := start("a"); err != nil {
		return err
	}
	if err := start("b"); err != nil {
		return err
	}
	if _, err := waitOwner("a", "b"); err != nil {
		return err
	}
	show("a")
	show("b")

	const n = 4
	step("%d connections to %s:80 through the SYN proxy on gwa, half of 1 MiB uploaded each", n, fvip)
	conns := make([]*upload1, n)
	for i := range conns {
		if conns[i], err = openUpload(client); err != nil {
			return err
		}
	}
	time.Sleep(200 * time.Millisecond) // the sync carries the entries to gwb
	step("gwa dies: its daemon is SIGKILLed and its interfaces go down")
	daemons["a"].Process.Kill()
	daemons["a"].Wait()
	delete(daemons, "a")
	for _, i := range []string{"eth0", "eth1"} {
		if err := gw["a"].IP("link", "set", i, "down"); err != nil {
			return err
		}
	}
	took, err := waitOwner("b", "")
	if err != nil {
		return err
	}
	fmt.Printf("    gwb owns the VIPs (seen by tandem vip %s after the kill)\n", took.Round(time.Millisecond))
	show("b")
	step("the %d connections finish through gwb: the rest of the upload, then 1 MiB back, both hashed", n)
	for i, c := range conns {
		if err := c.finish(); err != nil {
			return fmt.Errorf("connection %d across the failover: %w", i, err)
		}
		fmt.Printf("    connection %d: upload and download intact\n", i)
	}
	if c, err := openUpload(client); err != nil {
		return fmt.Errorf("a new connection: %w", err)
	} else if err := c.finish(); err != nil {
		return fmt.Errorf("a new connection: %w", err)
	}
	fmt.Println("    a new connection through gwb works too")

	step("gwa comes back: it rejoins as standby and catches up (no preemption)")
	for _, i := range []string{"eth0", "eth1"} {
		if err := gw["a"].IP("link", "set", i, "up"); err != nil {
			return err
		}
	}
	if err := start("a"); err != nil {
		return err
	}
	if _, err := waitOwner("b", "a"); err != nil {
		return err
	}
	show("a")

	step("planned handover back to gwa under a live connection: tandem vip handover on gwb")
	c, err := openUpload(client)
	if err != nil {
		return err
	}
	cmd := gw["b"].Cmd(bin, "vip", "handover", "--state-dir", filepath.Join(dir, "state-b"))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("tandem vip handover: %w", err)
	}
	if err := c.finish(); err != nil {
		return fmt.Errorf("the connection across the handover: %w", err)
	}
	fmt.Println("    the connection across the handover: intact")
	if _, err := waitOwner("a", "b"); err != nil {
		return err
	}
	show("a")
	return nil
}

// serveUploads runs the backends' server: it reads an upload to its end,
// answers with its SHA-256 and 1 MiB seeded by it.
func serveUploads(h *lab.Host) error {
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp", ":8080")
		return err
	}); err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				hs := sha256.New()
				if _, err := io.Copy(hs, c); err != nil {
					return
				}
				sum := hs.Sum(nil)
				c.Write(sum)
				io.Copy(c, io.LimitReader(seededStream(sum), upload))
			}()
		}
	}()
	return nil
}

func seededStream(seed []byte) io.Reader {
	var s [32]byte
	copy(s[:], seed)
	return rand.NewChaCha8(s)
}

type upload1 struct {
	c    net.Conn
	data []byte
}

func openUpload(client *lab.Host) (*upload1, error) {
	var c net.Conn
	if err := client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", fvip+":80", 5*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	u := &upload1{c: c, data: make([]byte, upload)}
	for i := range u.data {
		u.data[i] = byte(rand.Uint32())
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(u.data[:upload/2]); err != nil {
		return nil, err
	}
	return u, nil
}

func (u *upload1) finish() error {
	defer u.c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := u.c.Write(u.data[upload/2:])
		if err == nil {
			err = u.c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(u.c)
	if err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	want := sha256.Sum256(u.data)
	if len(got) != 32+upload || !bytes.Equal(got[:32], want[:]) {
		return errors.New("the backend's hash of the upload differs")
	}
	exp, _ := io.ReadAll(io.LimitReader(seededStream(want[:]), upload))
	if !bytes.Equal(got[32:], exp) {
		return errors.New("the download differs")
	}
	return nil
}
