package loader_test

// Weights and drain end to end: a lab gateway's SYN proxy with two
// backends, real sockets.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tandem-net/tandem/bpf"
	"github.com/tandem-net/tandem/loader/cli"
	"github.com/tandem-net/tandem/maps"
	"github.com/tandem-net/tandem/tools/lab"
)

// serveNamed runs, on each backend, a server that names the backend
// ("be1\n") and then echoes what it reads.
func (p *proxyLab) serveNamed(t *testing.T) {
	t.Helper()
	for i, h := range p.backends {
		var ln net.Listener
		if err := h.Do(func() (err error) {
			ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", backendPort))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		name := fmt.Sprintf("be%d\n", i+1)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(60 * time.Second))
					if _, err := io.WriteString(c, name); err == nil {
						io.Copy(c, c)
					}
				}()
			}
		}()
	}
}

type namedConn struct {
	c       net.Conn
	r       *bufio.Reader
	backend string
}

// dialNamed connects from the client's source port to the VIP and reads
// which backend answered. Fixed source ports make the flows, and so the
// backends the table picks, the same in every run.
func (p *proxyLab) dialNamed(t *testing.T, port int) namedConn {
	t.Helper()
	c, err := p.tryNamed(port)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryNamed is dialNamed that reports a connection refused or reset (a
// backend that is gone) as an error.
func (p *proxyLab) tryNamed(port int) (namedConn, error) {
	return tryNamedOn(p.client, netip.MustParseAddrPort(fmt.Sprintf("10.78.1.2:%d", port)), netip.AddrPortFrom(pvip4, proxyPort))
}

// tryNamedOn connects from client's address and port from to vip and
// reads which backend answered (a serveNamed-style server's first line).
func tryNamedOn(client *lab.Host, from, vip netip.AddrPort) (namedConn, error) {
	var c net.Conn
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(from)}
	if err := client.Do(func() (err error) {
		c, err = d.Dial("tcp", vip.String())
		return err
	}); err != nil {
		return namedConn{}, fmt.Errorf("connect from %s: %w", from, err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return namedConn{}, fmt.Errorf("connection from %s: no backend name: %w", from, err)
	}
	return namedConn{c: c, r: r, backend: name[:len(name)-1]}, nil
}

func serviceStates(t *testing.T, p *proxyLab) []maps.BackendState {
	t.Helper()
	return serviceStatesOn(t, p.gw, netip.AddrPortFrom(pvip4, proxyPort))
}

// serviceStatesOn reads the backends of h's service at vip (service list
// --json: weights, health, table slots, new connections).
func serviceStatesOn(t *testing.T, h *lab.Host, vip netip.AddrPort) []maps.BackendState {
	t.Helper()
	r := tandem(t, h, "service", "list", "--json", "--bpffs", h.BPFFS())
	var svcs []cli.ServiceStatus
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &svcs) != nil {
		t.Fatalf("service list --json on %s: %d\n%s%s", h.Name, r.code, r.stdout, r.stderr)
	}
	for _, s := range svcs {
		if s.VIP == vip {
			return s.BackendStates
		}
	}
	t.Fatalf("service list on %s: no %s\n%s", h.Name, vip, r.stdout)
	return nil
}

// TestProxyDrain: a drained backend (tandem service set --drain) takes no
// new connection while its established ones carry on with their contents
// intact; the per-backend counters and table shares in service list say
// so; --weight 1 brings it back.
func TestProxyDrain(t *testing.T) {
	p := newProxyLab(t)
	p.up(t)
	p.serveNamed(t)
	var open []namedConn
	on := map[string]int{}
	for i := range 20 {
		c := p.dialNamed(t, 41000+i)
		t.Cleanup(func() { c.c.Close() })
		open = append(open, c)
		on[c.backend]++
	}
	if on["be1"] == 0 || on["be2"] == 0 {
		t.Fatalf("20 flows at weights 1:1 went %v: the test needs both backends in use", on)
	}
	st := serviceStates(t, p)
	if len(st) != 2 || st[0].Conns != uint64(on["be1"]) || st[1].Conns != uint64(on["be2"]) || st[0].Slots+st[1].Slots != 65537 || st[0].Health != maps.HealthUnchecked {
		t.Fatalf("before the drain (flows %v): %+v", on, st)
	}

	r := tandem(t, p.gw, "service", "set", "--bpffs", p.gw.BPFFS(), "10.78.0.100:80", "10.78.2.2:8080", "--drain")
	if r.code != 0 {
		t.Fatalf("service set --drain: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for i := range 30 {
		c := p.dialNamed(t, 42000+i)
		if c.backend != "be2" {
			t.Errorf("new connection from port %d went to drained %s", 42000+i, c.backend)
		}
		c.c.Close()
	}
	// The established connections on both backends still carry data
	// both ways, contents checked.
	for i, c := range open {
		msg := bytes.Repeat([]byte(fmt.Sprintf("connection %d to %s after the drain;", i, c.backend)), 2000)
		go c.c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c.r, got); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("established connection %d on %s after the drain: %v (contents equal: %v)", i, c.backend, err, bytes.Equal(got, msg))
		}
	}
	st = serviceStates(t, p)
	if !st[0].Drained || st[0].Weight != 0 || st[0].Slots != 0 || st[1].Slots != 65537 || st[0].Conns != uint64(on["be1"]) || st[1].Conns != uint64(on["be2"]+30) {
		t.Errorf("after the drain (flows before %v, 30 after): %+v", on, st)
	}
	r = tandem(t, p.gw, "service", "list", "--bpffs", p.gw.BPFFS())
	t.Logf("service list after the drain:\n%s", r.stdout)
	if !bytes.Contains([]byte(r.stdout), []byte("drained")) {
		t.Errorf("service list does not show the drain:\n%s", r.stdout)
	}

	// Back in: new flows reach be1 again.
	if r := tandem(t, p.gw, "service", "set", "--bpffs", p.gw.BPFFS(), "10.78.0.100:80", "10.78.2.2:8080", "--weight", "1"); r.code != 0 {
		t.Fatalf("service set --weight 1: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	back := map[string]int{}
	for i := range 20 {
		c := p.dialNamed(t, 43000+i)
		back[c.backend]++
		c.c.Close()
	}
	if back["be1"] == 0 {
		t.Errorf("undrained be1 took none of 20 new flows (%v)", back)
	}
}

// TestProxyTableAfterUp: a service whose table is missing (written by a
// tandem from before tables) gets one from the next up, built from its
// pinned weights: up never leaves a service on the fixed hash.
func TestProxyTableAfterUp(t *testing.T) {
	p := newProxyLab(t)
	p.up(t)
	if r := tandem(t, p.gw, "service", "add", "--bpffs", p.gw.BPFFS(), "10.78.0.100:81", "10.78.2.2:8081@3", "10.78.3.2:8081"); r.code != 0 {
		t.Fatalf("service add: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	pins := maps.Pins{Root: p.gw.BPFFS()}
	outer, err := ebpf.LoadPinnedMap(pins.Map(bpf.SynproxyMapSpMaglev), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	var ids []uint32
	var id uint32
	var inner *ebpf.Map
	for it := outer.Iterate(); it.Next(&id, &inner); {
		ids = append(ids, id)
		inner.Close()
	}
	if len(ids) != 3 {
		t.Fatalf("tables for services %v, want 3 (two from up, one from add)", ids)
	}
	for _, id := range ids {
		if err := outer.Delete(id); err != nil {
			t.Fatal(err)
		}
	}
	p.up(t)
	n := 0
	for it := outer.Iterate(); it.Next(&id, &inner); {
		n++
		inner.Close()
	}
	if n != 3 {
		t.Fatalf("%d tables after up, want 3", n)
	}
	r := tandem(t, p.gw, "service", "list", "--json", "--bpffs", p.gw.BPFFS())
	var svcs []cli.ServiceStatus
	if err := json.Unmarshal([]byte(r.stdout), &svcs); err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.VIP.Port() != 81 {
			continue
		}
		if st := s.BackendStates; len(st) != 2 || st[0].Weight != 3 || st[0].Slots*4 < 65537*3-400 || st[0].Slots*4 > 65537*3+400 {
			t.Errorf("the added service's table after up: %+v, want weights 3:1 in the slots", st)
		}
	}
}
