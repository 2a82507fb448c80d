package cli

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/tandem-net/tandem/daemon"
	"github.com/tandem-net/tandem/migrate"
)

// TestEndpointMigrateUsage: the endpoint and migrate commands' usage
// errors exit 2 before anything is asked of a daemon; with no daemon,
// a well-formed command exits 1 and says how to start one.
func TestEndpointMigrateUsage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"endpoint", "frob"}, 2, "tandem endpoint list"},
		{[]string{"endpoint", "set", "10.0.0.5"}, 2, "tandem endpoint list"},
		{[]string{"endpoint", "set", "nope", "10.0.0.9"}, 2, `ENDPOINT "nope"`},
		{[]string{"endpoint", "set", "224.0.0.5", "10.0.0.9"}, 2, "endpoint 224.0.0.5: want a unicast address"},
		{[]string{"endpoint", "set", "0.0.0.0", "10.0.0.9"}, 2, "want a unicast address"},
		{[]string{"endpoint", "del", "10.0.0.5", "x"}, 2, "tandem endpoint list"},
		{[]string{"endpoint", "set", "10.0.0.5", "gre:10.0.0.9"}, 2, `HOST "gre:10.0.0.9": want HOST or ipip:HOST`},
		{[]string{"endpoint", "set", "10.0.0.5", "ipip:224.0.0.1"}, 2, "want a host's unicast address"},
		{[]string{"endpoint", "set", "10.0.0.5", "--encap", "0.0.0.0"}, 2, "want a host's unicast address"},
		{[]string{"endpoint", "set", "10.0.0.5", "--encap", "nope"}, 2, `--encap "nope"`},
		{[]string{"endpoint", "set", "10.0.0.5", "10.0.0.9", "--encap", "10.0.0.9"}, 2, "give the host once"},
		{[]string{"endpoint", "del", "10.0.0.5", "--encap", "10.0.0.9"}, 2, "--encap goes with set only"},
		{[]string{"endpoint", "set", "10.0.0.5", "--encap", "192.0.2.7", "--state-dir", dir}, 1, "tandem up --migrate-iface"},
		{[]string{"migrate", "start", "10.0.0.5", "--to", "ipip:ff02::1"}, 2, "want a host's unicast address"},
		{[]string{"migrate", "start", "10.0.0.5", "--to", "ipip:2001:db8::7", "--state-dir", dir}, 1, "tandem up --migrate-iface"},
		{[]string{"migrate", "start", "10.0.0.5"}, 2, "--to is required"},
		{[]string{"migrate", "start", "10.0.0.5", "--to", "host"}, 2, `--to "host"`},
		{[]string{"migrate", "switch", "10.0.0.5", "--to", "10.0.0.9"}, 2, "--to goes with start only"},
		{[]string{"migrate", "frob", "10.0.0.5"}, 2, "tandem migrate start"},
		{[]string{"migrate", "done"}, 2, "tandem migrate start"},
		{[]string{"endpoint", "list", "--state-dir", dir}, 1, "tandem up --migrate-iface"},
		{[]string{"migrate", "blackout", "10.0.0.5", "--state-dir", dir}, 1, "tandem up --migrate-iface"},
	} {
		_, errs, code := run(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}

// listOnly is a migration controller that lists fixed endpoints.
type listOnly struct {
	migrate.Controller
	eps []migrate.Endpoint
}

func (l listOnly) List() ([]migrate.Endpoint, error) { return l.eps, nil }

// TestMigrateStatusLocal: tandem migrate status ENDPOINT, without
// --gateway, asks this host's daemon (the step errors' hint names it; it
// was a usage error).
func TestMigrateStatusLocal(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", daemon.MigrateSocket(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctl := listOnly{eps: []migrate.Endpoint{
		{Addr: netip.MustParseAddr("10.1.0.5"), Location: migrate.Location{Hop: netip.MustParseAddr("10.2.0.11")},
			Migration: &migrate.Migration{State: migrate.StateBlackout, From: migrate.Location{Hop: netip.MustParseAddr("10.2.0.11")},
				To: migrate.Location{Hop: netip.MustParseAddr("192.0.2.7"), Encap: migrate.EncapIPIP}, Held: 42, Flushing: true}},
		{Addr: netip.MustParseAddr("10.1.0.6"), Location: migrate.Location{Hop: netip.MustParseAddr("10.2.0.11")}},
	}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go migrate.ServeConn(c, ctl, nil)
		}
	}()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"migrate", "status", "10.1.0.5"}, 0, "10.1.0.5: blackout from 10.2.0.11 to ipip:192.0.2.7, 42 held"},
		{[]string{"migrate", "status", "::ffff:10.1.0.6"}, 0, "10.1.0.6: none\n"},
		{[]string{"migrate", "status", "10.1.0.7"}, 1, "tandem endpoint set"},
		{[]string{"migrate", "status", "10.1.0.5", "--to", "10.0.0.9"}, 2, "--to goes with start only"},
	} {
		out, errs, code := run(append(tc.args, "--state-dir", dir)...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%v: exit %d, out %q, err %q; want exit %d and %q", tc.args, code, out, errs, tc.code, tc.want)
		}
	}
}
