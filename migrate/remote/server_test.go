package remote

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandem-net/tandem/syncer"
)

// lab is a gateway's migration control on loopback with certificates of
// the pair's CA for the gateway gw, an allowed follower hv-a and a
// follower hv-b that is not allowed, and a stranger CA's hv-a.
type lab struct {
	dir, other string
	srv        *Server
	ctl        *fakeController
	addr       string
}

func newLab(t *testing.T, handshake, idle time.Duration) *lab {
	t.Helper()
	l := &lab{dir: t.TempDir(), other: t.TempDir(), ctl: newFake("10.1.0.5", "fd00::5")}
	gw := map[string][]net.IP{"gw": {net.ParseIP("127.0.0.1")}, "hv-a": nil, "hv-b": nil}
	if _, err := syncer.IssueCerts(l.dir, gw, syncer.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	// Another pair's CA, with a certificate for the same, allowed name.
	if _, err := syncer.IssueCerts(l.other, map[string][]net.IP{"hv-a": nil}, syncer.CertOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := syncer.TLSConfigAllowing(l.dir, "gw", []string{"hv-a"})
	if err != nil {
		t.Fatal(err)
	}
	l.srv = &Server{TLS: cfg, Controller: l.ctl, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), HandshakeTimeout: handshake, IdleTimeout: idle}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- l.srv.Serve(ln) }()
	t.Cleanup(func() {
		ln.Close()
		l.srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return l
}

func (l *lab) client(t *testing.T, dir, name string) *Client {
	t.Helper()
	cfg, err := syncer.ClientTLSConfig(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return &Client{Gateways: []string{l.addr}, TLS: cfg, Timeout: 5 * time.Second}
}

// noCertClient trusts the pair's CA but presents no certificate.
func (l *lab) noCertClient(t *testing.T) *Client {
	pem, err := os.ReadFile(filepath.Join(l.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &Client{Gateways: []string{l.addr}, TLS: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}, Timeout: 5 * time.Second}
}

// waitRefused waits for the server to count a refusal: the client may
// learn of it before the server's handler has counted it.
func waitRefused(t *testing.T, s *Server, reason string, want uint64) {
	t.Helper()
	for i := 0; i < 500 && s.RefusedFor(reason) < want; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.RefusedFor(reason); got != want {
		t.Fatalf("refused for %s: %d, want %d", reason, got, want)
	}
}

func TestStrangersRefused(t *testing.T) {
	l := newLab(t, 2*time.Second, time.Minute)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		client func() *Client
		reason string
	}{
		{"certificate of another CA", func() *Client { return l.client(t, l.other, "hv-a") }, RefuseHandshake},
		{"no certificate", func() *Client { return l.noCertClient(t) }, RefuseHandshake},
		{"pair CA, name not allowed", func() *Client { return l.client(t, l.dir, "hv-b") }, RefuseName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := l.srv.RefusedFor(tc.reason)
			c := tc.client()
			defer c.Close()
			for _, req := range []Request{
				{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.9"},
				{Op: OpAbort, Endpoint: "10.1.0.5"},
			} {
				if _, err := c.Do(ctx, req); err == nil {
					t.Fatalf("%s: a stranger's request was answered", req.Op)
				}
			}
			// Do dials again after a failure: two requests, up to four tries.
			for i := 0; i < 500 && l.srv.RefusedFor(tc.reason)-before < 2; i++ {
				time.Sleep(10 * time.Millisecond)
			}
			if n := l.srv.RefusedFor(tc.reason) - before; n < 2 {
				t.Fatalf("refused for %s: %d, want at least 2", tc.reason, n)
			}
			if calls := l.ctl.Calls(); len(calls) != 0 {
				t.Fatalf("a stranger reached the controller: %v", calls)
			}
		})
	}
}

func TestAllowedFollowerDrivesAMove(t *testing.T) {
	l := newLab(t, 2*time.Second, time.Minute)
	c := l.client(t, l.dir, "hv-a")
	defer c.Close()
	ctx := context.Background()
	steps := []struct {
		req   Request
		state string
		noop  bool
		code  string
	}{
		{Request{Op: OpStatus, Endpoint: "10.1.0.5"}, StateNone, false, ""},
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.9"}, StateMigrating, false, ""},
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.9"}, StateMigrating, true, ""},
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.10"}, "", false, CodeDifferentTo},
		{Request{Op: OpBlackout, Endpoint: "10.1.0.5"}, StateBlackout, false, ""},
		{Request{Op: OpBlackout, Endpoint: "10.1.0.5"}, StateBlackout, true, ""},
		{Request{Op: OpSwitch, Endpoint: "10.1.0.5"}, StateSwitched, false, ""},
		{Request{Op: OpBlackout, Endpoint: "10.1.0.5"}, "", false, CodeState},
		{Request{Op: OpDone, Endpoint: "10.1.0.5"}, StateNone, false, ""},
		{Request{Op: OpDone, Endpoint: "10.1.0.5"}, StateNone, true, ""},
		{Request{Op: OpBlackout, Endpoint: "10.9.9.9"}, "", false, CodeNoEndpoint},
		{Request{Op: "reboot", Endpoint: "10.1.0.5"}, "", false, CodeBadRequest},
		{Request{Op: OpStart, Endpoint: "fd00::5", To: "2001:db8::9"}, StateMigrating, false, ""},
		{Request{Op: OpAbort, Endpoint: "fd00::5"}, StateNone, false, ""},
		// A routed destination: the same host by IP-in-IP is another
		// destination than the host as a segment hop.
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "ipip:192.0.2.77"}, StateMigrating, false, ""},
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "ipip:192.0.2.77"}, StateMigrating, true, ""},
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.77"}, "", false, CodeDifferentTo},
		{Request{Op: OpStart, Endpoint: "10.1.0.5", To: "gre:192.0.2.77"}, "", false, CodeBadRequest},
		{Request{Op: OpAbort, Endpoint: "10.1.0.5"}, StateNone, false, ""},
	}
	for i, s := range steps {
		resp, err := c.Do(ctx, s.req)
		if s.code != "" {
			var re *RemoteError
			if !errors.As(err, &re) || re.Code != s.code {
				t.Fatalf("step %d %+v: err %v, want code %s", i, s.req, err, s.code)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d %+v: %v", i, s.req, err)
		}
		if resp.State != s.state || resp.Noop != s.noop {
			t.Fatalf("step %d %+v: state %s noop %v, want %s noop %v", i, s.req, resp.State, resp.Noop, s.state, s.noop)
		}
	}
	want := []string{"start 10.1.0.5 192.0.2.9", "blackout 10.1.0.5", "switch 10.1.0.5", "blackout 10.1.0.5", "done 10.1.0.5",
		"blackout 10.9.9.9", "start fd00::5 2001:db8::9", "abort fd00::5", "start 10.1.0.5 ipip:192.0.2.77", "abort 10.1.0.5"}
	// The refused blackout after the switch reaches the controller (it
	// says no); the one for the unknown endpoint stops at Status.
	want = slices.Delete(want, 5, 6)
	if got := l.ctl.Calls(); !slices.Equal(got, want) {
		t.Fatalf("controller calls:\n got %v\nwant %v", got, want)
	}
	for _, r := range RefuseReasons {
		if n := l.srv.RefusedFor(r); n != 0 {
			t.Fatalf("the allowed follower was refused (%s: %d)", r, n)
		}
	}
}

func TestIdleConnectionsClosed(t *testing.T) {
	l := newLab(t, 300*time.Millisecond, 300*time.Millisecond)
	// A TCP connection that never starts TLS: closed at the handshake
	// deadline and counted.
	raw, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Fatal("the server wrote to a connection that never said hello")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept an idle connection open")
	}
	waitRefused(t, l.srv, RefuseHandshake, 1)

	// An allowed follower that goes quiet after a request: closed at the
	// idle deadline, and the next request dials again.
	c := l.client(t, l.dir, "hv-a")
	defer c.Close()
	if _, err := c.Do(context.Background(), Request{Op: OpStatus, Endpoint: "10.1.0.5"}); err != nil {
		t.Fatal(err)
	}
	conn := c.c
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data from an idle control connection")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept an idle follower's connection open")
	}
	if _, err := c.Do(context.Background(), Request{Op: OpStatus, Endpoint: "10.1.0.5"}); err != nil {
		t.Fatalf("request after the idle close: %v", err)
	}
}

func TestNoDatapath(t *testing.T) {
	s := &Server{}
	resp := s.Do(Request{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.9"})
	if resp.OK || resp.Code != CodeNoDatapath {
		t.Fatalf("got %+v, want code %s", resp, CodeNoDatapath)
	}
}

// TestClientFailsOver: the follower is given both gateways of the pair;
// when the one it talks to dies mid-move, the next step goes to the other
// (which holds the replicated migration state), and a step resent there
// after the failover is a no-op, not an error.
func TestClientFailsOver(t *testing.T) {
	a := newLab(t, 2*time.Second, time.Minute)
	// Gateway b: the same pair CA and controller state (replicated), its
	// own listener.
	cfg, err := syncer.TLSConfigAllowing(a.dir, "gw", []string{"hv-a"})
	if err != nil {
		t.Fatal(err)
	}
	b := &Server{TLS: cfg, Controller: a.ctl, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	lnB, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go b.Serve(lnB)
	defer func() { lnB.Close(); b.Stop() }()

	c := a.client(t, a.dir, "hv-a")
	c.Gateways = append(c.Gateways, lnB.Addr().String())
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Do(ctx, Request{Op: OpStart, Endpoint: "10.1.0.5", To: "192.0.2.9"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do(ctx, Request{Op: OpBlackout, Endpoint: "10.1.0.5"}); err != nil {
		t.Fatal(err)
	}
	// Gateway a dies.
	a.srv.Stop()
	resp, err := c.Do(ctx, Request{Op: OpBlackout, Endpoint: "10.1.0.5"})
	if err != nil || !resp.Noop {
		t.Fatalf("blackout resent after the failover: %+v, %v; want a no-op", resp, err)
	}
	if _, err := c.Do(ctx, Request{Op: OpSwitch, Endpoint: "10.1.0.5"}); err != nil {
		t.Fatalf("switch after the failover: %v", err)
	}
	if got, want := a.ctl.Calls(), []string{"start 10.1.0.5 192.0.2.9", "blackout 10.1.0.5", "switch 10.1.0.5"}; !slices.Equal(got, want) {
		t.Fatalf("controller calls %v, want %v", got, want)
	}
}

// expiredClient presents a certificate of the pair's CA for the allowed
// name hv-a whose validity ended an hour ago.
func (l *lab) expiredClient(t *testing.T) *Client {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(l.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(l.dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tls.X509KeyPair(caPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242), Subject: pkix.Name{CommonName: "hv-a"}, DNSNames: []string{"hv-a"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return &Client{Gateways: []string{l.addr}, TLS: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}, Timeout: 5 * time.Second}
}

// TestExpiredCertificateRefused: the pair's CA signed it for an allowed
// name, but it has expired: refused at the handshake, the controller
// untouched.
func TestExpiredCertificateRefused(t *testing.T) {
	l := newLab(t, 2*time.Second, time.Minute)
	c := l.expiredClient(t)
	defer c.Close()
	if _, err := c.Do(context.Background(), Request{Op: OpAbort, Endpoint: "10.1.0.5"}); err == nil {
		t.Fatal("a request with an expired certificate was answered")
	}
	// Do dials again after a failure: two tries.
	waitRefused(t, l.srv, RefuseHandshake, 2)
	if calls := l.ctl.Calls(); len(calls) != 0 {
		t.Fatalf("an expired certificate reached the controller: %v", calls)
	}
}

// TestEndpointForms: an endpoint written as an IPv4-mapped IPv6 address
// is the IPv4 endpoint (the maps key both alike; the CLI unmaps); a zone
// is no part of an endpoint's address.
func TestEndpointForms(t *testing.T) {
	for _, tc := range []struct {
		ep, code string
	}{
		{"10.1.0.5", ""},
		{"::ffff:10.1.0.5", ""},
		{"fd00::5", ""},
		{"fd00::5%eth0", CodeBadRequest},
		{"10.1.0.6", CodeNoEndpoint},
	} {
		s := &Server{Controller: newFake("10.1.0.5", "fd00::5")}
		resp := s.Do(Request{Op: OpStatus, Endpoint: tc.ep})
		if resp.Code != tc.code || resp.OK != (tc.code == "") {
			t.Errorf("status %s: %+v, want code %q", tc.ep, resp, tc.code)
		}
	}
	// A destination that is no host is the request's fault (bad_request,
	// as the CLI says it), not the controller's ("see the daemon's log").
	for _, tc := range []struct {
		to, code string
	}{
		{"10.2.0.12", ""},
		{"ipip:192.0.2.7", ""},
		{"::ffff:10.2.0.12", ""},
		{"0.0.0.0", CodeBadRequest},
		{"::", CodeBadRequest},
		{"224.0.0.1", CodeBadRequest},
		{"ipip:ff02::1", CodeBadRequest},
		{"127.0.0.1", CodeBadRequest},
		{"255.255.255.255", CodeBadRequest},
		{"fd00::9%eth0", CodeBadRequest},
	} {
		s := &Server{Controller: newFake("10.1.0.5")}
		resp := s.Do(Request{Op: OpStart, Endpoint: "10.1.0.5", To: tc.to})
		if resp.Code != tc.code || resp.OK != (tc.code == "") {
			t.Errorf("start --to %s: %+v, want code %q", tc.to, resp, tc.code)
		}
	}
}

// FuzzRequest feeds request lines as the server reads them (the JSON
// decoder, then Do) to a fake controller: never a panic; an answer is ok
// or names a known code and an error; a refused request changes no
// state; an op outside Ops never reaches the controller.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"start","endpoint":"10.1.0.5","to":"10.2.0.12"}`,
		`{"op":"start","endpoint":"10.1.0.5","to":"ipip:192.0.2.7"}`,
		`{"op":"blackout","endpoint":"fd00::5"}`,
		`{"op":"switch","endpoint":"10.1.0.5"}`,
		`{"op":"done","endpoint":"::ffff:10.1.0.5"}`,
		`{"op":"abort","endpoint":"10.1.0.5","to":"x"}`,
		`{"op":"status","endpoint":"10.9.9.9"}`,
		`{"op":"frob","endpoint":"10.1.0.5"}`,
		`{"op":"start","endpoint":"10.1.0.5","to":"ipip:"}`,
		`{"op":"start","endpoint":"10.1.0.5","to":"gre:10.0.0.1"}`,
		`{"op":"start","endpoint":"fe80::1%eth0","to":"10.0.0.1"}`,
		`{"op":["start"],"endpoint":1}`,
		`{"op":"start"`,
		`null`,
		`[]`,
		"{\"op\":\"\u0000\"}",
		``,
	} {
		f.Add([]byte(s))
	}
	codes := []string{CodeBadRequest, CodeNoEndpoint, CodeState, CodeNoDatapath, CodeControllerIO, CodeDifferentTo, CodeQueueFull, CodeNoRoute, CodeStandby, CodeUnavailable, CodeUnknown}
	f.Fuzz(func(t *testing.T, line []byte) {
		if len(line) > MaxRequestBytes {
			return // the server's reader refuses longer lines
		}
		var req Request
		if json.Unmarshal(line, &req) != nil {
			return // the server closes the connection
		}
		ctl := newFake("10.1.0.5", "fd00::5")
		s := &Server{Controller: ctl}
		before := fmt.Sprint(ctl.eps[netip.MustParseAddr("10.1.0.5")], ctl.eps[netip.MustParseAddr("fd00::5")])
		resp := s.Do(req)
		after := fmt.Sprint(ctl.eps[netip.MustParseAddr("10.1.0.5")], ctl.eps[netip.MustParseAddr("fd00::5")])
		switch {
		case resp.OK && (resp.Code != "" || resp.Error != ""):
			t.Fatalf("%q: ok with an error: %+v", line, resp)
		case !resp.OK && (!slices.Contains(codes, resp.Code) || resp.Error == ""):
			t.Fatalf("%q: refused without a known code and an error: %+v", line, resp)
		case !resp.OK && before != after:
			t.Fatalf("%q: refused (%s) but the state changed: %s -> %s", line, resp.Code, before, after)
		case !slices.Contains(Ops, req.Op) && len(ctl.Calls()) != 0:
			t.Fatalf("%q: op %q reached the controller: %v", line, req.Op, ctl.Calls())
		}
		if _, err := json.Marshal(resp); err != nil {
			t.Fatalf("%q: answer does not encode: %v", line, err)
		}
	})
}

// noRoute refuses every start as the daemon's controller refuses a
// destination it has no route to.
type noRoute struct{ *fakeController }

func (noRoute) Start(ep netip.Addr, to Dest) error {
	return fmt.Errorf("start %s: to %s: %w", ep, to, ErrNoRoute)
}

// TestNoRouteCode: a destination the gateway has no route to is its own
// code (the follower and the CLI say what it is), not "see the log".
func TestNoRouteCode(t *testing.T) {
	s := &Server{Controller: noRoute{newFake("10.1.0.5")}}
	resp := s.Do(Request{Op: OpStart, Endpoint: "10.1.0.5", To: "203.0.113.9"})
	if resp.OK || resp.Code != CodeNoRoute {
		t.Fatalf("got %+v, want code %s", resp, CodeNoRoute)
	}
}

// standbyCtl is a standby gateway's controller: it reports the
// replicated state and refuses every step.
type standbyCtl struct{ *fakeController }

func (standbyCtl) Start(ep netip.Addr, to Dest) error {
	return fmt.Errorf("start %s: %w", ep, ErrStandby)
}
func (standbyCtl) Blackout(ep netip.Addr) error { return fmt.Errorf("blackout %s: %w", ep, ErrStandby) }
func (standbyCtl) Switch(ep netip.Addr) error   { return fmt.Errorf("switch %s: %w", ep, ErrStandby) }
func (standbyCtl) Done(ep netip.Addr) error     { return fmt.Errorf("done %s: %w", ep, ErrStandby) }
func (standbyCtl) Abort(ep netip.Addr) error    { return fmt.Errorf("abort %s: %w", ep, ErrStandby) }

// TestClientSkipsTheStandby: the first gateway a follower is given is
// the pair's standby (it came back after a failover, or was listed
// first): the step goes to the owner. It used to come back as a
// controller error, which the follower skips: the move went unheld and
// the endpoint stayed at the source. With no owner to be found the
// answer is the standby code, which the follower retries.
func TestClientSkipsTheStandby(t *testing.T) {
	a := newLab(t, 2*time.Second, time.Minute)
	owner := newFake("10.1.0.5")
	a.srv.Controller = standbyCtl{a.ctl}
	cfg, err := syncer.TLSConfigAllowing(a.dir, "gw", []string{"hv-a"})
	if err != nil {
		t.Fatal(err)
	}
	b := &Server{TLS: cfg, Controller: owner, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	lnB, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go b.Serve(lnB)
	defer func() { lnB.Close(); b.Stop() }()

	ctx := context.Background()
	c := a.client(t, a.dir, "hv-a")
	c.Gateways = append(c.Gateways, lnB.Addr().String())
	defer c.Close()
	for _, op := range []string{OpStart, OpBlackout} {
		if _, err := c.Do(ctx, Request{Op: op, Endpoint: "10.1.0.5", To: "192.0.2.9"}); err != nil {
			t.Fatalf("%s with the standby first: %v", op, err)
		}
	}
	if got, want := owner.Calls(), []string{"start 10.1.0.5 192.0.2.9", "blackout 10.1.0.5"}; !slices.Equal(got, want) {
		t.Fatalf("the owner's calls %v, want %v", got, want)
	}
	// The standby alone.
	only := a.client(t, a.dir, "hv-a")
	defer only.Close()
	_, err = only.Do(ctx, Request{Op: OpSwitch, Endpoint: "10.1.0.5"})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeStandby {
		t.Fatalf("switch at the standby alone: %v, want code %s", err, CodeStandby)
	}
}

// TestOversizedRequest: an allowed client's request line over
// MaxRequestBytes, first or later, closes its connection without
// reaching the controller; the first one is counted refused.
func TestOversizedRequest(t *testing.T) {
	l := newLab(t, 2*time.Second, time.Minute)
	big := append([]byte(`{"op":"start","endpoint":"10.1.0.5","to":"`), bytes.Repeat([]byte("1"), 2*MaxRequestBytes)...)
	big = append(big, "\"}\n"...)
	for _, first := range []bool{true, false} {
		cfg, err := syncer.ClientTLSConfig(l.dir, "hv-a")
		if err != nil {
			t.Fatal(err)
		}
		cfg.ServerName = "127.0.0.1"
		conn, err := tls.Dial("tcp", l.addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		if !first {
			conn.Write([]byte(`{"op":"status","endpoint":"10.1.0.5"}` + "\n"))
			if _, err := r.ReadBytes('\n'); err != nil {
				t.Fatal(err)
			}
		}
		conn.Write(big)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if line, err := r.ReadBytes('\n'); err == nil {
			t.Fatalf("answered an oversized request: %s", line)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the connection stayed open after an oversized request")
		}
		conn.Close()
	}
	waitRefused(t, l.srv, RefuseRequest, 1)
	if calls := l.ctl.Calls(); len(calls) != 0 {
		t.Fatalf("an oversized request reached the controller: %v", calls)
	}
}
