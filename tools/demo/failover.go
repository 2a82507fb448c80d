package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandem-net/tandem/tools/gwpair"
	"github.com/tandem-net/tandem/tools/lab"
)

const (
	fvip   = gwpair.VIP
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
	dir, err := os.MkdirTemp("", "tandem-demo-")
	if err != nil {
		return err
	}
	p, err := gwpair.New(bin, dir, 50*time.Millisecond)
	if err != nil {
		return err
	}
	l, gw, client := p.Lab, p.GW, p.Client
	defer func() {
		if keep {
			for _, d := range p.Daemons {
				d.Kill()
			}
			fmt.Printf("lab kept: namespaces %s-*, daemon logs in %s\n", l.ID, dir)
			return
		}
		p.Close()
		os.RemoveAll(dir)
	}()
	start := func(g string) error {
		logf, err := os.OpenFile(filepath.Join(dir, "gw"+g+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, err = p.Start(g, logf)
		return err
	}
	// waitOwner waits until g owns and every other running daemon has
	// caught up.
	waitOwner := func(g string) (time.Duration, error) {
		t0 := time.Now()
		if err := gwpair.WaitFor(30*time.Second, "gw"+g+" owns the VIPs", func() (bool, string) { return p.Settled(g) }); err != nil {
			return 0, fmt.Errorf("%w (logs in %s)", err, dir)
		}
		return time.Since(t0), nil
	}
	show := func(g string) {
		r := p.Tandem(gw[g], "vip", "--state-dir", p.State[g])
		fmt.Printf("    [gw%s] tandem vip\n", g)
		for _, line := range strings.Split(strings.TrimSpace(r.Stdout+r.Stderr), "\n") {
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
	if _, err := waitOwner("a"); err != nil {
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
	p.Daemons["a"].Kill()
	delete(p.Daemons, "a")
	for _, i := range []string{"eth0", "eth1"} {
		if err := gw["a"].IP("link", "set", i, "down"); err != nil {
			return err
		}
	}
	took, err := waitOwner("b")
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
	if _, err := waitOwner("b"); err != nil {
		return err
	}
	show("a")

	step("planned handover back to gwa under a live connection: tandem vip handover on gwb")
	c, err := openUpload(client)
	if err != nil {
		return err
	}
	cmd := gw["b"].Cmd(bin, "vip", "handover", "--state-dir", p.State["b"])
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("tandem vip handover: %w", err)
	}
	if err := c.finish(); err != nil {
		return fmt.Errorf("the connection across the handover: %w", err)
	}
	fmt.Println("    the connection across the handover: intact")
	if _, err := waitOwner("a"); err != nil {
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
